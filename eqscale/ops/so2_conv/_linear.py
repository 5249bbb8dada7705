"""The per-``m`` SO(2) linear maps of the fused backends: one GEMM per order, no copies around it.

:func:`eqscale.ops.so2_conv.reference.so2_linear_blocks` under autograd spends about a third of
its time outside its GEMMs: the outputs are concatenated (and split again in the backward), the
gradients of the cut input are zero-filled and summed, and the radial scaling makes three
full-size passes. Here every GEMM reads its block of the m-major input in place (a row-strided
matrix) and writes its block of a preallocated output, forward and backward, so what remains
besides the GEMMs is one pass for the radial scaling forward and two backward.

First-order gradients come from these GEMMs. When the backward itself is differentiated
(``create_graph=True``, e.g. training on forces), or under ``torch.compile`` (whose compiler
fuses the elementwise work itself), the differentiable reference composition runs instead.
"""

from __future__ import annotations

import torch

from eqscale.ops.so2_conv import reference as _reference
from eqscale.ops.so2_conv._layout import m_blocks


def so2_linear(
    edge_feats: torch.Tensor,
    weights: torch.Tensor,
    radial: torch.Tensor | None,
    lmax: int,
    mmax: int,
    channels_out: int,
) -> torch.Tensor:
    """:func:`eqscale.ops.so2_conv.reference.so2_linear` with one in-place GEMM per order.

    Args:
        edge_feats: ``(E, num_m_coefficients(lmax, mmax), C_in)`` m-major edge-frame features.
        weights: flat SO(2) weights (layout in :mod:`eqscale.ops.so2_conv._layout`).
        radial: ``(E, num_radial(lmax, mmax), C_in)`` multipliers, or None.
        lmax: highest degree.
        mmax: highest order kept.
        channels_out: ``C_out``.

    Returns:
        ``(E, num_m_coefficients(lmax, mmax), C_out)``.
    """
    if torch.compiler.is_compiling():
        return _reference.so2_linear_blocks(edge_feats, weights, radial, lmax, mmax, channels_out)
    return _SO2Linear.apply(edge_feats.contiguous(), weights, radial, lmax, mmax, channels_out)


def _rows(tensor: torch.Tensor, offset: int, count: int) -> torch.Tensor:
    """Rows ``offset:offset + count`` of every edge of ``(E, K, C)`` as an ``(E, count * C)`` view."""
    return tensor[:, offset : offset + count].flatten(1, 2)


def _halves(tensor: torch.Tensor, offset: int, n: int, m: int) -> torch.Tensor:
    """The ``(+m, -m)`` rows of one order as ``(E, 2, n, C)`` (``(E, 1, n, C)`` for ``m = 0``)."""
    return tensor[:, offset : offset + (n if m == 0 else 2 * n)].unflatten(1, (-1, n))


