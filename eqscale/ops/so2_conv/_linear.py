"""The per-``m`` SO(2) linear maps of the fused backends: one GEMM per order, no copies around it.

:func:`eqscale.ops.so2_conv.reference.so2_linear_blocks` under autograd spends about a third of
its time outside its GEMMs: the outputs are concatenated (and split again in the backward), the
gradients of the cut input are zero-filled and summed, and the radial scaling makes three
full-size passes. Here every GEMM reads its block of the m-major input in place (a row-strided
matrix) and writes its block of a preallocated output, forward and backward, so what remains
besides the GEMMs is one pass for the radial scaling forward and one backward (C++ kernels on
CPU tensors where the extension is built; three PyTorch passes backward elsewhere).

The maps of the orders ``m > 0`` are complex products ``(x_{+m} + i x_{-m})(W1 + i W2)``. Wide
ones use Gauss's three-multiplication form: three half-size products where the stacked
``[x_{+m} | x_{-m}] @ [[W1, W2], [-W2, W1]]`` costs four, forward, for the input gradient and
for the weight gradient alike (25% fewer FLOPs in those orders), at the price of two elementwise
passes per order, which is why narrow orders keep the stacked GEMM. The sums the three products
need are formed in the output's own rows before the GEMMs overwrite them. ``FlopCounterMode``
counts the products executed.

First-order gradients come from these GEMMs. When the backward itself is differentiated
(``create_graph=True``, e.g. training on forces), or under ``torch.compile`` (whose compiler
fuses the elementwise work itself), the differentiable reference composition runs instead.
"""

from __future__ import annotations

import functools

import torch

from eqscale.ops.so2_conv import cpu as _cpu
from eqscale.ops.so2_conv import reference as _reference
from eqscale.ops.so2_conv._layout import m_blocks

# Narrowest order (degrees times channels) whose map runs as three complex GEMMs: see _three_products.
THREE_PRODUCTS_MIN_WIDTH = 256


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
        if radial is not None and _radial_kernels(edge_feats):
            radial = radial.contiguous()
            scaled = getattr(torch.ops.eqscale, _cpu.RADIAL_OP_NAME)(edge_feats, radial, lmax, mmax)
        elif radial is not None:
            scaled = torch.empty_like(edge_feats)
            for (m, offset, n), scale in zip(blocks, _split_radial(radial, blocks), strict=True):
                torch.mul(_halves(edge_feats, offset, n, m), scale[:, None], out=_halves(scaled, offset, n, m))
        out = _empty(edge_feats, num_edges, edge_feats.shape[1], channels_out)
        for (m, offset, n), matrix in zip(
            blocks, _reference.split_weights(weights, lmax, mmax, channels_in, channels_out), strict=True
        ):
            if _three_products(m, n, channels_in, channels_out):
                _complex_product(*_pair(scaled, offset, n), *_pair(out, offset, n), *matrix)
            else:
                rows = n if m == 0 else 2 * n
                torch.mm(_rows(scaled, offset, rows), _reference.stack_block(matrix), out=_rows(out, offset, rows))
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
        matrices = _reference.split_weights(weights, lmax, mmax, channels_in, channels_out)
        grad_scaled = _empty(edge_feats, *edge_feats.shape) if need_feats or need_radial else None
        grad_weights = torch.empty_like(weights) if need_weights else None
        # Views into grad_weights, one (W0,) or (W1, W2) per order, in the flat layout.
        grad_matrices = (
            _reference.split_weights(grad_weights, lmax, mmax, channels_in, channels_out)
            if need_weights
            else [None] * len(blocks)
        )
        for (m, offset, n), matrix, grad_matrix in zip(blocks, matrices, grad_matrices, strict=True):
            if _three_products(m, n, channels_in, channels_out):
                _complex_backward(
                    _pair(scaled, offset, n),
                    _pair(grad_out, offset, n),
                    matrix,
                    None if grad_scaled is None else _pair(grad_scaled, offset, n),
                    grad_matrix,
                )
                continue
            rows = n if m == 0 else 2 * n
            upstream = _rows(grad_out, offset, rows)
            if grad_scaled is not None:
                torch.mm(upstream, _reference.stack_block(matrix).t(), out=_rows(grad_scaled, offset, rows))
            if grad_matrix is not None:
                _fold_weight_grad(grad_matrix, _rows(scaled, offset, rows).t() @ upstream)
        grad_feats = grad_radial = None
        if radial is None:
            grad_feats = grad_scaled if need_feats else None
        elif grad_scaled is not None:
            grad_feats, grad_radial = _radial_backward(
                grad_scaled, edge_feats, radial, lmax, mmax, need_feats, need_radial
            )
        return grad_feats, grad_weights, grad_radial, None, None, None


