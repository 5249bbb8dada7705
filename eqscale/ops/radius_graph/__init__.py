"""Radius graph (neighbour list) with periodic boundaries, batched systems and a nearest-k cap.

Conventions (the same for every backend; :mod:`.reference` is the spec):

- **Direction.** PyG's ``source_to_target``, as ``torch_cluster.radius_graph``: ``edge_index[0]``
  is the *sender* (the neighbour ``j``), ``edge_index[1]`` the *receiver* (the centre ``i``,
  where messages are aggregated). The edge vector points from the sender to the receiver::

      vec = pos[edge_index[1]] - pos[edge_index[0]] + shifts @ cell[batch[edge_index[0]]]

  ``shifts`` are integer (int64) multiples of the cell vectors, zero on non-periodic axes. The
  list is full (both directions of every pair) unless ``half=True``. In ASE's ``i, j, S`` terms
  (``D = pos[j] - pos[i] + S @ cell``), ``(edge_index[0], edge_index[1], shifts)`` is ``(i, j, S)``.
- **Cutoff.** Strict, as ASE, matscipy and vesin: an edge exists when ``d < cutoff``, evaluated as
  ``d2 < cutoff**2`` in float64 by the formula of :func:`.reference.squared_distances`.
- **Self pairs.** ``(i, i, S=0)`` is excluded unless ``self_interaction=True`` (then it is always
  present, whatever the cutoff). Pairs of an atom with its own periodic images (``S != 0``) are
  ordinary edges.
- **Order.** Sorted by receiver, then sender, then shift (lexicographic, signed): the receivers'
  edges are contiguous and the output is identical on every backend.
- **half=True** keeps, of each pair, the direction with ``sender < receiver``, or for an atom and
  its own image the one whose shift is lexicographically positive (first non-zero component > 0).
- **max_num_neighbors=k** keeps, per receiver, the ``k`` nearest edges; equal distances (equal
  float64 ``d2``) go to the smaller sender index, then the smaller shift. When edges are dropped a
  :class:`TruncatedNeighborsWarning` is issued, unless ``return_num_neighbors=True`` asks for the
  counts before the cut, so the caller can check them itself (``num_neighbors > k``).
- **Periodic cells** may be triclinic, of any size (a cutoff several times the cell gives several
  images of each atom, an atom's own images included), periodic on some axes only, and per system.
  Positions need not be wrapped into the cell. Non-periodic cell vectors are ignored (zeros are
  fine). Without ``cell`` nothing is periodic.

The ``cpu`` backend is a cell list (``csrc/cpu/radius_graph.cpp``) whose cost is linear in the
number of atoms and edges, whatever the extent of the system. The ``triton`` backend
(:mod:`.triton`, ``kernels/radius_graph.py``) searches a brute force per small system and a cell
list per large one, all in one launch, on CUDA tensors (or CPU ones under ``TRITON_INTERPRET=1``).
The ``reference`` backend is a brute force over all pairs and images, quadratic in the atoms of
each system, and runs on any device.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch

from eqscale import backends
from eqscale.ops.radius_graph import cpu as _cpu
from eqscale.ops.radius_graph import reference as _reference
from eqscale.ops.radius_graph._triplets import edge_quadruplets, edge_triplets

__all__ = [
    "TruncatedNeighborsWarning",
    "edge_quadruplets",
    "edge_triplets",
    "edge_vectors",
    "radius_graph",
]

_FUSED_DTYPES = (torch.float32, torch.float64)


class TruncatedNeighborsWarning(UserWarning):
    """``max_num_neighbors`` dropped edges of at least one receiver."""


def radius_graph(
    pos: torch.Tensor,
    cutoff: float,
    *,
    batch: torch.Tensor | None = None,
    cell: torch.Tensor | None = None,
    pbc: bool | Sequence[bool] | torch.Tensor | None = None,
    self_interaction: bool = False,
    max_num_neighbors: int | None = None,
    half: bool = False,
    return_num_neighbors: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs of atoms closer than ``cutoff``, over many systems at once, periodic or not.

    See the module docstring for the conventions (direction, strict cutoff, order, ``half``, the
    ``max_num_neighbors`` tie rule). Use :func:`edge_vectors` to get differentiable vectors and
    distances from the result.

    Args:
        pos: ``(N, 3)`` float positions; need not be wrapped into the cell.
        cutoff: positive finite radius; an edge needs ``distance < cutoff``.
        batch: ``(N,)`` integer system index of each atom, sorted (non-decreasing); ``None``: one
            system. Systems may be empty.
        cell: ``(3, 3)`` (shared by all systems) or ``(B, 3, 3)`` cell vectors as rows.
        pbc: periodicity per axis: a bool, ``(3,)`` or ``(B, 3)``. ``None``: periodic on every
            axis when ``cell`` is given, on none otherwise.
        self_interaction: include each atom's ``(i, i, S=0)`` edge.
        max_num_neighbors: keep at most this many (nearest) edges per receiver; ``None``: all.
        half: keep one direction of each pair; cannot be combined with ``max_num_neighbors``.
        return_num_neighbors: also return each receiver's edge count before the
            ``max_num_neighbors`` cut (and do not warn when the cut drops edges).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``; ``None`` uses the
            current choice of :mod:`eqscale.backends`.

    Returns:
        ``(edge_index, shifts)``: ``(2, E)`` int64 ``(sender, receiver)`` and ``(E, 3)`` int64
        cell shifts; with ``return_num_neighbors``, also ``(N,)`` int64 counts.

    Raises:
        TypeError: an argument has the wrong type or dtype.
        ValueError: bad shapes or values (non-finite positions, non-positive cutoff, unsorted
            batch, singular periodic cell, ...), naming the argument.

    Example:
        >>> import torch, eqscale
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
        >>> edge_index, shifts = eqscale.ops.radius_graph(pos, 2.0)
        >>> edge_index
        tensor([[1, 0],
                [0, 1]])
        >>> cell = 3.0 * torch.eye(3)  # periodic: each atom also sees the other's images
        >>> edge_index, shifts = eqscale.ops.radius_graph(pos, 2.0, cell=cell)
        >>> edge_index.shape[1], shifts[:2].tolist()
        (4, [[0, 0, 0], [1, 0, 0]])
    """
    if not isinstance(pos, torch.Tensor):
        raise TypeError(f"pos must be a torch.Tensor, got {type(pos).__name__}")
    requested = backend if backend is not None else backends.get_backend()
    chosen = backends.resolve(pos.device, backend)
    if chosen == "cpu" and not _cpu.load():
        if requested != "auto":
            raise ValueError("backend 'cpu' cannot run radius_graph: eqscale._C was built without it; reinstall")
        chosen = "reference"
    # The C++ backend checks positions and batch itself, in its first pass over them: the same
    # checks as torch ops here would start torch's thread pool, whose spinning workers then
    # compete with the search threads.
    pos, cutoff, batch, cell, pbc = _normalise(pos, cutoff, batch, cell, pbc, per_atom_checks=chosen != "cpu")
    flags = (("self_interaction", self_interaction), ("half", half), ("return_num_neighbors", return_num_neighbors))
    for name, flag in flags:
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if max_num_neighbors is not None:
        if isinstance(max_num_neighbors, bool) or not isinstance(max_num_neighbors, numbers.Integral):
            raise TypeError(f"max_num_neighbors must be an int or None, got {type(max_num_neighbors).__name__}")
        if max_num_neighbors < 0:
            raise ValueError(f"max_num_neighbors must be >= 0, got {max_num_neighbors}")
        if half:
            raise ValueError(
                "half=True cannot be combined with max_num_neighbors: a per-receiver cut breaks pair symmetry"
            )
        max_num_neighbors = int(max_num_neighbors)

    if chosen != "reference" and pos.dtype not in _FUSED_DTYPES:
        raise TypeError(
            f"pos must be float32 or float64 for the {chosen!r} backend, got {pos.dtype}; "
            "use backend='reference' for other dtypes"
        )
    edge_index, shifts, num_neighbors = _BACKENDS[chosen](
        pos, cutoff, batch, cell, pbc, self_interaction, max_num_neighbors, half
    )

    if return_num_neighbors:
        return edge_index, shifts, num_neighbors
    if max_num_neighbors is not None and edge_index.shape[1] < int(num_neighbors.sum()):
        cut = num_neighbors > max_num_neighbors
        warnings.warn(
            f"radius_graph: max_num_neighbors={max_num_neighbors} dropped "
            f"{int((num_neighbors[cut] - max_num_neighbors).sum())} edges at {int(cut.sum())} receivers "
            f"(up to {int(num_neighbors.max())} neighbours within the cutoff); pass "
            "return_num_neighbors=True to get the counts",
            TruncatedNeighborsWarning,
            stacklevel=2,
        )
    return edge_index, shifts


