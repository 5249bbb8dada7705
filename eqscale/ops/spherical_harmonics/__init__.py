"""Real spherical harmonics of any degree, e3nn's basis, with reference, C++ and Triton backends.

Each fused backend provides three operators on ``(N, 3)`` contiguous vectors, registered with
``torch.library`` under ``torch.ops.eqscale``: the forward, its backward, and the double backward
(the backward of the backward, needed for training on forces). Autograd connects the three, so
``torch.autograd.grad(..., create_graph=True)`` works to second order on every backend. Fake
implementations let ``torch.compile(fullgraph=True)`` and ``torch.export`` trace them, and a FLOP
formula makes ``FlopCounterMode`` count them.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from eqscale import backends
from eqscale.o3._spherical_harmonics import (
    check_lmax,
    check_normalization,
    num_sh_components,
    sh_coefficients,
    spherical_harmonics_flops,
)
from eqscale.ops.spherical_harmonics import cpu as _cpu
from eqscale.ops.spherical_harmonics import reference as _reference

__all__ = ["spherical_harmonics"]

_FUSED_DTYPES = (torch.float32, torch.float64)
# The fused kernels run the recursion in the vectors' dtype; (2 lmax - 1)!! overflows float32 from
# lmax = 29 on, before the prefactor that would bring it back is applied.
_MAX_FLOAT32_LMAX = 28


def spherical_harmonics(
    vectors: torch.Tensor,
    lmax: int,
    normalize: bool = True,
    normalization: str = "component",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Real spherical harmonics of all degrees ``0..lmax``, concatenated in e3nn's order.

    Equal to ``e3nn.o3.spherical_harmonics(list(range(lmax + 1)), vectors, normalize,
    normalization)`` for any ``lmax`` (e3nn itself stops at 11).

    Args:
        vectors: ``(..., 3)`` float tensor.
        lmax: maximum degree, ``>= 0``.
        normalize: project the vectors on the unit sphere first; without it the result is the
            solid harmonic ``|x|^l Y(x / |x|)``.
        normalization: ``"component"`` (``|Y_l|^2 = 2l+1``), ``"norm"`` (``|Y_l| = 1``) or
            ``"integral"`` (orthonormal on the sphere).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``; ``None`` uses the current
            choice of :mod:`eqscale.backends`.

    Returns:
        ``(..., (lmax + 1)^2)`` tensor with the dtype and device of ``vectors``.

    Example:
        >>> import torch, eqscale
        >>> sh = eqscale.ops.spherical_harmonics(torch.tensor([[0.0, 0.0, 2.0]]), lmax=1)
        >>> sh
        tensor([[1.0000, 0.0000, 0.0000, 1.7321]])
    """
    _check_vectors(vectors)
    check_lmax(lmax)
    check_normalization(normalization)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    chosen = backends.resolve(vectors.device, backend)
    if chosen == "reference":
        return _reference.spherical_harmonics(vectors, lmax, normalize, normalization)
    if vectors.dtype not in _FUSED_DTYPES:
        raise TypeError(
            f"vectors must be float32 or float64 for the {chosen!r} backend, got {vectors.dtype}; "
            "use backend='reference' for other dtypes"
        )
    if vectors.dtype == torch.float32 and lmax > _MAX_FLOAT32_LMAX:
        raise ValueError(
            f"lmax must be <= {_MAX_FLOAT32_LMAX} for float32 vectors on the {chosen!r} backend (the recursion "
            f"overflows float32 beyond), got {lmax}; use float64 vectors or backend='reference'"
        )
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    forward, _, _ = _kernels(chosen)
    flat = vectors.reshape(-1, 3).contiguous()
    coefficients = sh_coefficients(lmax, normalization, device=vectors.device)
    return forward(flat, coefficients, lmax).reshape(*vectors.shape[:-1], num_sh_components(lmax))


def _check_vectors(vectors: object) -> None:
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"vectors must be a torch.Tensor, got {type(vectors).__name__}")
    if not vectors.is_floating_point():
        raise TypeError(f"vectors must be a floating-point tensor, got {vectors.dtype}")
    if vectors.dim() < 1 or vectors.shape[-1] != 3:
        raise ValueError(f"vectors must have shape (..., 3), got {tuple(vectors.shape)}")


