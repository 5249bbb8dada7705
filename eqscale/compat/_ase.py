"""``matscipy``/``ASE`` ``neighbour_list`` for an ``ase.Atoms``, on top of :func:`eqscale.ops.radius_graph`."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from eqscale.ops.radius_graph import radius_graph as _radius_graph

_QUANTITIES = "ijdDS"


def neighbour_list(
    quantities: str, atoms: Any, cutoff: float, self_interaction: bool = False
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Drop-in for ``matscipy.neighbours.neighbour_list`` / ``ase.neighborlist.neighbor_list``.

    Returns the same pairs as ASE's ``primitive_neighbor_list`` (strict cutoff ``d < cutoff``),
    sorted by ``i``, then ``j``. Each pair appears in both directions. For
    ``i, j, S``: ``D = positions[j] - positions[i] + S @ cell`` and ``d = |D|``.

    Only a scalar cutoff is supported (not per-atom or per-element cutoffs). ``atoms`` is used
    through ``atoms.positions``, ``atoms.cell`` and ``atoms.pbc`` only; ASE is not imported.

    Args:
        quantities: any string of ``"i"``, ``"j"``, ``"d"``, ``"D"``, ``"S"``.
        atoms: an ``ase.Atoms`` (or anything with ``positions``, ``cell``, ``pbc``).
        cutoff: positive radius in Å.
        self_interaction: include each atom's pair with itself at distance 0.

    Returns:
        One numpy array per letter of ``quantities`` (a tuple, or the array alone for one
        letter): ``i``, ``j`` int64 ``(E,)``; ``d`` float64 ``(E,)``; ``D`` float64 ``(E, 3)``;
        ``S`` int64 ``(E, 3)``.

    Example:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> from eqscale.compat import neighbour_list
        >>> atoms = SimpleNamespace(positions=np.array([[0.0, 0, 0], [1.0, 0, 0]]),
        ...                         cell=np.eye(3) * 10, pbc=np.array([True, True, True]))
        >>> i, j, d = neighbour_list("ijd", atoms, 1.5)
        >>> i.tolist(), j.tolist(), d.tolist()
        ([0, 1], [1, 0], [1.0, 1.0])
    """
    if not isinstance(quantities, str) or not quantities or set(quantities) - set(_QUANTITIES):
        raise ValueError(f"quantities must be a non-empty string of letters from {_QUANTITIES!r}, got {quantities!r}")
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise TypeError(
            "cutoff must be a single number; per-atom or per-element cutoffs are not supported, "
            f"got {type(cutoff).__name__}"
        )
    for name in ("positions", "cell", "pbc"):
        if not hasattr(atoms, name):
            raise TypeError(f"atoms must have a '{name}' attribute (an ase.Atoms), got {type(atoms).__name__}")
    positions = torch.as_tensor(np.asarray(atoms.positions, dtype=np.float64))
    cell = torch.as_tensor(np.asarray(atoms.cell, dtype=np.float64))
    pbc = torch.as_tensor(np.asarray(atoms.pbc, dtype=bool).reshape(-1)).expand(3)
    edge_index, shifts = _radius_graph(
        positions, float(cutoff), cell=cell, pbc=pbc, self_interaction=self_interaction
    )
    # The list is symmetric, so ASE's (i, j, S) with i the centre are our (receiver, sender, -shift),
    # already sorted by receiver.
    i, j, shift = edge_index[1], edge_index[0], -shifts
    results: dict[str, torch.Tensor] = {"i": i, "j": j, "S": shift}
    if "D" in quantities or "d" in quantities:
        vectors = positions[j] - positions[i] + shift.to(torch.float64) @ cell
        results["D"] = vectors
        results["d"] = torch.linalg.vector_norm(vectors, dim=1)
    arrays = tuple(results[letter].numpy() for letter in quantities)
    return arrays[0] if len(arrays) == 1 else arrays


neighbor_list = neighbour_list
