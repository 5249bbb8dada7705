"""eqscale operators: one sub-package per op, each with reference, cpu and triton backends.

Example:
    >>> import torch, eqscale
    >>> eqscale.ops.spherical_harmonics(torch.randn(10, 3), lmax=3).shape
    torch.Size([10, 16])
"""

from eqscale.ops.radius_graph import edge_quadruplets, edge_triplets, edge_vectors, radius_graph
from eqscale.ops.so2_conv import edge_rotate_in, edge_rotate_out_scatter, so2_conv, wigner_d
from eqscale.ops.spherical_harmonics import spherical_harmonics
from eqscale.ops.tp_conv import tp_conv

__all__ = [
    "edge_quadruplets",
    "edge_rotate_in",
    "edge_rotate_out_scatter",
    "edge_triplets",
    "edge_vectors",
    "radius_graph",
    "so2_conv",
    "spherical_harmonics",
    "tp_conv",
    "wigner_d",
]
