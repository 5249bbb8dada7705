"""Triton kernels for real spherical harmonics: forward, backward and double backward.

The three kernels run the recursion of :mod:`eqscale.o3._spherical_harmonics` (the spec is
``solid_harmonics_reference``) on ``(N, 3)`` contiguous vectors that are *not* normalised here,
with the per-component prefactors ``coefficients`` (``(K,)`` float64, ``K = (LMAX + 1)^2``)
applied as each column is produced. One program handles ``BLOCK_N`` vectors (one lane per
vector); ``LMAX`` is a ``tl.constexpr`` so the recursion is unrolled with ``tl.static_range`` and
every recursion constant is folded at compile time.

Derivatives are forward-mode jets carried through the same recursion, selected by the
``ORDER`` constexpr, so the recursion is written once (:func:`_sh_block`):

- ``ORDER = 0``: ``(f,)``;
- ``ORDER = 1``: ``(f, df/dv0, df/dv1, df/dv2)``;
- ``ORDER = 2``: a dual number over order-1 jets, ``(J, J_G)`` flattened to 8 entries, where
  ``J_G`` is the derivative of the order-1 jet ``J`` along the direction ``G`` (the incoming
  ``grad_grad_vectors``): ``(f, grad f, grad f . G, H G)``. The double backward needs exactly
  the Hessian-vector product ``H G``, so carrying ``H G`` (3 entries) rather than the 6 entries
  of ``H`` saves registers and multiplications.

Each output column is stored (forward), or its ``grad_sh`` column is loaded and contracted
(backward), as soon as the column is computed, so no ``(N, 3, K)`` intermediate exists.

Compile time grows steeply with ``LMAX``: the unrolled body grows like ``LMAX^2`` and Triton's
coalescing pass, which dominates, costs about (number of loads and stores) x (body size). For an
sm_90 target on a busy 2-core CPU: seconds per kernel up to ``LMAX = 3``, 10-15 s for the double
backward at ``LMAX = 4``, about 3 minutes at ``LMAX = 8``. Triton caches compiled kernels on disk
per ``(LMAX, dtype)``.
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK_N = 128
"""Vectors per program: one per lane with Triton's default of 4 warps."""


def grid(num_vectors: int, block_n: int = BLOCK_N) -> tuple[int]:
    """Launch grid: one program per ``block_n`` vectors."""
    return (triton.cdiv(num_vectors, block_n),)


# --- jet algebra -----------------------------------------------------------------------------
# Jets are tuples indexed with constant integers and rebuilt explicitly: slices, comprehensions
# and tuple concatenation are avoided to stay within what older Triton 3.x compilers accept.


@triton.jit
def _mul(a, b, ORDER: tl.constexpr):
    """Product rule at any order."""
    if ORDER == 0:
        return (a[0] * b[0],)
    elif ORDER == 1:
        return (
            a[0] * b[0],
            a[0] * b[1] + a[1] * b[0],
            a[0] * b[2] + a[2] * b[0],
            a[0] * b[3] + a[3] * b[0],
        )
    else:
        # Dual numbers over order-1 jets, (A, A') (B, B') = (A B, A B' + A' B), written out
        # rather than composed from an order-1 helper: each nested call costs the interpreter
        # (which the CPU tests use) far more than the arithmetic.
        return (
            a[0] * b[0],
            a[0] * b[1] + a[1] * b[0],
            a[0] * b[2] + a[2] * b[0],
            a[0] * b[3] + a[3] * b[0],
            a[0] * b[4] + a[4] * b[0],
            a[0] * b[5] + a[5] * b[0] + a[4] * b[1] + a[1] * b[4],
            a[0] * b[6] + a[6] * b[0] + a[4] * b[2] + a[2] * b[4],
            a[0] * b[7] + a[7] * b[0] + a[4] * b[3] + a[3] * b[4],
        )


@triton.jit
def _lincomb(a, alpha, b, beta, ORDER: tl.constexpr):
    """``alpha * a + beta * b`` for jets ``a``, ``b`` and scalars ``alpha``, ``beta``."""
    if ORDER == 0:
        return (alpha * a[0] + beta * b[0],)
    elif ORDER == 1:
        return (
            alpha * a[0] + beta * b[0],
            alpha * a[1] + beta * b[1],
            alpha * a[2] + beta * b[2],
            alpha * a[3] + beta * b[3],
        )
    else:
        return (
            alpha * a[0] + beta * b[0],
            alpha * a[1] + beta * b[1],
            alpha * a[2] + beta * b[2],
            alpha * a[3] + beta * b[3],
            alpha * a[4] + beta * b[4],
            alpha * a[5] + beta * b[5],
            alpha * a[6] + beta * b[6],
            alpha * a[7] + beta * b[7],
        )