def edge_vectors(
    pos: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor | None = None,
    cell: torch.Tensor | None = None,
    batch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge vectors and lengths, differentiable with respect to ``pos`` and ``cell``.

    ``vec = pos[edge_index[1]] - pos[edge_index[0]] + shifts @ cell[batch[edge_index[0]]]``. For
    the stress, apply a strain ``eps`` to both positions and cell (``pos @ (I + eps)``,
    ``cell @ (I + eps)``) and differentiate the energy with respect to ``eps``.

    Args:
        pos: ``(N, 3)`` float.
        edge_index: ``(2, E)`` integer ``(sender, receiver)``.
        shifts: ``(E, 3)`` integer or float cell shifts; ``None`` for a non-periodic graph.
        cell: ``(3, 3)`` or ``(B, 3, 3)``; needed when ``shifts`` has non-zero entries.
        batch: ``(N,)`` system index; needed when ``cell`` holds more than one cell.

    Returns:
        ``(vectors, distances)``: ``(E, 3)`` and ``(E,)`` with the dtype of ``pos``. The gradient
        of a zero distance (a self edge) is zero.

    Example:
        >>> import torch, eqscale
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
        >>> edge_index, shifts = eqscale.ops.radius_graph(pos.detach(), 1.5)
        >>> vectors, distances = eqscale.ops.edge_vectors(pos, edge_index, shifts)
        >>> distances
        tensor([1., 1.], grad_fn=<LinalgVectorNormBackward0>)
    """
    if not isinstance(pos, torch.Tensor) or not pos.is_floating_point():
        raise TypeError(f"pos must be a floating-point torch.Tensor, got {_describe(pos)}")
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must have shape (N, 3), got {tuple(pos.shape)}")
    if not isinstance(edge_index, torch.Tensor) or edge_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"edge_index must be an int32 or int64 torch.Tensor, got {_describe(edge_index)}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    src, dst = edge_index[0].long(), edge_index[1].long()
    vectors = pos[dst] - pos[src]
    if shifts is not None:
        if not isinstance(shifts, torch.Tensor):
            raise TypeError(f"shifts must be a torch.Tensor or None, got {type(shifts).__name__}")
        if shifts.shape != (edge_index.shape[1], 3):
            raise ValueError(f"shifts must have shape (E, 3) = ({edge_index.shape[1]}, 3), got {tuple(shifts.shape)}")
        if cell is None:
            # Graphs built without a cell have zero shifts; anything else needs the cell.
            if bool(shifts.any()):
                raise ValueError("cell is required when shifts are non-zero")
            return vectors, torch.linalg.vector_norm(vectors, dim=1)
        if not isinstance(cell, torch.Tensor) or not cell.is_floating_point():
            raise TypeError(f"cell must be a floating-point torch.Tensor, got {_describe(cell)}")
        cell = cell.to(pos.dtype)
        s = shifts.to(pos.dtype)
        if cell.shape == (3, 3):
            vectors = vectors + s @ cell
        elif cell.dim() == 3 and cell.shape[1:] == (3, 3):
            if cell.shape[0] == 1:
                vectors = vectors + s @ cell[0]
            else:
                if batch is None:
                    raise ValueError(f"batch is required when cell holds {cell.shape[0]} cells")
                if not isinstance(batch, torch.Tensor) or batch.shape != (pos.shape[0],):
                    raise ValueError(f"batch must be a tensor of shape (N,) = ({pos.shape[0]},)")
                vectors = vectors + torch.bmm(s[:, None, :], cell[batch[src].long()]).squeeze(1)
        else:
            raise ValueError(f"cell must have shape (3, 3) or (B, 3, 3), got {tuple(cell.shape)}")
    return vectors, torch.linalg.vector_norm(vectors, dim=1)


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


def _cpu_radius_graph(pos, cutoff, batch, cell, pbc, self_interaction, max_num_neighbors, half):
    return torch.ops.eqscale.radius_graph.default(
        pos.contiguous(), batch, cell, pbc, cutoff, self_interaction,
        -1 if max_num_neighbors is None else max_num_neighbors, half,
    )


def _triton_radius_graph(pos, cutoff, batch, cell, pbc, self_interaction, max_num_neighbors, half):
    # eqscale/ops/radius_graph/triton.py (registered below when Triton is installed).
    return torch.ops.eqscale.radius_graph_triton.default(
        pos.contiguous(), batch, cell, pbc, cutoff, self_interaction,
        -1 if max_num_neighbors is None else max_num_neighbors, half,
    )


_BACKENDS = {"reference": _reference.radius_graph, "cpu": _cpu_radius_graph, "triton": _triton_radius_graph}


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor"
    return type(value).__name__


def _normalise(pos, cutoff, batch, cell, pbc, *, per_atom_checks: bool = True):
    """Validated ``(pos, cutoff, batch (N,) int64, cell (B, 3, 3) float64, pbc (B, 3) bool)``.

    Without ``per_atom_checks``, finiteness of ``pos`` and order of ``batch`` are left to the
    backend (the C++ one raises the same ValueErrors).
    """
    if not isinstance(pos, torch.Tensor):
        raise TypeError(f"pos must be a torch.Tensor, got {type(pos).__name__}")
    if not pos.is_floating_point():
        raise TypeError(f"pos must be a floating-point tensor, got {pos.dtype}")
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must have shape (N, 3), got {tuple(pos.shape)}")
    pos = pos.detach()
    if per_atom_checks and not bool(torch.isfinite(pos).all()):
        raise ValueError("pos contains NaN or infinite values")
    device, num_nodes = pos.device, pos.shape[0]

    if isinstance(cutoff, torch.Tensor):
        if cutoff.numel() != 1:
            raise ValueError(f"cutoff must be a number, got a tensor of shape {tuple(cutoff.shape)}")
        cutoff = cutoff.item()
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise TypeError(f"cutoff must be a real number, got {type(cutoff).__name__}")
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be positive and finite, got {cutoff}")

    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.int64, device=device)
        num_systems = 1
    else:
        integer = isinstance(batch, torch.Tensor) and not (
            batch.is_floating_point() or batch.is_complex() or batch.dtype == torch.bool
        )
        if not integer:
            raise TypeError(f"batch must be an integer torch.Tensor, got {_describe(batch)}")
        if batch.shape != (num_nodes,):
            raise ValueError(f"batch must have shape (N,) = ({num_nodes},), got {tuple(batch.shape)}")
        if batch.device != device:
            raise ValueError(f"batch is on {batch.device} but pos is on {device}")
        batch = batch.to(torch.int64).contiguous()
        if num_nodes and int(batch[0]) < 0:
            raise ValueError("batch must be non-negative")
        if per_atom_checks and num_nodes > 1 and not bool((batch[1:] >= batch[:-1]).all()):
            raise ValueError("batch must be sorted (non-decreasing): atoms of one system must be contiguous")
        num_systems = int(batch[-1]) + 1 if num_nodes else 1

    if cell is not None:
        cell = torch.as_tensor(cell)
        if not cell.is_floating_point():
            raise TypeError(f"cell must be a floating-point tensor, got {cell.dtype}")
        cell = cell.detach().to(device=device, dtype=torch.float64)
        if cell.shape == (3, 3):
            cell = cell.expand(num_systems, 3, 3)
        elif cell.dim() == 3 and cell.shape[1:] == (3, 3):
            if cell.shape[0] < num_systems:
                raise ValueError(f"cell holds {cell.shape[0]} cells but batch refers to {num_systems} systems")
            num_systems = cell.shape[0]
        else:
            raise ValueError(f"cell must have shape (3, 3) or (B, 3, 3), got {tuple(cell.shape)}")
        if not bool(torch.isfinite(cell).all()):
            raise ValueError("cell contains NaN or infinite values")
    pbc = _normalise_pbc(pbc, cell is not None, num_systems, device)
    if cell is None:
        if bool(pbc.any()):
            raise ValueError("pbc is set on some axis but no cell was given")
        cell = torch.zeros(num_systems, 3, 3, dtype=torch.float64, device=device)
    # A cell singular along its periodic axes is rejected by each backend (ValueError), where
    # the completed cell is at hand anyway: see reference.check_not_singular.
    return pos, cutoff, batch, cell.contiguous(), pbc.contiguous()


def _normalise_pbc(pbc, has_cell: bool, num_systems: int, device: torch.device) -> torch.Tensor:
    if pbc is None:
        pbc = has_cell
    if isinstance(pbc, bool):
        return torch.full((num_systems, 3), pbc, dtype=torch.bool, device=device)
    pbc = torch.as_tensor(pbc, device=device)
    if pbc.dtype != torch.bool:
        if pbc.is_floating_point():
            raise TypeError(f"pbc must be bool, got {pbc.dtype}")
        pbc = pbc != 0
    if pbc.shape == (3,):
        return pbc.expand(num_systems, 3)
    if pbc.shape != (num_systems, 3):
        raise ValueError(
            f"pbc must be a bool, or have shape (3,) or (B, 3) = ({num_systems}, 3), got {tuple(pbc.shape)}"
        )
    return pbc


def _radius_graph_fake(pos, batch, cell, pbc, cutoff, self_interaction, max_num_neighbors, half):
    num_edges = torch.library.get_ctx().new_dynamic_size()
    return (
        pos.new_empty((2, num_edges), dtype=torch.int64),
        pos.new_empty((num_edges, 3), dtype=torch.int64),
        pos.new_empty((pos.shape[0],), dtype=torch.int64),
    )


if _cpu.load():
    torch.library.register_fake(f"eqscale::{_cpu.OP_NAME}")(_radius_graph_fake)

if backends.triton_available():
    from eqscale.ops.radius_graph import triton as _triton  # noqa: E402 - registers the operator

    torch.library.register_fake(f"eqscale::{_triton.OP_NAME}")(_radius_graph_fake)
