"""Reference SO(2) (eSCN) convolution: the spec every fused backend must match.

Plain, differentiable PyTorch (autograd gives every derivative order). Layouts are those of
:mod:`eqscale.ops.so2_conv._layout`.

**Wigner-D.** For each edge vector ``v`` the rotation is ``R = rotation_to_axis(v, "y")``, the
minimal rotation (about ``v x e_y``) that takes ``v / |v|`` to e3nn's polar axis ``y``; that
choice fixes the free roll angle about ``y``. The blocks ``D_l(R)`` (``Y_l(R x) = D_l Y_l(x)`` for
e3nn's real spherical harmonics, i.e. ``eqscale.o3.wigner_D(l, R)``) follow from ``D_1 = R``
(e3nn's ``l = 1`` basis is ``(x, y, z)``) by the Ivanic-Ruedenberg recursion, which writes each
entry of ``D_l`` as at most five products of an entry of ``D_1`` with an entry of ``D_{l-1}``:
``O(l^2)`` per degree, ``O(L^3)`` per edge, no Euler angles and no matrix exponential.

The SO(2) convolution's output does not depend on the roll angle: rotating the edge frame about
``y`` by ``a`` multiplies each ``(+m, -m)`` pair by the same 2D rotation by ``m a`` for every
degree, and the per-``m`` maps ``[[W1, -W2], [W2, W1]]`` commute with it.
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
from __future__ import annotations

import functools
import math

import torch

from eqscale.o3._wigner import rotation_to_axis
from eqscale.ops.so2_conv._layout import (
    lmax_of_coefficients,
    lmax_of_wigner,
    m_blocks,
    m_major_index,
    mmax_of_edge_coefficients,
    radial_index,
    wigner_offset,
)


@functools.cache
def _recursion_table(l: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The constants of one step of the recursion, for degree ``l >= 2``.

    Matrices ``M_i`` (3, 2l+1, 2l-1) and scale ``beta`` (2l+1,) with
    ``D_l = sum_i (M_i D_{l-1} B_i(D_1)) diag(beta)`` (see :func:`wigner_blocks`).
    """
    size, inner = 2 * l + 1, 2 * l - 1
    left = [[[0.0] * inner for _ in range(size)] for _ in range(3)]
    for m in range(-l, l + 1):
        for i, a, alpha in _terms(l, m):
            if alpha != 0.0:
                assert abs(a) <= l - 1  # a zero coefficient guards every row outside D_{l-1}
                left[i + 1][m + l][a + l - 1] += alpha
    beta = [1.0 / math.sqrt(2 * l * (2 * l - 1) if abs(n) == l else (l + n) * (l - n)) for n in range(-l, l + 1)]
    return tuple(x for block in left for row in block for x in row), tuple(beta)


def _terms(l: int, m: int) -> list[tuple[int, int, float]]:
    """The row-``m`` terms ``(i, a, alpha)`` of the Ivanic-Ruedenberg recursion.

    Ivanic & Ruedenberg (1996), with the 1998 erratum and the ``m < 0`` case of ``V`` corrected:
    entry ``(m, n)`` of ``D_l`` is ``beta(n) sum alpha P_i[a, n]`` with ``P_i = D_{l-1} B_i``. The
    coefficients ``u, v, w`` of the paper are ``alpha``-factors of ``m`` times
    ``beta(n) = 1 / sqrt(denominator(n))``.
    """
    delta = 1.0 if m == 0 else 0.0
    u = math.sqrt((l + m) * (l - m))
    v = 0.5 * math.sqrt((1 + delta) * (l + abs(m) - 1) * (l + abs(m))) * (1 - 2 * delta)
    w = -0.5 * math.sqrt(max(0, (l - abs(m) - 1) * (l - abs(m)))) * (1 - delta)
    terms = [(0, m, u)]
    if m == 0:
        terms += [(1, 1, v), (-1, -1, v)]
    elif m > 0:
        one = 1.0 if m == 1 else 0.0
        terms += [(1, m - 1, v * math.sqrt(1 + one)), (-1, -m + 1, -v * (1 - one)), (1, m + 1, w), (-1, -m - 1, w)]
    else:
        one = 1.0 if m == -1 else 0.0
        terms += [(1, m + 1, v * (1 - one)), (-1, -m - 1, v * math.sqrt(1 + one)), (1, m - 1, w), (-1, -m + 1, -w)]
    return terms


