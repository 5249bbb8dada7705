"""Reference radius graph: batched brute force over periodic images in plain PyTorch. The spec.

Every backend must return exactly what :func:`radius_graph` returns here: the same edges, in the
same order, with the same shifts. The pieces a fused backend has to reproduce bit for bit are
:func:`squared_distances` (the one formula that decides "within the cutoff" and ranks neighbours
for ``max_num_neighbors``) and :func:`keep_half` (which direction of a pair ``half=True`` keeps).
A backend that finds a superset of the edges can instead hand it to :func:`select_edges` (the
decision) and :func:`cut_and_sort` (``max_num_neighbors`` and the order), as the Triton one does.

Inputs arrive validated and normalised by :func:`eqscale.ops.radius_graph.radius_graph`:
``batch`` sorted int64, ``cell`` ``(B, 3, 3)`` float64, ``pbc`` ``(B, 3)`` bool.
"""

from __future__ import annotations

import torch

# Candidates (receiver, sender, image) materialised at once; bounds the memory of the brute force.
_CHUNK = 1 << 22


def complete_cell(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """The cell with every non-periodic row replaced by an orthonormal completion.

    Non-periodic cell vectors carry no meaning for the graph (shifts along them are always 0), and
    users pass zeros or a vacuum box there. Replacing them by unit vectors orthogonal to the
    periodic ones gives every system an invertible cell whose fractional coordinates along the
    periodic axes are unchanged and along the others are lengths in Å.

    Args:
        cell: ``(B, 3, 3)`` float64, rows are cell vectors.
        pbc: ``(B, 3)`` bool.

    Returns:
        ``(B, 3, 3)`` float64. Singular when the periodic vectors are linearly dependent.
    """
    num_systems = cell.shape[0]
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand(num_systems, 3, 3)
    # Periodic axes first (stable), so that every case below reads rows 0, 1 as "the periodic ones".
    order = torch.argsort((~pbc).to(torch.int8), dim=1, stable=True)
    rows = torch.gather(cell, 1, order[:, :, None].expand(num_systems, 3, 3))
    count = pbc.sum(dim=1)

    first = rows[:, 0]
    unit_first = torch.nn.functional.normalize(first, dim=1)
    # The basis vector least aligned with the periodic one gives a well-conditioned cross product.
    least_aligned = eye[torch.arange(num_systems, device=cell.device), unit_first.abs().argmin(dim=1)]
    u = torch.nn.functional.normalize(torch.linalg.cross(unit_first, least_aligned), dim=1)
    w = torch.linalg.cross(unit_first, u)
    normal = torch.nn.functional.normalize(torch.linalg.cross(rows[:, 0], rows[:, 1]), dim=1)

    one_periodic = torch.stack([first, u, w], dim=1)
    two_periodic = torch.stack([rows[:, 0], rows[:, 1], normal], dim=1)
    by_count = torch.stack([eye, one_periodic, two_periodic, rows], dim=1)  # (B, 4, 3, 3)
    completed = by_count[torch.arange(num_systems, device=cell.device), count]
    # Undo the permutation of rows.
    return torch.empty_like(completed).scatter_(1, order[:, :, None].expand(num_systems, 3, 3), completed)


def check_not_singular(cell: torch.Tensor, pbc: torch.Tensor, completed: torch.Tensor) -> None:
    """ValueError unless the periodic cell vectors of every system are linearly independent.

    The criterion, shared by every backend: ``|det(completed)| / prod(|a_k|, periodic k) >= 1e-9``
    (the volume relative to a box with the same edge lengths; 1 for orthogonal vectors) and no
    periodic vector shorter than ``1e-9``.
    """
    if not bool(pbc.any()):
        return
    lengths = torch.where(pbc, cell.norm(dim=2), 1.0)
    relative = torch.linalg.det(completed).abs() / lengths.prod(dim=1)
    singular = ~(relative >= 1e-9) | (lengths < 1e-9).any(dim=1)
    if bool(singular.any()):
        system = int(singular.nonzero()[0, 0])
        raise ValueError(
            f"cell of system {system} is singular along its periodic axes "
            f"(pbc={pbc[system].tolist()}, cell={cell[system].tolist()})"
        )


def face_distances(cell: torch.Tensor) -> torch.Tensor:
    """Distances between opposite faces of each cell, ``(B, 3)``: ``|det| / |a_j x a_k|``."""
    volume = torch.linalg.det(cell).abs()
    areas = torch.stack(
        [torch.linalg.cross(cell[:, (k + 1) % 3], cell[:, (k + 2) % 3]).norm(dim=1) for k in range(3)], dim=1
    )
    return volume[:, None] / areas


def squared_distances(
    pos: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    shifts: torch.Tensor,
    cell: torch.Tensor,
    batch: torch.Tensor,
) -> torch.Tensor:
    """Squared edge lengths by the one formula that every backend evaluates identically.

    In float64, in this order of operations (a fused backend must not contract it into FMAs)::

        v = (pos[dst] - pos[src]) + ((S0 * c0 + S1 * c1) + S2 * c2)
        d2 = (vx * vx + vy * vy) + vz * vz

    where ``c0, c1, c2`` are the rows of ``cell[batch[src]]``. An edge exists when
    ``d2 < cutoff * cutoff`` (both in float64), and ``max_num_neighbors`` ranks by ``d2``.
    """
    pos = pos.to(torch.float64)
    rows = cell[batch[src]]
    s = shifts.to(torch.float64)
    offset = (s[:, 0:1] * rows[:, 0] + s[:, 1:2] * rows[:, 1]) + s[:, 2:3] * rows[:, 2]
    v = (pos[dst] - pos[src]) + offset
    return (v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1]) + v[:, 2] * v[:, 2]