def _radial_backward(
    grad_scaled: torch.Tensor,
    edge_feats: torch.Tensor,
    radial: torch.Tensor,
    lmax: int,
    mmax: int,
    need_feats: bool,
    need_radial: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the features and of the radial multipliers from that of the scaled features."""
    if _radial_kernels(edge_feats):
        grad_feats, grad_radial = getattr(torch.ops.eqscale, _cpu.RADIAL_BACKWARD_OP_NAME)(
            grad_scaled, edge_feats, radial, lmax, mmax, need_feats, need_radial
        )
        return (grad_feats if need_feats else None), (grad_radial if need_radial else None)
    blocks = m_blocks(lmax, mmax)
    grad_feats = torch.empty_like(edge_feats) if need_feats else None
    grad_radial = torch.empty_like(radial) if need_radial else None
    grad_scales = _split_radial(grad_radial, blocks) if need_radial else [None] * len(blocks)
    for (m, offset, n), scale, grad_scale in zip(blocks, _split_radial(radial, blocks), grad_scales, strict=True):
        upstream = _halves(grad_scaled, offset, n, m)
        if need_feats:
            torch.mul(upstream, scale[:, None], out=_halves(grad_feats, offset, n, m))
        if grad_scale is not None:
            torch.sum(upstream * _halves(edge_feats, offset, n, m), dim=1, out=grad_scale)
    return grad_feats, grad_radial


@functools.cache
def _cpu_op_built(name: str) -> bool:
    """Whether ``eqscale._C`` is built and registers ``torch.ops.eqscale.<name>``."""
    return _cpu.load() and hasattr(torch.ops.eqscale, name)


def _radial_kernels(edge_feats: torch.Tensor) -> bool:
    """Whether the C++ radial-modulation kernels take these (CPU, float32/float64) features."""
    return (
        edge_feats.device.type == "cpu"
        and edge_feats.dtype in (torch.float32, torch.float64)
        and _cpu_op_built(_cpu.RADIAL_OP_NAME)
    )


def _split_radial(radial: torch.Tensor, blocks: list[tuple[int, int, int]]) -> tuple[torch.Tensor, ...]:
    """Views ``(E, n, C)`` of each order's multipliers (one row per ``m >= 0, l >= m``)."""
    return radial.split([n for _, _, n in blocks], dim=1)


def _three_products(m: int, n: int, channels_in: int, channels_out: int) -> bool:
    """Whether order ``m`` (``n`` degrees) runs as three complex GEMMs rather than one stacked GEMM.

    The two elementwise passes cost ``O(n C)`` per edge, the GEMM saved ``O(n^2 C^2)``: measured
    on a 2-core AVX-512 CPU (E = 30,000), three products are 8-10% faster than the stacked GEMM
    at ``n C = 256``, 12-15% at 384, even at 192 and 5-14% slower at 128.
    """
    return m > 0 and n * min(channels_in, channels_out) >= THREE_PRODUCTS_MIN_WIDTH


def _fold_weight_grad(grad_matrix: tuple[torch.Tensor, ...], block_grad: torch.Tensor) -> None:
    """Writes the gradient of one order's stacked GEMM matrix into its ``(W0,)`` or ``(W1, W2)`` views."""
    if len(grad_matrix) == 1:
        grad_matrix[0].copy_(block_grad)
        return
    grad_w1, grad_w2 = grad_matrix
    rows, columns = grad_w1.shape
    top, bottom = block_grad[:rows], block_grad[rows:]
    # [[W1, W2], [-W2, W1]]: W1 appears on the diagonal, W2 above it and, negated, below.
    torch.add(top[:, :columns], bottom[:, columns:], out=grad_w1)
    torch.sub(top[:, columns:], bottom[:, :columns], out=grad_w2)


def _pair(tensor: torch.Tensor, offset: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``+m`` and ``-m`` rows of one order of ``(E, K, C)`` as two ``(E, n * C)`` views."""
    return _rows(tensor, offset, n), _rows(tensor, offset + n, n)


def _complex_product(
    real: torch.Tensor,
    imag: torch.Tensor,
    out_real: torch.Tensor,
    out_imag: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    input_sum: torch.Tensor | None = None,
) -> None:
    """``out = (real + i imag) @ (w1 + i w2)`` in three GEMMs (Gauss) instead of four.

    ``out_real = (real + imag) w1 - imag (w1 + w2)`` and ``out_imag = (real + imag) w1 + real
    (w2 - w1)``. The sum ``real + imag`` (``input_sum`` when the caller has it) is formed in
    ``out_imag`` when the widths agree, read by the first GEMM, then overwritten.
    """
    if input_sum is None:
        input_sum = _scratch(out_imag, real)
        torch.add(real, imag, out=input_sum)
    torch.mm(input_sum, w1, out=out_real)
    torch.mm(real, w2 - w1, out=out_imag)
    out_imag.add_(out_real)
    out_real.addmm_(imag, w1 + w2, alpha=-1)


def _complex_backward(
    inputs: tuple[torch.Tensor, torch.Tensor],
    upstream: tuple[torch.Tensor, torch.Tensor],
    matrix: tuple[torch.Tensor, torch.Tensor],
    grad_inputs: tuple[torch.Tensor, torch.Tensor] | None,
    grad_matrix: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    """Gradients of :func:`_complex_product` for one order, each in three GEMMs.

    With ``x = a + i b`` the input, ``g = g_r + i g_i`` the upstream gradient and ``W = W1 + i W2``:
    the input gradient is ``g conj(W)^T``, a complex product of the same form; the weight gradient
    is ``conj(x)^T g``: ``gW2 = a^T g_i - b^T g_r`` and ``gW1 = (a + b)^T (g_r + g_i) - a^T g_i -
    b^T g_r``. The two sums live in the rows of ``grad_inputs`` until its GEMMs overwrite them.
    """
    (a, b), (g_real, g_imag), (w1, w2) = inputs, upstream, matrix
    grad_real, grad_imag = (None, None) if grad_inputs is None else grad_inputs
    upstream_sum = _scratch(grad_imag, g_real)
    torch.add(g_real, g_imag, out=upstream_sum)
    if grad_matrix is not None:
        grad_w1, grad_w2 = grad_matrix
        input_sum = _scratch(grad_real, a)
        torch.add(a, b, out=input_sum)
        a_g_imag, b_g_real = a.t() @ g_imag, b.t() @ g_real
        torch.mm(input_sum.t(), upstream_sum, out=grad_w1)
        grad_w1.sub_(a_g_imag).sub_(b_g_real)
        torch.sub(a_g_imag, b_g_real, out=grad_w2)
    if grad_inputs is not None:
        # conj(W)^T = W1^T - i W2^T
        _complex_product(g_real, g_imag, grad_real, grad_imag, w1.t(), -w2.t(), input_sum=upstream_sum)


def _scratch(rows: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``rows`` (output rows not yet written) as room for a sum shaped like ``like``, else a new tensor."""
    return rows if rows is not None and rows.shape == like.shape else _empty(like, *like.shape)


def _empty(like: torch.Tensor, *size: int) -> torch.Tensor:
    """An uninitialised tensor like ``like``; on CPU from the C++ kernels' buffer pool.

    A fresh output of tens of MB faults its pages in inside the GEMM that first writes it, on
    both threads at once; reused pages made a forward+backward 5-20% faster (2 cores, E =
    30,000, L = 2-6).
    """
    if like.device.type == "cpu" and _cpu_op_built(_cpu.EMPTY_OP_NAME):
        return getattr(torch.ops.eqscale, _cpu.EMPTY_OP_NAME)(like, list(size))
    return like.new_empty(size)


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
