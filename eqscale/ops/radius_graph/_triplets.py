"""Triplets and quadruplets of edges (angles and dihedrals, as in GemNet/DimeNet), in plain PyTorch.

Edges follow the graph convention of :func:`eqscale.ops.radius_graph`: edge ``e`` goes from
``edge_index[0, e]`` (sender) to ``edge_index[1, e]`` (receiver). A triplet is a path
``k -> j -> i`` of two edges meeting at ``j``; a quadruplet a path ``l -> k -> j -> i`` of three.
"""

from __future__ import annotations

import torch


def _check(edge_index: object, num_nodes: object, shifts: object) -> None:
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"edge_index must be an int32 or int64 tensor, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"num_nodes must be a non-negative int, got {num_nodes!r}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index entries must lie in [0, num_nodes={num_nodes})")
    if shifts is not None:
        if not isinstance(shifts, torch.Tensor):
            raise TypeError(f"shifts must be a torch.Tensor or None, got {type(shifts).__name__}")
        if shifts.shape != (edge_index.shape[1], 3):
            raise ValueError(f"shifts must have shape (E, 3) = ({edge_index.shape[1]}, 3), got {tuple(shifts.shape)}")


def _incoming(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edges grouped by receiver: (edge ids sorted by receiver, first position, count) per node."""
    dst = edge_index[1].long()
    by_receiver = torch.argsort(dst, stable=True)
    count = torch.bincount(dst, minlength=num_nodes)
    first = torch.cumsum(count, 0) - count
    return by_receiver, first, count


def _extend(edge_index: torch.Tensor, outer: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each edge id in ``outer``, every edge arriving at its sender: (position in outer, edge)."""
    by_receiver, first, count = _incoming(edge_index, num_nodes)
    middle = edge_index[0, outer].long()
    per = count[middle]
    slot = torch.repeat_interleave(torch.arange(outer.numel(), device=outer.device), per)
    start = torch.cumsum(per, 0) - per
    offset = torch.arange(slot.numel(), device=outer.device) - start[slot]
    return slot, by_receiver[first[middle[slot]] + offset]


def _reverses(
    edge_index: torch.Tensor, shifts: torch.Tensor | None, e_in: torch.Tensor, e_out: torch.Tensor
) -> torch.Tensor:
    """Whether ``e_in`` (k -> j) is ``e_out`` (j -> i) walked backwards: k == i and S_in == -S_out."""
    back = edge_index[0, e_in] == edge_index[1, e_out]
    if shifts is not None:
        back &= (shifts[e_in] == -shifts[e_out]).all(dim=1)
    return back


def edge_triplets(
    edge_index: torch.Tensor, num_nodes: int, shifts: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of edges ``(k -> j, j -> i)`` that share the middle atom ``j``, for angle features.

    The back-tracking pair, where ``k -> j`` is ``j -> i`` reversed, is excluded. Under periodic
    boundary conditions pass ``shifts``: then ``k == i`` through a different periodic image is a
    real angle and is kept, and only the pair with ``S(k -> j) == -S(j -> i)`` is dropped. Without
    ``shifts`` every pair with ``k == i`` is dropped.

    Args:
        edge_index: ``(2, E)`` integer, ``(sender, receiver)``.
        num_nodes: number of atoms.
        shifts: ``(E, 3)`` integer cell shifts of the edges, or ``None``.

    Returns:
        ``(edge_in, edge_out)``: int64 edge ids of equal length ``T``, the ``t``-th triplet being
        ``edge_in[t] = k -> j`` and ``edge_out[t] = j -> i``. Sorted by ``edge_out``, then by
        ``edge_in``.

    Example:
        >>> import torch, eqscale
        >>> edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])  # 0 <-> 1 <-> 2
        >>> eqscale.ops.edge_triplets(edge_index, num_nodes=3)
        (tensor([3, 0]), tensor([1, 2]))
    """
    _check(edge_index, num_nodes, shifts)
    out = torch.arange(edge_index.shape[1], device=edge_index.device)
    slot, e_in = _extend(edge_index, out, num_nodes)
    e_out = out[slot]
    keep = ~_reverses(edge_index, shifts, e_in, e_out)
    return e_in[keep], e_out[keep]


def edge_quadruplets(
    edge_index: torch.Tensor, num_nodes: int, shifts: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paths of three edges ``(l -> k, k -> j, j -> i)``, for dihedral (torsion) features.

    Excluded: back-tracking at either joint (as in :func:`edge_triplets`), and the closed
    triangle whose fourth atom is the first one again (``l == i`` and, with ``shifts``, the three
    shifts summing to zero), where the dihedral is undefined. Four distinct atoms are not
    required: with ``shifts``, ``l`` may be another periodic image of ``i``.

    Args:
        edge_index: ``(2, E)`` integer, ``(sender, receiver)``.
        num_nodes: number of atoms.
        shifts: ``(E, 3)`` integer cell shifts of the edges, or ``None``.

    Returns:
        ``(edge_lk, edge_kj, edge_ji)``: int64 edge ids of equal length ``Q``, sorted by
        ``edge_ji``, then ``edge_kj``, then ``edge_lk``.

    Example:
        >>> import torch, eqscale
        >>> chain = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])  # 0 - 1 - 2 - 3
        >>> eqscale.ops.edge_quadruplets(chain, num_nodes=4)
        (tensor([5, 0]), tensor([3, 2]), tensor([1, 4]))
    """
    e_kj, e_ji = edge_triplets(edge_index, num_nodes, shifts)
    slot, e_lk = _extend(edge_index, e_kj, num_nodes)
    e_kj, e_ji = e_kj[slot], e_ji[slot]
    keep = ~_reverses(edge_index, shifts, e_lk, e_kj)
    closed = edge_index[0, e_lk] == edge_index[1, e_ji]
    if shifts is not None:
        closed &= (shifts[e_lk] + shifts[e_kj] + shifts[e_ji] == 0).all(dim=1)
    keep &= ~closed
    return e_lk[keep], e_kj[keep], e_ji[keep]
