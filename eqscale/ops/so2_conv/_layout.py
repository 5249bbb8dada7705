"""Sizes, index tables and input checks shared by every backend of the SO(2) convolution.

Layouts (all row-major):

- **node features** ``(N, (L+1)^2, C)``: the middle axis holds the real spherical-harmonic
  components in e3nn's order, degree by degree, ``index = l^2 + l + m`` with ``m = -l..l``. This
  is the ``ir_mul`` layout of the irreps ``C x (0e + 1o + 2e + ...)`` seen as ``(N, dim / C, C)``.
- **Wigner-D** ``(E, sum_l (2l+1)^2)``: per edge the blocks ``D_l`` for ``l = 0..L`` one after
  the other, each ``(2l+1, 2l+1)`` row-major (rows and columns ``m = -l..l``).
- **edge features in the edge frame** ``(E, K, C)``, *m-major*: first ``m = 0`` for
  ``l = 0..L``, then for ``m = 1..mmax`` the ``+m`` components for ``l = m..L`` followed by the
  ``-m`` components for ``l = m..L``. Each ``|m|`` block is contiguous, so the SO(2) linear maps
  are plain GEMMs on ``(E, n_m C)`` slices.
- **weights** (flat): for ``m = 0`` one ``((L+1) C_in, (L+1) C_out)`` matrix, then for each
  ``m = 1..mmax`` the pair ``W1, W2``, each ``((L+1-m) C_in, (L+1-m) C_out)``; rows index
  ``(l, c_in)``, columns ``(l', c_out)``, ``l`` slowest.
- **radial** ``(E, K_half, C_in)``: a per-edge multiplier of the input coefficients in the edge
  frame, shared by ``+m`` and ``-m`` (which keeps the map SO(2)-equivariant); ``K_half`` runs over
  ``m = 0..mmax`` and ``l = m..L`` in the m-major order above.
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
from __future__ import annotations

import functools

import torch

from eqscale.ops._edge_index import check_edge_range


def num_coefficients(lmax: int) -> int:
    """``(lmax + 1)^2`` components of the degrees ``0..lmax``."""
    return (lmax + 1) ** 2


def wigner_numel(lmax: int) -> int:
    """Entries per edge of the packed Wigner-D blocks, ``sum_l (2l+1)^2``."""
    return (lmax + 1) * (2 * lmax + 1) * (2 * lmax + 3) // 3


def wigner_offset(l: int) -> int:
    """Offset of block ``D_l`` in the packed Wigner-D layout."""
    return wigner_numel(l - 1) if l > 0 else 0


def num_m_coefficients(lmax: int, mmax: int) -> int:
    """Components kept in the edge frame: ``|m| <= mmax``, all degrees ``0..lmax``."""
    return (lmax + 1) + 2 * sum(lmax + 1 - m for m in range(1, mmax + 1))


def num_radial(lmax: int, mmax: int) -> int:
    """Rows ``K_half`` of the radial multiplier (one per ``m >= 0`` and ``l >= m``)."""
    return sum(lmax + 1 - m for m in range(mmax + 1))


def so2_weight_numel(lmax: int, mmax: int, channels_in: int, channels_out: int) -> int:
    """Length of the flat SO(2) weight vector (see the module docstring for its layout).

    Example:
        >>> so2_weight_numel(1, 1, 1, 1)  # m = 0: 2 x 2, m = 1: two 1 x 1
        6
    """
    total = ((lmax + 1) * channels_in) * ((lmax + 1) * channels_out)
    for m in range(1, mmax + 1):
        total += 2 * ((lmax + 1 - m) * channels_in) * ((lmax + 1 - m) * channels_out)
    return total


def lmax_of_wigner(numel: int, argument: str = "wigner") -> int:
    """The ``lmax`` whose packed Wigner-D has ``numel`` entries per edge."""
    lmax = 0
    while wigner_numel(lmax) < numel:
        lmax += 1
    if wigner_numel(lmax) != numel:
        raise ValueError(
            f"{argument} must have sum_l (2l+1)^2 = 1, 10, 35, 84, ... columns (packed Wigner-D blocks), got {numel}"
        )
    return lmax


def lmax_of_coefficients(count: int, argument: str = "node_feats") -> int:
    """The ``lmax`` with ``(lmax + 1)^2 == count``."""
    lmax = int(round(count**0.5)) - 1
    if lmax < 0 or (lmax + 1) ** 2 != count:
        raise ValueError(f"{argument} must have (lmax + 1)^2 = 1, 4, 9, ... rows per node in dim 1, got {count}")
    return lmax


def mmax_of_edge_coefficients(count: int, lmax: int, argument: str = "edge_feats") -> int:
    """The ``mmax`` with ``num_m_coefficients(lmax, mmax) == count``."""
    for mmax in range(lmax + 1):
        if num_m_coefficients(lmax, mmax) == count:
            return mmax
    valid = [num_m_coefficients(lmax, m) for m in range(lmax + 1)]
    raise ValueError(
        f"{argument} must have one of {valid} rows in dim 1 (mmax = 0..{lmax} for lmax={lmax}), got {count}"
    )


@functools.cache
def _m_major_tuple(lmax: int, mmax: int) -> tuple[int, ...]:
    index = [l * l + l for l in range(lmax + 1)]
    for m in range(1, mmax + 1):
        index += [l * l + l + m for l in range(m, lmax + 1)]
        index += [l * l + l - m for l in range(m, lmax + 1)]
    return tuple(index)


def m_major_index(lmax: int, mmax: int, device: torch.device | str | None = None) -> torch.Tensor:
    """For each m-major edge-frame position, its ``l^2 + l + m`` index in the node layout."""
    return torch.tensor(_m_major_tuple(lmax, mmax), dtype=torch.long, device=device)


@functools.cache
def _radial_index_tuple(lmax: int, mmax: int) -> tuple[int, ...]:
    # For each m-major position, the row of the radial multiplier: +m and -m share one.
    index, offset = list(range(lmax + 1)), lmax + 1
    for m in range(1, mmax + 1):
        block = list(range(offset, offset + lmax + 1 - m))
        index += block + block
        offset += lmax + 1 - m
    return tuple(index)


def radial_index(lmax: int, mmax: int, device: torch.device | str | None = None) -> torch.Tensor:
    """For each m-major position, the row of ``radial`` that multiplies it."""
    return torch.tensor(_radial_index_tuple(lmax, mmax), dtype=torch.long, device=device)


def m_blocks(lmax: int, mmax: int) -> list[tuple[int, int, int]]:
    """``(m, offset, n)`` per order: ``n = lmax + 1 - m`` rows of ``+m`` at ``offset`` (then ``-m``)."""
    blocks, offset = [(0, 0, lmax + 1)], lmax + 1
    for m in range(1, mmax + 1):
        blocks.append((m, offset, lmax + 1 - m))
        offset += 2 * (lmax + 1 - m)
    return blocks


def so2_flops(num_edges: int, lmax: int, mmax: int, channels_in: int, channels_out: int, radial: bool) -> int:
    """Useful FLOPs of the per-edge SO(2) linear maps (2 per multiply-add)."""
    total = 0
    for m, _, n in m_blocks(lmax, mmax):
        total += 2 * (n * channels_in) * (n * channels_out) * (1 if m == 0 else 4)
    if radial:
        total += num_m_coefficients(lmax, mmax) * channels_in
    return num_edges * total


def rotate_flops(num_edges: int, lmax: int, mmax: int, channels: int) -> int:
    """Useful FLOPs of rotating ``(L+1)^2`` coefficients into the ``|m| <= mmax`` edge frame."""
    per_edge = sum((2 * min(l, mmax) + 1) * (2 * l + 1) for l in range(lmax + 1))
    return 2 * num_edges * per_edge * channels


# ----------------------------------------------------------------------------------------------
# input checks (ValueError/TypeError naming the argument)


def check_int(value: object, argument: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{argument} must be >= {minimum}, got {value}")
    return value


def check_mmax(mmax: object, lmax: int) -> int:
    mmax = check_int(mmax, "mmax")
    if mmax > lmax:
        raise ValueError(f"mmax must be <= lmax ({lmax}), got {mmax}")
    return mmax


def check_tensor(value: object, argument: str, dims: int, floating: bool = True) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{argument} must be a floating-point tensor, got {value.dtype}")
    if value.dim() != dims:
        raise ValueError(f"{argument} must have {dims} dimensions, got shape {tuple(value.shape)}")
    return value


def check_like(value: torch.Tensor, argument: str, like: torch.Tensor, like_name: str) -> None:
    if value.dtype != like.dtype or value.device != like.device:
        raise TypeError(
            f"{argument} must have {like_name}'s dtype and device ({like.dtype}, {like.device}), "
            f"got {value.dtype}, {value.device}"
        )


def check_edge_vec(edge_vec: object) -> torch.Tensor:
    edge_vec = check_tensor(edge_vec, "edge_vec", 2)
    if edge_vec.shape[1] != 3:
        raise ValueError(f"edge_vec must have shape (E, 3), got {tuple(edge_vec.shape)}")
    if not torch.compiler.is_compiling() and edge_vec.shape[0] and bool((edge_vec.detach() == 0).all(dim=1).any()):
        raise ValueError("edge_vec contains a zero-length vector, which has no direction to rotate onto the axis")
    return edge_vec


def check_edge_index(edge_index: object, num_edges: int, sender_rows: int, num_nodes: int) -> torch.Tensor:
    """Checks ``(2, E)`` integer indices; ``num_edges < 0`` takes E from ``edge_index``."""
    edge_index = check_tensor(edge_index, "edge_index", 2, floating=False)
    if edge_index.shape[0] != 2 or (num_edges >= 0 and edge_index.shape[1] != num_edges):
        expected = "(2, E)" if num_edges < 0 else f"(2, {num_edges})"
        raise ValueError(f"edge_index must have shape {expected}, got {tuple(edge_index.shape)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"edge_index must be int64 (or int32), got {edge_index.dtype}")
    check_edge_range(edge_index, sender_rows, num_nodes)
    return edge_index