def lexicographically_positive(shifts: torch.Tensor) -> torch.Tensor:
    """Whether the first non-zero component of each ``(E, 3)`` shift is positive."""
    s0, s1, s2 = shifts.unbind(dim=1)
    return (s0 > 0) | ((s0 == 0) & ((s1 > 0) | ((s1 == 0) & (s2 > 0))))


def keep_half(src: torch.Tensor, dst: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """The direction ``half=True`` keeps of each pair.

    The edge ``src -> dst`` with shift ``S`` and its reverse ``dst -> src`` with ``-S`` describe
    one pair; the kept one has ``src < dst``, or ``src == dst`` and ``S`` lexicographically
    positive. Self pairs (``S == 0``, only with ``self_interaction``) are kept.
    """
    zero = (shifts == 0).all(dim=1)
    return (src < dst) | ((src == dst) & (lexicographically_positive(shifts) | zero))


def lexsort(keys: list[torch.Tensor]) -> torch.Tensor:
    """Permutation sorting by ``keys[0]``, then ``keys[1]``, ... (all ascending)."""
    order = torch.argsort(keys[-1], stable=True)
    for key in reversed(keys[:-1]):
        order = order[torch.argsort(key[order], stable=True)]
    return order


def _candidates(
    frac: torch.Tensor,
    batch: torch.Tensor,
    ptr: torch.Tensor,
    pbc: torch.Tensor,
    radius: torch.Tensor,
    receivers: torch.Tensor,
    counts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (sender, image) of the system of each receiver: ``(src, dst, shifts)``."""
    device = frac.device
    dst = torch.repeat_interleave(receivers, counts)
    start = torch.cumsum(counts, 0) - counts
    k = torch.arange(dst.numel(), device=device) - torch.repeat_interleave(start, counts)
    system = batch[dst]
    side = 2 * radius[system] + 1  # (C, 3)
    num_images = side.prod(dim=1)
    src = ptr[system] + torch.div(k, num_images, rounding_mode="floor")
    image = k % num_images
    t2 = image % side[:, 2]
    t1 = torch.div(image, side[:, 2], rounding_mode="floor") % side[:, 1]
    t0 = torch.div(image, side[:, 2] * side[:, 1], rounding_mode="floor")
    t = torch.stack([t0, t1, t2], dim=1) - radius[system]
    # Brute force around the nearest image: the fractional separation dst - src + S is within
    # cutoff / face_distance of zero on every axis, and -round(frac difference) is its centre.
    centre = -torch.round(frac[dst] - frac[src]).to(torch.int64)
    shifts = torch.where(pbc[system], centre + t, torch.zeros_like(t))
    return src, dst, shifts


def radius_graph(
    pos: torch.Tensor,
    cutoff: float,
    batch: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    self_interaction: bool,
    max_num_neighbors: int | None,
    half: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs within ``cutoff``, by brute force over images. See the public function for the spec.

    Args:
        pos: ``(N, 3)`` float.
        cutoff: positive float.
        batch: ``(N,)`` int64, sorted.
        cell: ``(B, 3, 3)`` float64.
        pbc: ``(B, 3)`` bool.
        self_interaction: include ``(i, i, 0)``.
        max_num_neighbors: keep at most this many (nearest) edges per receiver, or ``None``.
        half: keep one direction of each pair (:func:`keep_half`).

    Returns:
        ``edge_index`` ``(2, E)`` int64, ``shifts`` ``(E, 3)`` int64, and ``num_neighbors``
        ``(N,)`` int64: edges per receiver before the ``max_num_neighbors`` cut.
    """
    device = pos.device
    num_nodes, num_systems = pos.shape[0], cell.shape[0]
    completed = complete_cell(cell, pbc)
    check_not_singular(cell, pbc, completed)
    frac = (pos.to(torch.float64)[:, None, :] @ torch.linalg.inv(completed)[batch]).squeeze(1)
    face = face_distances(completed)
    # |fractional separation| <= cutoff / face on each axis, around a centre within 1/2 of it.
    radius = torch.where(pbc, torch.floor(cutoff / face) + 1, 0).to(torch.int64)
    atoms_per_system = torch.bincount(batch, minlength=num_systems)
    ptr = torch.cumsum(atoms_per_system, 0) - atoms_per_system
    per_receiver = atoms_per_system[batch] * (2 * radius[batch] + 1).prod(dim=1)

    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    receiver = 0
    while receiver < num_nodes:
        # Whole receivers per chunk, at least one.
        total = torch.cumsum(per_receiver[receiver:], 0)
        end = receiver + max(1, int(torch.searchsorted(total, _CHUNK, right=True)))
        receivers = torch.arange(receiver, end, device=device)
        src, dst, shifts = _candidates(frac, batch, ptr, pbc, radius, receivers, per_receiver[receiver:end])
        found.append(select_edges(pos, cell, batch, src, dst, shifts, cutoff, self_interaction, half))
        receiver = end

    if found:
        src, dst, shifts, d2 = (torch.cat(parts) for parts in zip(*found, strict=True))
    else:
        src = dst = torch.zeros(0, dtype=torch.int64, device=device)
        shifts = torch.zeros(0, 3, dtype=torch.int64, device=device)
        d2 = torch.zeros(0, dtype=torch.float64, device=device)
    return cut_and_sort(src, dst, shifts, d2, num_nodes, max_num_neighbors)


def select_edges(
    pos: torch.Tensor,
    cell: torch.Tensor,
    batch: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    shifts: torch.Tensor,
    cutoff: float,
    self_interaction: bool,
    half: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidate edges ``(src, dst, shifts)`` that are edges of the spec, with their ``d2``.

    The one decision every backend makes identically: ``d2 < cutoff**2`` by
    :func:`squared_distances`, except the self pair ``(i, i, 0)``, which is an edge exactly when
    ``self_interaction``; with ``half``, only the direction :func:`keep_half` keeps. Candidates
    must be distinct; any superset of the edges gives the same result.

    Returns:
        ``(src, dst, shifts, d2)`` of the kept candidates, in their given order.
    """
    d2 = squared_distances(pos, src, dst, shifts, cell, batch)
    is_self = (src == dst) & (shifts == 0).all(dim=1)
    keep = torch.where(is_self, self_interaction, d2 < float(cutoff) * float(cutoff))
    if half:
        keep &= keep_half(src, dst, shifts)
    return src[keep], dst[keep], shifts[keep], d2[keep]


def cut_and_sort(
    src: torch.Tensor,
    dst: torch.Tensor,
    shifts: torch.Tensor,
    d2: torch.Tensor,
    num_nodes: int,
    max_num_neighbors: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output of :func:`radius_graph` from all its edges, given in any order.

    Counts each receiver's edges, keeps its ``max_num_neighbors`` nearest (ties to the smaller
    sender, then shift) and sorts by receiver, sender, shift.

    Returns:
        ``edge_index`` ``(2, E)``, ``shifts`` ``(E, 3)`` and ``num_neighbors`` ``(N,)``, int64.
    """
    device = src.device
    num_neighbors = torch.bincount(dst, minlength=num_nodes)

    if max_num_neighbors is not None:
        # Nearest first; equal d2 by sender, then shift, so the cut never depends on search order.
        order = lexsort([dst, d2, src, shifts[:, 0], shifts[:, 1], shifts[:, 2]])
        first = torch.cumsum(num_neighbors, 0) - num_neighbors
        rank = torch.arange(order.numel(), device=device) - first[dst[order]]
        kept = order[rank < max_num_neighbors]
        src, dst, shifts = src[kept], dst[kept], shifts[kept]

    order = lexsort([dst, src, shifts[:, 0], shifts[:, 1], shifts[:, 2]])
    edge_index = torch.stack([src[order], dst[order]])
    return edge_index, shifts[order], num_neighbors
