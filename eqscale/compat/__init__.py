"""Drop-in replacements for the neighbour-list functions of other libraries.

- :func:`radius_graph`: ``torch_cluster.radius_graph`` (signature and output convention).
- :func:`neighbour_list` (alias :func:`neighbor_list`): ``matscipy.neighbours.neighbour_list`` /
  ``ase.neighborlist.neighbor_list`` for an ``ase.Atoms`` and a scalar cutoff.

Both run :func:`eqscale.ops.radius_graph` underneath, so they use the current backend of
:mod:`eqscale.backends`. Neither imports torch_cluster, ASE or matscipy.

Example:
    >>> import torch, eqscale
    >>> x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    >>> eqscale.compat.radius_graph(x, r=1.5)
    tensor([[1, 0],
            [0, 1]])
"""

from eqscale.compat._ase import neighbor_list, neighbour_list
from eqscale.compat._torch_cluster import radius_graph

__all__ = ["neighbor_list", "neighbour_list", "radius_graph"]