def _build_table_tensors(l: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Dynamo would trace through the cache wrapper anyway (with a warning): call the function.
    table = _recursion_table.__wrapped__ if torch.compiler.is_compiling() else _recursion_table
    left, beta = table(l)
    return (
        torch.tensor(left, dtype=dtype, device=device).reshape(3 * (2 * l + 1), 2 * l - 1),
        torch.tensor(beta, dtype=dtype, device=device),
    )


_cached_table_tensors = functools.cache(_build_table_tensors)


def _table_tensors(l: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.compiler.is_compiling():
        return _build_table_tensors(l, dtype, device)  # small constants, built inside the graph
    return _cached_table_tensors(l, dtype, device)


def _left_product(matrix: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``matrix @ batch[e]`` for every ``e`` as one GEMM (a broadcast matmul runs E tiny ones)."""
    num, rows, columns = batch.shape
    flat = batch.transpose(0, 1).reshape(rows, num * columns)
    return (matrix @ flat).reshape(-1, num, columns).transpose(0, 1)


def wigner_blocks(rotations: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """``[D_0, ..., D_lmax]`` of rotations ``(E, 3, 3)``, each ``(E, 2l+1, 2l+1)``, by recursion.

    Each step is ``D_l = sum_i (M_i D_{l-1} B_i) diag(beta)``: ``M_i`` is a constant sparse matrix
    (the recursion's row selection and ``m``-dependent factors), ``B_i`` multiplies the columns by
    the entries of row ``i`` of ``D_1`` (its middle columns by ``D_1[i, 0]``, the two outer ones mix
    the first and last columns), ``beta`` the ``n``-dependent factors. ``O(l^2)`` work per degree
    and edge apart from the small constant product ``M D_{l-1}``.
    """
    blocks = [rotations.new_ones(rotations.shape[0], 1, 1)]
    if lmax >= 1:
        blocks.append(rotations)
    minus, zero, plus = rotations.unbind(-1)  # (E, 3): column -1, 0, +1 of D_1, indexed by row i
    for l in range(2, lmax + 1):
        left, beta = _table_tensors(l, rotations.dtype, rotations.device)
        q = _left_product(left, blocks[-1]).unflatten(1, (3, 2 * l + 1))  # (E, 3, 2l+1, 2l-1): M_i D_{l-1}
        first, last = q[..., 0], q[..., -1]
        middle = (zero[:, :, None, None] * q).sum(1)
        column_minus = (plus[:, :, None] * first + minus[:, :, None] * last).sum(1)
        column_plus = (plus[:, :, None] * last - minus[:, :, None] * first).sum(1)
        block = torch.cat([column_minus[..., None], middle, column_plus[..., None]], dim=-1)
        blocks.append(block * beta)
    return blocks


def wigner_from_rotation(rotations: torch.Tensor, lmax: int) -> torch.Tensor:
    """:func:`wigner_blocks` packed: ``(E, sum_l (2l+1)^2)``, each block row-major."""
    return torch.cat([block.reshape(block.shape[0], -1) for block in wigner_blocks(rotations, lmax)], dim=1)


def wigner_d(edge_vec: torch.Tensor, lmax: int) -> torch.Tensor:
    """Packed Wigner-D blocks ``(E, sum_l (2l+1)^2)`` of the rotations taking ``edge_vec`` to ``y``."""
    return wigner_from_rotation(rotation_to_axis(edge_vec, "y"), lmax)


def unpack_wigner(wigner: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """The blocks ``D_l`` ``(E, 2l+1, 2l+1)`` of a packed Wigner-D tensor."""
    return [
        wigner[:, wigner_offset(l) : wigner_offset(l + 1)].reshape(-1, 2 * l + 1, 2 * l + 1) for l in range(lmax + 1)
    ]


def rotate_to_edge(features: torch.Tensor, wigner: torch.Tensor, mmax: int) -> torch.Tensor:
    """Per-edge features ``(E, (L+1)^2, C)`` into the edge frame, m-major ``(E, K, C)``."""
    lmax = lmax_of_coefficients(features.shape[1])
    blocks = unpack_wigner(wigner, lmax)
    rotated = torch.cat([blocks[l] @ features[:, l * l : (l + 1) ** 2] for l in range(lmax + 1)], dim=1)
    return rotated[:, m_major_index(lmax, mmax, features.device)]


def rotate_from_edge(edge_feats: torch.Tensor, wigner: torch.Tensor) -> torch.Tensor:
    """m-major edge-frame features ``(E, K, C)`` back to ``(E, (L+1)^2, C)`` (missing m are zero)."""
    lmax = lmax_of_wigner(wigner.shape[1])
    mmax = mmax_of_edge_coefficients(edge_feats.shape[1], lmax)
    full = edge_feats.new_zeros(edge_feats.shape[0], (lmax + 1) ** 2, edge_feats.shape[2])
    full = full.index_copy(1, m_major_index(lmax, mmax, edge_feats.device), edge_feats)
    blocks = unpack_wigner(wigner, lmax)
    return torch.cat([blocks[l].transpose(1, 2) @ full[:, l * l : (l + 1) ** 2] for l in range(lmax + 1)], dim=1)


def edge_rotate_in(
    node_feats: torch.Tensor, wigner: torch.Tensor, edge_index: torch.Tensor, mmax: int, receivers: bool
) -> torch.Tensor:
    """Gather senders (and receivers, concatenated along channels), rotate, keep ``|m| <= mmax``."""
    rotated = rotate_to_edge(node_feats[edge_index[0]], wigner, mmax)
    if receivers:
        rotated = torch.cat([rotated, rotate_to_edge(node_feats[edge_index[1]], wigner, mmax)], dim=2)
    return rotated


def edge_rotate_out_scatter(
    edge_feats: torch.Tensor, wigner: torch.Tensor, edge_index: torch.Tensor, num_nodes: int
) -> torch.Tensor:
    """Rotate m-major edge features back and sum them at the receivers: ``(num_nodes, (L+1)^2, C)``."""
    messages = rotate_from_edge(edge_feats, wigner)
    return messages.new_zeros(num_nodes, *messages.shape[1:]).index_add(0, edge_index[1], messages)


def split_weights(
    weights: torch.Tensor, lmax: int, mmax: int, channels_in: int, channels_out: int
) -> list[tuple[torch.Tensor, ...]]:
    """Per order ``m``: ``(W0,)`` for ``m = 0`` and ``(W1, W2)`` otherwise, as 2D matrices."""
    result, offset = [], 0
    for m, _, n in m_blocks(lmax, mmax):
        rows, columns = n * channels_in, n * channels_out
        count = 1 if m == 0 else 2
        chunk = weights[offset : offset + count * rows * columns].reshape(count, rows, columns)
        result.append(tuple(chunk.unbind(0)))
        offset += count * rows * columns
    return result


def so2_linear(
    edge_feats: torch.Tensor,
    weights: torch.Tensor,
    radial: torch.Tensor | None,
    lmax: int,
    mmax: int,
    channels_out: int,
) -> torch.Tensor:
    """The per-``m`` maps ``y_m = (W1 + i W2) x_m`` on m-major edge features, after the radial scaling.

    With ``x_m = x_{+m} + i x_{-m}``: ``y_{+m} = x_{+m} W1 - x_{-m} W2``, ``y_{-m} = x_{+m} W2 +
    x_{-m} W1`` (row vectors), i.e. the block ``[[W1, -W2], [W2, W1]]`` acting on ``(x_{+m}, x_{-m})``.
    """
    num_edges, _, channels_in = edge_feats.shape
    if radial is not None:
        edge_feats = edge_feats * radial[:, radial_index(lmax, mmax, radial.device)]
    outputs = []
    for (m, offset, n), matrices in zip(
        m_blocks(lmax, mmax), split_weights(weights, lmax, mmax, channels_in, channels_out), strict=True
    ):
        if m == 0:
            outputs.append(
                (edge_feats[:, offset : offset + n].reshape(num_edges, -1) @ matrices[0]).reshape(num_edges, n, -1)
            )
            continue
        w1, w2 = matrices
        plus = edge_feats[:, offset : offset + n].reshape(num_edges, -1)
        minus = edge_feats[:, offset + n : offset + 2 * n].reshape(num_edges, -1)
        outputs.append((plus @ w1 - minus @ w2).reshape(num_edges, n, -1))
        outputs.append((plus @ w2 + minus @ w1).reshape(num_edges, n, -1))
    return torch.cat(outputs, dim=1)


def block_matrices(
    weights: torch.Tensor, lmax: int, mmax: int, channels_in: int, channels_out: int
) -> list[torch.Tensor]:
    """Per order: ``W0``, or ``[[W1, W2], [-W2, W1]]`` acting on the row vector ``[x_{+m} | x_{-m}]``."""
    return [stack_block(matrix) for matrix in split_weights(weights, lmax, mmax, channels_in, channels_out)]


def stack_block(matrix: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One order's GEMM matrix from its :func:`split_weights` entry: ``W0``, or ``[[W1, W2], [-W2, W1]]``."""
    if len(matrix) == 1:
        return matrix[0]
    w1, w2 = matrix
    return torch.cat([torch.cat([w1, w2], dim=1), torch.cat([-w2, w1], dim=1)], dim=0)


def so2_linear_blocks(
    edge_feats: torch.Tensor,
    weights: torch.Tensor,
    radial: torch.Tensor | None,
    lmax: int,
    mmax: int,
    channels_out: int,
) -> torch.Tensor:
    """:func:`so2_linear` with one GEMM per order: ``[x_{+m} | x_{-m}] @ [[W1, W2], [-W2, W1]]``.

    The same FLOPs as four half-size GEMMs, run faster. The input is cut with ``split`` (whose
    backward is one ``cat``, where a slice's backward zero-fills a full-size tensor per order)
    and the radial multipliers broadcast over ``+m`` and ``-m`` instead of being gathered.
    """
    num_edges, _, channels_in = edge_feats.shape
    blocks = m_blocks(lmax, mmax)
    pieces = edge_feats.split([n if m == 0 else 2 * n for m, _, n in blocks], dim=1)
    radials = radial.split([n for _, _, n in blocks], dim=1) if radial is not None else [None] * len(blocks)
    matrices = block_matrices(weights, lmax, mmax, channels_in, channels_out)
    outputs = []
    for (_, _, n), piece, scale, matrix in zip(blocks, pieces, radials, matrices, strict=True):
        if scale is not None:
            piece = (piece.unflatten(1, (-1, n)) * scale[:, None]).flatten(1, 2)
        outputs.append((piece.reshape(num_edges, -1) @ matrix).reshape(num_edges, -1, channels_out))
    return torch.cat(outputs, dim=1)


def so2_conv(
    node_feats: torch.Tensor,
    edge_vec: torch.Tensor,
    edge_index: torch.Tensor,
    num_nodes: int,
    weights: torch.Tensor,
    radial: torch.Tensor | None,
    lmax: int,
    mmax: int,
    channels_out: int,
) -> torch.Tensor:
    """Rotate in, SO(2) linear maps with radial modulation, rotate back, sum at receivers."""
    wigner = wigner_d(edge_vec, lmax)
    edge_feats = edge_rotate_in(node_feats, wigner, edge_index, mmax, receivers=False)
    messages = so2_linear(edge_feats, weights, radial, lmax, mmax, channels_out)
    return edge_rotate_out_scatter(messages, wigner, edge_index, num_nodes)
