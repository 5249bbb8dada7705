"""Binds the Triton radius-graph search (``kernels/radius_graph.py``) as an operator.

``torch.ops.eqscale.radius_graph_triton`` has the schema of the C++ ``eqscale::radius_graph``
(:mod:`eqscale.ops.radius_graph.cpu`)::

    radius_graph_triton(Tensor pos, Tensor batch, Tensor cell, Tensor pbc, float cutoff,
                        bool self_interaction, int max_num_neighbors, bool half)
        -> (Tensor edge_index, Tensor shifts, Tensor num_neighbors)

and returns exactly what :func:`eqscale.ops.radius_graph.reference.radius_graph` returns.

How it stays bitwise equal to the reference while doing the pair search on the GPU:

1. Host (torch ops, on the inputs' device): complete and check the cells with the reference's
   helpers, fractional coordinates, wrap periodic axes into the cell (keeping the integer wrap,
   so unwrapped input gives exact shifts), bin every system along its face normals (a single
   bin for systems of at most ``SMALL_SYSTEM_ATOMS`` atoms: a brute force over their atoms and
   images), sort atoms by (system, bin), list each bin's candidate (sender, image) pairs, and
   bound the float32 and wrapping errors of the search (``slack``).
2. Kernel, one launch for all systems: every (receiver, sender, image) of those lists whose
   float32 distance on wrapped positions is at most ``cutoff + slack`` is a candidate; a
   counting pass, an exclusive scan and a writing pass give them with no atomics (see
   ``kernels/radius_graph.py``).
3. Host: :func:`~eqscale.ops.radius_graph.reference.select_edges` (the exact float64 cutoff
   test, the self pair and ``half``) and
   :func:`~eqscale.ops.radius_graph.reference.cut_and_sort` (``max_num_neighbors`` and the
   order), the reference's own functions. Every edge of the spec is a candidate, so the result
   is the reference's.

Why the search misses no edge: an edge's true distance is below the cutoff, so along each face
normal its fractional separation is at most ``cutoff / face``; bins and the bins searched
(``reach``) are derived from that bound plus the rounding error of the fractional coordinates.
The float32 test on a visited edge errs by at most ``slack`` (rounding of the wrapped positions,
of ``image @ cell`` and of the arithmetic, bounded from the largest magnitudes involved), so it
passes. Candidates merely near the cutoff are removed by the exact test.

Work and memory are linear in the atoms and candidates: a bin's list holds the atoms of the
bins within reach (about 27 bins of about a cutoff cubed each), a small system's list its atoms
times its images.

The operator is an opaque ``custom_op`` (its fake is registered in
:mod:`eqscale.ops.radius_graph`): the output size depends on the data, and the launcher reads a
few scalars back (error bounds, sizes of the bin, task and candidate lists), which
``torch.compile`` cannot trace through. It has integer outputs only, so there is no autograd.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from eqscale import backends
from eqscale._kernels import import_kernels
from eqscale.ops.radius_graph import reference

OP_NAME = "radius_graph_triton"

_DTYPES = (torch.float32, torch.float64)
_EPS64 = torch.finfo(torch.float64).eps
_EPS32 = torch.finfo(torch.float32).eps
# The C++ backend's limit: wraps and bin arithmetic stay exact far below 2^52.
_MAX_FRACTIONAL = 1e15
_CHUNK = 1 << 22


@dataclasses.dataclass
class _Search:
    """Everything the kernel reads, on the inputs' device."""

    tasks: torch.Tensor  # (T, NUM_TASK_FIELDS) int64
    cell32: torch.Tensor  # (B, 9) float32 periodic rows (the others are never multiplied)
    pos32: torch.Tensor  # (3, N) float32 wrapped positions minus a per-system origin, sorted
    wrap: torch.Tensor  # (3, N) int64 wraps, sorted: pos = wrapped + wrap @ cell
    atom: torch.Tensor  # (N,) int64 atom index of each sorted position
    candidates: torch.Tensor  # (C,) int64 sorted sender index of each candidate
    images: torch.Tensor  # (3, C) int32 its periodic image
    loose2: float  # float32 threshold on the squared wrapped distance


@dataclasses.dataclass
class _Bins:
    """Binning of every system along its face normals (all tensors on the inputs' device)."""

    bins: torch.Tensor  # (B, 3) int64 bins per axis
    reach: torch.Tensor  # (B, 3) int64 bins searched on each side (images, for a single bin)
    home: torch.Tensor  # (N, 3) int64 bin of each atom, per axis
    first_bin: torch.Tensor  # (B,) int64
    num_bins: int