@triton.jit
def _scale(a, alpha, ORDER: tl.constexpr):
    """``alpha * a`` for a jet ``a`` and a scalar ``alpha``."""
    if ORDER == 0:
        return (alpha * a[0],)
    elif ORDER == 1:
        return (alpha * a[0], alpha * a[1], alpha * a[2], alpha * a[3])
    else:
        return (
            alpha * a[0],
            alpha * a[1],
            alpha * a[2],
            alpha * a[3],
            alpha * a[4],
            alpha * a[5],
            alpha * a[6],
            alpha * a[7],
        )


@triton.jit
def _constant(value, zero, ORDER: tl.constexpr):
    """Jet of a quantity that does not depend on the vector."""
    if ORDER == 0:
        return (value,)
    elif ORDER == 1:
        return (value, zero, zero, zero)
    else:
        return (value, zero, zero, zero, zero, zero, zero, zero)


@triton.jit
def _coordinate(value, direction, zero, one, AXIS: tl.constexpr, ORDER: tl.constexpr):
    """Jet of the input coordinate ``v[AXIS]``; ``direction`` is ``G[AXIS]``."""
    d0 = one if AXIS == 0 else zero
    d1 = one if AXIS == 1 else zero
    d2 = one if AXIS == 2 else zero
    if ORDER == 0:
        return (value,)
    elif ORDER == 1:
        return (value, d0, d1, d2)
    else:
        # A coordinate is linear: the derivative of its gradient along G vanishes.
        return (value, d0, d1, d2, direction, zero, zero, zero)


# --- the recursion ---------------------------------------------------------------------------


@triton.jit
def _emit(y, column: tl.constexpr, acc, coefficients_ptr, grad_sh_ptr, out_ptr, rows, mask,
          K: tl.constexpr, ORDER: tl.constexpr):
    """Consumes column ``column`` (its jet ``y`` without prefactor) and returns the new ``acc``.

    ``ORDER = 0`` stores the value into ``out``. ``ORDER = 1`` adds ``grad_sh[:, column]`` times
    the gradient to ``acc``. ``ORDER = 2`` stores the derivative along ``G`` into ``out``
    (``grad_grad_sh``) and adds ``grad_sh[:, column]`` times ``H G`` to ``acc``.
    """
    coefficient = tl.load(coefficients_ptr + column).to(y[0].dtype)
    offsets = rows * K + column
    if ORDER == 0:
        tl.store(out_ptr + offsets, y[0] * coefficient, mask=mask)
        return acc
    elif ORDER == 1:
        g = tl.load(grad_sh_ptr + offsets, mask=mask, other=0.0) * coefficient
        return (acc[0] + g * y[1], acc[1] + g * y[2], acc[2] + g * y[3])
    else:
        tl.store(out_ptr + offsets, y[4] * coefficient, mask=mask)
        g = tl.load(grad_sh_ptr + offsets, mask=mask, other=0.0) * coefficient
        return (acc[0] + g * y[5], acc[1] + g * y[6], acc[2] + g * y[7])


@triton.jit
def _emit_degree(q, cos, sin, acc, coefficients_ptr, grad_sh_ptr, out_ptr, rows, mask,
                 DEGREE: tl.constexpr, M: tl.constexpr, LMAX: tl.constexpr, ORDER: tl.constexpr):
    """Consumes the columns ``(DEGREE, +-M)`` from ``Q[DEGREE, M]`` and ``(c_M, s_M)``."""
    K: tl.constexpr = (LMAX + 1) * (LMAX + 1)
    center: tl.constexpr = DEGREE * DEGREE + DEGREE
    if M == 0:
        acc = _emit(q, center, acc, coefficients_ptr, grad_sh_ptr, out_ptr, rows, mask, K, ORDER)
    else:
        acc = _emit(_mul(q, cos, ORDER), center + M, acc, coefficients_ptr, grad_sh_ptr, out_ptr,
                    rows, mask, K, ORDER)
        acc = _emit(_mul(q, sin, ORDER), center - M, acc, coefficients_ptr, grad_sh_ptr, out_ptr,
                    rows, mask, K, ORDER)
    return acc