class _SO2Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edge_feats, weights, radial, lmax, mmax, channels_out):
        num_edges, _, channels_in = edge_feats.shape
        blocks = m_blocks(lmax, mmax)
        scaled = edge_feats
        if radial is not None:
            scaled = torch.empty_like(edge_feats)
            for (m, offset, n), start in zip(blocks, _radial_offsets(blocks), strict=True):
                torch.mul(
                    _halves(edge_feats, offset, n, m),
                    radial[:, None, start : start + n],
                    out=_halves(scaled, offset, n, m),
                )
        out = edge_feats.new_empty(num_edges, edge_feats.shape[1], channels_out)
        for (m, offset, n), matrix in zip(
            blocks, _reference.block_matrices(weights, lmax, mmax, channels_in, channels_out), strict=True
        ):
            rows = n if m == 0 else 2 * n
            torch.mm(_rows(scaled, offset, rows), matrix, out=_rows(out, offset, rows))
        ctx.save_for_backward(edge_feats, weights, radial, scaled if radial is not None else None)
        ctx.sizes = (lmax, mmax, channels_out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        edge_feats, weights, radial, scaled = ctx.saved_tensors
        lmax, mmax, channels_out = ctx.sizes
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, edge_feats, weights, radial, grad_out)
        scaled = edge_feats if scaled is None else scaled
        need_feats, need_weights, need_radial = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()
        num_edges, _, channels_in = edge_feats.shape
        blocks = m_blocks(lmax, mmax)
        matrices = _reference.block_matrices(weights, lmax, mmax, channels_in, channels_out)
        grad_scaled = torch.empty_like(edge_feats) if need_feats or need_radial else None
        grad_weights = torch.empty_like(weights) if need_weights else None
        weight_offset = 0
        for (m, offset, n), matrix in zip(blocks, matrices, strict=True):
            rows = n if m == 0 else 2 * n
            upstream = _rows(grad_out, offset, rows)
            if grad_scaled is not None:
                torch.mm(upstream, matrix.t(), out=_rows(grad_scaled, offset, rows))
            if grad_weights is not None:
                weight_offset = _write_weight_grad(
                    grad_weights, weight_offset, _rows(scaled, offset, rows).t() @ upstream, m
                )
        grad_feats = grad_radial = None
        if radial is None:
            grad_feats = grad_scaled if need_feats else None
        else:
            if need_feats:
                grad_feats = torch.empty_like(edge_feats)
            if need_radial:
                grad_radial = torch.empty_like(radial)
            for (m, offset, n), start in zip(blocks, _radial_offsets(blocks), strict=True):
                upstream = _halves(grad_scaled, offset, n, m)
                if need_feats:
                    scale = radial[:, None, start : start + n]
                    torch.mul(upstream, scale, out=_halves(grad_feats, offset, n, m))
                if need_radial:
                    torch.sum(
                        upstream * _halves(edge_feats, offset, n, m), dim=1, out=grad_radial[:, start : start + n]
                    )
        return grad_feats, grad_weights, grad_radial, None, None, None


def _radial_offsets(blocks: list[tuple[int, int, int]]) -> list[int]:
    """Row of each order's first multiplier in the radial layout (one row per ``m >= 0, l >= m``)."""
    offsets, start = [], 0
    for _, _, n in blocks:
        offsets.append(start)
        start += n
    return offsets


def _write_weight_grad(grad_weights: torch.Tensor, offset: int, block_grad: torch.Tensor, m: int) -> int:
    """Folds the gradient of one order's GEMM matrix into ``W0`` or ``(W1, W2)``; the next offset."""
    if m == 0:
        grad_weights[offset : offset + block_grad.numel()] = block_grad.flatten()
        return offset + block_grad.numel()
    rows, columns = block_grad.shape[0] // 2, block_grad.shape[1] // 2
    top, bottom = block_grad[:rows], block_grad[rows:]
    size = rows * columns
    # [[W1, W2], [-W2, W1]]: W1 appears on the diagonal, W2 above it and, negated, below.
    grad_weights[offset : offset + size] = (top[:, :columns] + bottom[:, columns:]).flatten()
    grad_weights[offset + size : offset + 2 * size] = (top[:, columns:] - bottom[:, :columns]).flatten()
    return offset + 2 * size


def _differentiable_backward(ctx, edge_feats, weights, radial, grad_out):
    """The vector-Jacobian product through the reference composition, itself differentiable."""
    lmax, mmax, channels_out = ctx.sizes
    inputs = [t for t, needed in zip((edge_feats, weights, radial), ctx.needs_input_grad[:3], strict=True) if needed]
    with torch.enable_grad():
        # Recomputed from the saved tensors themselves, so the result stays connected to their
        # history for higher derivatives.
        output = _reference.so2_linear_blocks(edge_feats, weights, radial, lmax, mmax, channels_out)
        grads = torch.autograd.grad(output, inputs, grad_out, create_graph=True)
    result, position = [], 0
    for needed in ctx.needs_input_grad[:3]:
        result.append(grads[position] if needed else None)
        position += needed
    return (*result, None, None, None)