def _check(pos: torch.Tensor, batch: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> None:
    if pos.dtype not in _DTYPES:
        raise TypeError(f"pos must be float32 or float64, got {pos.dtype}")
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must have shape (N, 3), got {tuple(pos.shape)}")
    device = pos.device
    if not (device.type == "cuda" or (device.type == "cpu" and backends.triton_interpreted())):
        raise ValueError(
            f"pos is on {device}: the Triton kernels need CUDA tensors, or CPU tensors with "
            "TRITON_INTERPRET=1 set before Triton is imported"
        )
    num_systems = cell.shape[0]
    for name, tensor, dtype, shape in (
        ("batch", batch, torch.int64, (pos.shape[0],)),
        ("cell", cell, torch.float64, (num_systems, 3, 3)),
        ("pbc", pbc, torch.bool, (num_systems, 3)),
    ):
        if tensor.dtype != dtype or tuple(tensor.shape) != shape or tensor.device != device:
            raise ValueError(
                f"{name} must be a {dtype} tensor of shape {shape} on {device}, "
                f"got {tensor.dtype} {tuple(tensor.shape)} on {tensor.device}"
            )


def _per_system(values: torch.Tensor, batch: torch.Tensor, num_systems: int, reduce: str) -> torch.Tensor:
    """``(B, 3)`` min or max (``reduce``: ``"amin"``/``"amax"``) of ``(N, 3)`` values per system; 0 if empty."""
    out = values.new_zeros(num_systems, 3)
    return out.scatter_reduce(0, batch[:, None].expand(-1, 3), values, reduce, include_self=False)


def _ranges(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``counts`` (K,): the owner ``k`` of each of ``sum(counts)`` items and its rank in ``k``."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts, output_size=total)
    start = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(total, device=counts.device) - start[owner]


def _bin(wrapped_frac: torch.Tensor, batch: torch.Tensor, pbc: torch.Tensor, r: torch.Tensor,
         counts: torch.Tensor, small_system: int) -> _Bins:
    """Bins of each system: at least ``r`` (fractional) wide, at most about twice its atoms.

    Periodic axes are binned over the cell, the others over the atoms' extent. Systems of at
    most ``small_system`` atoms get a single bin (brute force).
    """
    num_systems = pbc.shape[0]
    lo = torch.where(pbc, 0.0, _per_system(wrapped_frac, batch, num_systems, "amin"))
    hi = torch.where(pbc, 1.0, _per_system(wrapped_frac, batch, num_systems, "amax"))
    extent = hi - lo
    # The C++ backend's cap: memory stays linear in the atoms for vacuum boxes and tiny cutoffs.
    cap = torch.clamp(2.0 * counts, min=8.0)
    bins = torch.minimum(torch.clamp(torch.floor(extent / r), min=1.0), cap[:, None])
    total = bins.prod(dim=1)
    factor = torch.where(total > cap, torch.pow(cap / total, 1.0 / 3.0), 1.0)
    bins = torch.clamp(torch.floor(bins * factor[:, None]), min=1.0)
    small = (counts <= small_system) | (bins.prod(dim=1) == 1)
    bins = torch.where(small[:, None], 1.0, bins)
    scale = torch.where(bins > 1, bins / torch.where(extent > 0, extent, 1.0), 0.0)
    # Two atoms within r along an axis are at most floor(r * scale) + 1 bins apart; on a
    # periodic axis with a single bin, that is the number of images on each side.
    reach = torch.floor(r * torch.where(pbc, bins, scale)) + 1
    reach = torch.where(pbc, reach, torch.minimum(reach, bins - 1)).to(torch.int64)
    bins = bins.to(torch.int64)
    home = torch.floor((wrapped_frac - lo[batch]) * scale[batch]).to(torch.int64)
    home = torch.minimum(torch.clamp(home, min=0), bins[batch] - 1)
    per_system = bins.prod(dim=1)
    return _Bins(bins=bins, reach=reach, home=home, first_bin=torch.cumsum(per_system, 0) - per_system,
                 num_bins=int(per_system.sum()))


def _unravel(flat: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """``(K, 3)`` row-major indices of ``flat`` (K,) in grids of ``shape`` (K, 3)."""
    return torch.stack([flat // (shape[:, 1] * shape[:, 2]), (flat // shape[:, 2]) % shape[:, 1], flat % shape[:, 2]],
                       dim=1)


def _candidate_lists(binning: _Bins, pbc: torch.Tensor, bin_start: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each bin's list of (sender, image): the senders of the bins within reach, per image.

    A bin offset ``j`` outside the grid on a periodic axis is bin ``j mod bins`` seen through
    image ``floor(j / bins)``; distinct offsets are distinct (bin, image) pairs, so no candidate
    appears twice. Empty bins get empty lists.

    Returns:
        ``(list_start (G + 1,), senders (C,) int64 sorted indices, images (3, C) int32)``.
    """
    device = bin_start.device
    bins, reach, first_bin = binning.bins, binning.reach, binning.first_bin
    per_system = bins.prod(dim=1)
    system = torch.repeat_interleave(torch.arange(bins.shape[0], device=device), per_system,
                                     output_size=binning.num_bins)
    local = torch.arange(binning.num_bins, device=device) - first_bin[system]
    bins_g = bins[system]
    home = _unravel(local, bins_g)
    side = 2 * reach[system] + 1
    occupied = bin_start[1:] > bin_start[:-1]
    # One entry per (receiving bin, offset): the neighbouring bin, its image and its atoms.
    owner, q = _ranges(torch.where(occupied, side.prod(dim=1), 0))
    j = home[owner] + _unravel(q, side[owner]) - reach[system[owner]]
    bins_o = bins_g[owner]
    image = torch.div(j, bins_o, rounding_mode="floor")
    inside = (pbc[system[owner]] | ((j >= 0) & (j < bins_o))).all(dim=1)
    k = j - image * bins_o  # the neighbouring bin, per axis
    neighbour = first_bin[system[owner]] + (k[:, 0] * bins_o[:, 1] + k[:, 1]) * bins_o[:, 2] + k[:, 2]
    neighbour = torch.where(inside, neighbour, 0)
    size = torch.where(inside, bin_start[neighbour + 1] - bin_start[neighbour], 0)
    # Expand every (bin, offset) entry into its senders.
    entry, rank = _ranges(size)
    senders = bin_start[neighbour[entry]] + rank
    images = image[entry].t().to(torch.int32).contiguous()
    list_start = torch.zeros(binning.num_bins + 1, dtype=torch.int64, device=device)
    list_start[1:] = torch.cumsum(torch.zeros(binning.num_bins, dtype=torch.int64, device=device)
                                  .index_add_(0, owner, size), 0)
    return list_start, senders, images


def _tasks(list_start: torch.Tensor, bin_start: torch.Tensor, bin_system: torch.Tensor, block: int) -> torch.Tensor:
    """One row per block of ``block`` receivers of a bin: ``kernels.NUM_TASK_FIELDS`` columns."""
    receivers = bin_start[1:] - bin_start[:-1]
    owner, rank = _ranges((receivers + block - 1) // block)
    first = bin_start[owner] + rank * block
    size = torch.clamp(bin_start[owner + 1] - first, max=block)
    return torch.stack([bin_system[owner], list_start[owner], list_start[owner + 1], first, size], dim=1).contiguous()


@dataclasses.dataclass
class _Wrapped:
    """Positions wrapped into their cells, with the bound on separations that bins must cover."""

    frac: torch.Tensor  # (N, 3) float64 fractional coordinates, wrapped on periodic axes
    wrap: torch.Tensor  # (N, 3) int64 integer wraps: pos = wrapped + wrap @ cell
    cartesian: torch.Tensor  # (N, 3) float64 wrapped positions
    reach: torch.Tensor  # (B, 3) float64 largest fractional separation of an edge per axis
    max_pos: float


def _wrap(pos: torch.Tensor, batch: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float,
          periodic_cell: torch.Tensor) -> _Wrapped:
    """Wraps periodic axes into the cell, keeping the integer wrap (exact shifts for unwrapped input)."""
    completed = reference.complete_cell(cell, pbc)
    reference.check_not_singular(cell, pbc, completed)
    inverse = torch.linalg.inv(completed)
    pos64 = pos.to(torch.float64)
    frac = (pos64[:, None, :] @ inverse[batch]).squeeze(1)  # as the reference computes it
    wrap = torch.where(pbc[batch], torch.floor(frac), 0.0)
    cartesian = pos64 - (wrap[:, None, :] @ periodic_cell[batch]).squeeze(1)

    # Rounding error of the wrapped fractional coordinates: of pos @ inverse, of the inverse
    # itself (relative error up to the condition number times epsilon) and of the wrap.
    condition = torch.linalg.matrix_norm(completed, ord=1) * torch.linalg.matrix_norm(inverse, ord=1)
    max_pos, max_frac, max_inverse, max_condition = (
        torch.stack([pos64.abs().max(), frac.abs().max(), inverse.abs().max(), condition.max()]).tolist()
    )
    if not max_frac < _MAX_FRACTIONAL:
        atom = int(frac.abs().amax(dim=1).argmax())
        raise ValueError(f"pos: atom {atom} is too far from its cell (fractional coordinate {max_frac:g})")
    frac_error = 64 * _EPS64 * (1 + max_condition) * (3 * max_pos * max_inverse + max_frac + 1)
    # An edge's fractional separation along axis k is at most cutoff / face_k (a distance along
    # the face normal), plus the errors of the fractional coordinates and of the face distance.
    face = reference.face_distances(completed)
    reach = cutoff / face * (1 + 1e-6 + 64 * _EPS64 * max_condition) + 2 * frac_error
    return _Wrapped(frac=frac - wrap, wrap=wrap.to(torch.int64), cartesian=cartesian, reach=reach, max_pos=max_pos)


def _plan(pos: torch.Tensor, batch: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> _Search:
    """Host side of the search: wrap, bin, sort, candidate lists, error bound, tasks."""
    kernels = import_kernels("radius_graph")
    device = pos.device
    num_systems = cell.shape[0]
    # Only periodic rows are ever multiplied by a non-zero wrap or image.
    periodic_cell = torch.where(pbc[:, :, None], cell, 0.0)
    wrapped = _wrap(pos, batch, cell, pbc, cutoff, periodic_cell)

    counts = torch.bincount(batch, minlength=num_systems)
    binning = _bin(wrapped.frac, batch, pbc, wrapped.reach, counts, kernels.SMALL_SYSTEM_ATOMS)
    bins, home = binning.bins, binning.home
    bin_of = binning.first_bin[batch] + (home[:, 0] * bins[batch, 1] + home[:, 1]) * bins[batch, 2] + home[:, 2]
    order = torch.argsort(bin_of, stable=True)
    bin_start = torch.zeros(binning.num_bins + 1, dtype=torch.int64, device=device)
    bin_start[1:] = torch.cumsum(torch.bincount(bin_of, minlength=binning.num_bins), 0)
    list_start, senders, images = _candidate_lists(binning, pbc, bin_start)
    bin_system = torch.repeat_interleave(torch.arange(num_systems, device=device), bins.prod(dim=1),
                                         output_size=binning.num_bins)
    block_r, _ = kernels.block_sizes(device.type == "cpu")

    # Float32 positions relative to a per-system origin, so their magnitude is the system's size.
    origin = _per_system(wrapped.cartesian, batch, num_systems, "amin")
    pos32 = (wrapped.cartesian - origin[batch]).to(torch.float32)
    return _Search(
        tasks=_tasks(list_start, bin_start, bin_system, block_r),
        cell32=periodic_cell.reshape(num_systems, 9).to(torch.float32).contiguous(),
        pos32=pos32[order].t().contiguous(),
        wrap=wrapped.wrap[order].t().contiguous(),
        atom=order.contiguous(),
        candidates=senders,
        images=images,
        loose2=_loose2(cutoff, wrapped.max_pos, wrapped.wrap, pos32, binning.reach, pbc, periodic_cell),
    )


def _loose2(cutoff: float, max_pos: float, wrap: torch.Tensor, pos32: torch.Tensor, reach: torch.Tensor,
            pbc: torch.Tensor, periodic_cell: torch.Tensor) -> float:
    """The float32 threshold: ``(cutoff + slack)**2``, widened for the rounding of ``d2``.

    ``slack`` bounds the error of the float32 distance of a visited edge (see the module
    docstring): the wrapped positions' float64 error, their float32 rounding, and the float32
    image offsets and arithmetic, each a few roundings of the largest magnitude involved.
    """
    max_image = reach.where(pbc, 0).max() + 1
    cell_sum = periodic_cell.abs().sum(dim=1).max()
    max_wrap, max_pos32, max_image, max_cell_sum = torch.stack(
        [wrap.abs().max().to(torch.float64), pos32.abs().max().to(torch.float64), max_image.to(torch.float64), cell_sum]
    ).tolist()
    slack = (64 * _EPS64 * 2 * (max_pos + 2 * max_wrap * max_cell_sum)
             + 64 * _EPS32 * 2 * (max_pos32 + max_image * max_cell_sum))
    loose2 = (cutoff + slack) ** 2 * (1 + 1e-5)
    # A threshold beyond float32 passes every finite distance.
    return min(loose2, float(torch.finfo(torch.float32).max))


def _launch(search: _Search, counts: torch.Tensor, base: torch.Tensor, src: torch.Tensor, shifts: torch.Tensor,
            write: bool, self_interaction: bool, half: bool) -> None:
    """One pass of the kernel: counts (``write=False``) or writes the candidates."""
    kernels = import_kernels("radius_graph")
    block_r, block_s = kernels.block_sizes(search.atom.device.type == "cpu")
    kernels.radius_graph_search_kernel[kernels.grid(search.tasks.shape[0])](
        search.tasks, search.cell32, search.pos32, search.wrap, search.atom, base, counts,
        search.candidates, search.images, src, shifts,
        search.atom.shape[0], search.candidates.shape[0], search.loose2, int(write),
        SELF_INTERACTION=self_interaction, HALF=half, BLOCK_R=block_r, BLOCK_S=block_s,
    )


def candidates(
    pos: torch.Tensor, batch: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float,
    self_interaction: bool, half: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A superset of the edges, without duplicates, grouped by receiver: ``(src, dst, shifts)``.

    Already filtered by the integer rules (no self pair without ``self_interaction``, one
    direction with ``half``); every edge of the spec is present. Arguments as for the operator.
    """
    device = pos.device
    search = _plan(pos, batch, cell, pbc, cutoff)
    num_atoms = pos.shape[0]
    counts = torch.zeros(num_atoms, dtype=torch.int64, device=device)
    # The counting pass reads base but writes no candidate: zeros and stand-in outputs.
    base = torch.zeros_like(counts)
    if search.tasks.shape[0]:
        _launch(search, counts, base, counts, counts, False, self_interaction, half)
    base = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    src = torch.empty(total, dtype=torch.int64, device=device)
    shifts = torch.empty(total, 3, dtype=torch.int64, device=device)
    if total:
        _launch(search, counts, base, src, shifts, True, self_interaction, half)
    dst = torch.repeat_interleave(torch.arange(num_atoms, device=device), counts, output_size=total)
    return src, dst, shifts


@torch.library.custom_op(f"eqscale::{OP_NAME}", mutates_args=())
def radius_graph_triton(
    pos: torch.Tensor,
    batch: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    cutoff: float,
    self_interaction: bool,
    max_num_neighbors: int,
    half: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The radius graph by the Triton kernels; the reference's output, bit for bit.

    Args:
        pos: ``(N, 3)`` float32/float64 on CUDA (or CPU under ``TRITON_INTERPRET=1``).
        batch: ``(N,)`` int64, sorted.
        cell: ``(B, 3, 3)`` float64.
        pbc: ``(B, 3)`` bool.
        cutoff: positive float.
        self_interaction: include ``(i, i, 0)``.
        max_num_neighbors: keep at most this many (nearest) edges per receiver; ``< 0``: all.
        half: keep one direction of each pair.

    Returns:
        ``edge_index`` ``(2, E)``, ``shifts`` ``(E, 3)``, ``num_neighbors`` ``(N,)``, int64.

    Example:
        >>> import torch, eqscale
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]], device="cuda")
        >>> cell = 3.0 * torch.eye(3, dtype=torch.float64, device="cuda")[None]
        >>> edge_index, shifts, counts = torch.ops.eqscale.radius_graph_triton(
        ...     pos, torch.zeros(2, dtype=torch.int64, device="cuda"), cell,
        ...     torch.ones(1, 3, dtype=torch.bool, device="cuda"), 2.0, False, -1, False)
        >>> counts.tolist()
        [2, 2]
    """
    _check(pos, batch, cell, pbc)
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be positive and finite, got {cutoff}")
    num_atoms = pos.shape[0]
    if num_atoms == 0:
        # Still rejects a singular periodic cell, as the other backends do.
        reference.check_not_singular(cell, pbc, reference.complete_cell(cell, pbc))
        empty = dict(dtype=torch.int64, device=pos.device)
        return torch.zeros(2, 0, **empty), torch.zeros(0, 3, **empty), torch.zeros(0, **empty)
    pos = pos.contiguous()
    src, dst, shifts = candidates(pos, batch, cell, pbc, cutoff, self_interaction, half)
    # The exact decision in chunks: its float64 temporaries take ~100 bytes per candidate.
    kept = [
        reference.select_edges(pos, cell, batch, src[i:i + _CHUNK], dst[i:i + _CHUNK], shifts[i:i + _CHUNK],
                               cutoff, self_interaction, half)
        for i in range(0, max(src.shape[0], 1), _CHUNK)
    ]
    src, dst, shifts, d2 = (torch.cat(parts) for parts in zip(*kept, strict=True))
    return reference.cut_and_sort(src, dst, shifts, d2, num_atoms, None if max_num_neighbors < 0 else max_num_neighbors)