@triton.jit
def _sh_block(vectors_ptr, coefficients_ptr, grad_sh_ptr, direction_ptr, out_ptr, out_vectors_ptr,
              num_vectors, LMAX: tl.constexpr, ORDER: tl.constexpr, BLOCK_N: tl.constexpr):
    """The recursion for one block of vectors, shared by the three kernels.

    Pointers an order does not use are never dereferenced (any pointer may be passed for them).
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = rows < num_vectors
    # int64 offsets: N * K exceeds 2^31 for a few million vectors at high degree.
    rows = rows.to(tl.int64)
    v0 = tl.load(vectors_ptr + rows * 3 + 0, mask=mask, other=0.0)
    v1 = tl.load(vectors_ptr + rows * 3 + 1, mask=mask, other=0.0)
    v2 = tl.load(vectors_ptr + rows * 3 + 2, mask=mask, other=0.0)
    zero = tl.zeros_like(v0)
    one = zero + 1.0
    if ORDER == 2:
        g0 = tl.load(direction_ptr + rows * 3 + 0, mask=mask, other=0.0)
        g1 = tl.load(direction_ptr + rows * 3 + 1, mask=mask, other=0.0)
        g2 = tl.load(direction_ptr + rows * 3 + 2, mask=mask, other=0.0)
    else:
        g0 = zero
        g1 = zero
        g2 = zero

    # e3nn's polar axis is y: (x', y', z') = (v2, v0, v1).
    x = _coordinate(v2, g2, zero, one, 2, ORDER)
    y = _coordinate(v0, g0, zero, one, 0, ORDER)
    z = _coordinate(v1, g1, zero, one, 1, ORDER)
    r2 = _lincomb(_lincomb(_mul(x, x, ORDER), 1.0, _mul(y, y, ORDER), 1.0, ORDER), 1.0,
                  _mul(z, z, ORDER), 1.0, ORDER)

    acc = (zero, zero, zero)
    cos = x  # (c_1, s_1) = (x', y'); at m = 0 they are not read
    sin = y
    double_factorial = 1.0  # (2m - 1)!!, a compile-time constant
    for m in tl.static_range(LMAX + 1):
        if m > 1:
            next_cos = _lincomb(_mul(x, cos, ORDER), 1.0, _mul(y, sin, ORDER), -1.0, ORDER)
            sin = _lincomb(_mul(x, sin, ORDER), 1.0, _mul(y, cos, ORDER), 1.0, ORDER)
            cos = next_cos
        if m > 0:
            double_factorial = double_factorial * (2 * m - 1)
        q_previous = _constant(zero + double_factorial, zero, ORDER)  # Q[m, m]
        acc = _emit_degree(q_previous, cos, sin, acc, coefficients_ptr, grad_sh_ptr, out_ptr, rows,
                           mask, m, m, LMAX, ORDER)
        if m < LMAX:
            q = _scale(z, (2 * m + 1) * double_factorial, ORDER)  # Q[m + 1, m]
            acc = _emit_degree(q, cos, sin, acc, coefficients_ptr, grad_sh_ptr, out_ptr, rows, mask,
                               m + 1, m, LMAX, ORDER)
            for degree in tl.static_range(m + 2, LMAX + 1):
                # Multiplying by 1 / (l - m), folded at compile time, instead of dividing.
                q_next = _lincomb(
                    _mul(z, q, ORDER), (2 * degree - 1) / (degree - m),
                    _mul(r2, q_previous, ORDER), -(degree + m - 1) / (degree - m),
                    ORDER,
                )
                q_previous = q
                q = q_next
                acc = _emit_degree(q, cos, sin, acc, coefficients_ptr, grad_sh_ptr, out_ptr, rows,
                                   mask, degree, m, LMAX, ORDER)

    if ORDER > 0:
        tl.store(out_vectors_ptr + rows * 3 + 0, acc[0], mask=mask)
        tl.store(out_vectors_ptr + rows * 3 + 1, acc[1], mask=mask)
        tl.store(out_vectors_ptr + rows * 3 + 2, acc[2], mask=mask)


# --- kernels ---------------------------------------------------------------------------------


@triton.jit
def spherical_harmonics_fwd_kernel(vectors_ptr, coefficients_ptr, sh_ptr, num_vectors,
                                   LMAX: tl.constexpr, BLOCK_N: tl.constexpr):
    """``sh[n, k] = Y_k(v[n])``: vectors ``(N, 3)``, coefficients ``(K,)`` fp64, sh ``(N, K)``."""
    _sh_block(vectors_ptr, coefficients_ptr, vectors_ptr, vectors_ptr, sh_ptr, vectors_ptr,
              num_vectors, LMAX, 0, BLOCK_N)


@triton.jit
def spherical_harmonics_bwd_kernel(vectors_ptr, grad_sh_ptr, coefficients_ptr, grad_vectors_ptr,
                                   num_vectors, LMAX: tl.constexpr, BLOCK_N: tl.constexpr):
    """``grad_vectors[n, i] = sum_k grad_sh[n, k] dY_k/dv_i``."""
    _sh_block(vectors_ptr, coefficients_ptr, grad_sh_ptr, vectors_ptr, vectors_ptr,
              grad_vectors_ptr, num_vectors, LMAX, 1, BLOCK_N)


@triton.jit
def spherical_harmonics_bwd_bwd_kernel(vectors_ptr, grad_sh_ptr, grad_grad_vectors_ptr,
                                       coefficients_ptr, grad_grad_sh_ptr, grad_vectors_ptr,
                                       num_vectors, LMAX: tl.constexpr, BLOCK_N: tl.constexpr):
    """The double backward, with ``G = grad_grad_vectors``.

    ``grad_grad_sh[n, k] = sum_j dY_k/dv_j G[n, j]`` and
    ``grad_vectors[n, i] = sum_k grad_sh[n, k] sum_j d2Y_k/dv_i dv_j G[n, j]``.
    """
    _sh_block(vectors_ptr, coefficients_ptr, grad_sh_ptr, grad_grad_vectors_ptr, grad_grad_sh_ptr,
              grad_vectors_ptr, num_vectors, LMAX, 2, BLOCK_N)