def _kernels(backend: str) -> tuple:
    ops = torch.ops.eqscale
    names = _cpu.OP_NAMES if backend == "cpu" else _TRITON_OP_NAMES
    return tuple(getattr(ops, name).default for name in names)


def _triton_op_names() -> tuple[str, str, str]:
    from eqscale.ops.spherical_harmonics import triton as _triton  # noqa: PLC0415 - optional dependency

    return _triton.OP_NAMES


def _register(op_names: tuple[str, str, str], *, with_fake: bool) -> None:
    """Fake impls, autograd to second order and FLOP formulas for one backend's three operators."""
    forward, backward, double_backward = (f"eqscale::{name}" for name in op_names)
    # register_flop_formula takes the overload packets (torch.ops.eqscale.name), the others either.
    forward_op, backward_op, double_backward_op = (getattr(torch.ops.eqscale, name) for name in op_names)

    if with_fake:

        @torch.library.register_fake(forward)
        def _forward_fake(vectors, coefficients, lmax):
            return vectors.new_empty(vectors.shape[0], num_sh_components(lmax))

        @torch.library.register_fake(backward)
        def _backward_fake(vectors, grad_sh, coefficients, lmax):
            return torch.empty_like(vectors)

        @torch.library.register_fake(double_backward)
        def _double_backward_fake(vectors, grad_sh, grad_grad_vectors, coefficients, lmax):
            return torch.empty_like(grad_sh), torch.empty_like(vectors)

    def forward_setup(ctx, inputs, output):
        vectors, coefficients, lmax = inputs
        ctx.save_for_backward(vectors, coefficients)
        ctx.lmax = lmax

    def forward_backward(ctx, grad_sh):
        vectors, coefficients = ctx.saved_tensors
        return backward_op(vectors, grad_sh.contiguous(), coefficients, ctx.lmax), None, None

    def backward_setup(ctx, inputs, output):
        vectors, grad_sh, coefficients, lmax = inputs
        ctx.save_for_backward(vectors, grad_sh, coefficients)
        ctx.lmax = lmax

    def backward_backward(ctx, grad_grad_vectors):
        vectors, grad_sh, coefficients = ctx.saved_tensors
        grad_grad_sh, grad_vectors = double_backward_op(
            vectors, grad_sh, grad_grad_vectors.contiguous(), coefficients, ctx.lmax
        )
        return grad_vectors, grad_grad_sh, None, None

    def third_order(ctx, *grads):
        raise NotImplementedError(
            "third derivatives of spherical_harmonics are not implemented by the fused backends; "
            "use backend='reference'"
        )

    torch.library.register_autograd(forward, forward_backward, setup_context=forward_setup)
    torch.library.register_autograd(backward, backward_backward, setup_context=backward_setup)
    torch.library.register_autograd(double_backward, third_order, setup_context=lambda ctx, inputs, output: None)

    @register_flop_formula(forward_op)
    def _forward_flops(vectors_shape, coefficients_shape, lmax, *args, out_shape=None, **kwargs) -> int:
        return spherical_harmonics_flops(vectors_shape[0], lmax)

    @register_flop_formula(backward_op)
    def _backward_flops(vectors_shape, grad_shape, coefficients_shape, lmax, *args, **kwargs) -> int:
        # The recursion carried with first-order jets (value + 3 partials) and the contraction.
        return 4 * spherical_harmonics_flops(vectors_shape[0], lmax) + 6 * vectors_shape[0] * grad_shape[1]

    @register_flop_formula(double_backward_op)
    def _double_backward_flops(vectors_shape, grad_shape, *args, **kwargs) -> int:
        # Second-order jets (value + 3 + 6 partials) and two contractions.
        return 10 * spherical_harmonics_flops(vectors_shape[0], args[-1]) + 24 * vectors_shape[0] * grad_shape[1]


if _cpu.load():
    _register(_cpu.OP_NAMES, with_fake=True)
# Resolved once at import: torch.compile would trace the import inside a cached lookup.
_TRITON_OP_NAMES = _triton_op_names() if backends.triton_available() else ()
if _TRITON_OP_NAMES:
    # The Triton operators' Python bodies double as their fake impls (eqscale._kernels).
    _register(_TRITON_OP_NAMES, with_fake=False)
