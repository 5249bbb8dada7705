"""Packed Wigner-D blocks per backend: the C++ recursion on ``cpu``, the reference elsewhere.

Schemas (``csrc/ops.cpp``, kernels in ``csrc/cpu/so2_wigner.cpp``)::

    so2_wigner_from_rotation(Tensor rotations, int lmax) -> Tensor
    so2_wigner_from_rotation_backward(Tensor rotations, Tensor grad, int lmax) -> Tensor

The first is :func:`reference.wigner_from_rotation` of contiguous float32/float64 rotations
``(E, 3, 3)``; the second its vector-Jacobian product, ``grad (E, sum_l (2l+1)^2)`` to
``(E, 3, 3)``. Both take ``lmax <= 64``.

Derivatives: a first-order backward is the C++ VJP. A backward that must itself be
differentiable (``create_graph=True``, as when training on forces) differentiates the reference
recursion with autograd instead, which autograd can differentiate again: every derivative order is
exact, and only that path pays the reference's cost.
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import register_flop_formula

from eqscale import _extension
from eqscale.o3._wigner import rotation_to_axis
from eqscale.ops.so2_conv import reference as _reference
from eqscale.ops.so2_conv._layout import wigner_numel

OP_NAME = "so2_wigner_from_rotation"
BACKWARD_OP_NAME = "so2_wigner_from_rotation_backward"


def wigner_d(edge_vec: torch.Tensor, lmax: int, backend: str) -> torch.Tensor:
    """Packed Wigner-D blocks of the rotations taking ``edge_vec`` to ``y`` on a resolved backend.

    Args:
        edge_vec: ``(E, 3)`` checked non-zero edge vectors.
        lmax: checked maximum degree (``<= 64`` for ``"cpu"``).
        backend: ``"reference"``, ``"cpu"`` or ``"triton"`` (the last has no kernel of its own and
            uses the reference recursion).

    Returns:
        ``(E, sum_l (2l+1)^2)``, differentiable to any order with respect to ``edge_vec``.

    Example:
        >>> import torch
        >>> wigner_d(torch.randn(5, 3), 2, "reference").shape
        torch.Size([5, 35])
    """
    rotations = rotation_to_axis(edge_vec, "y")
    if backend == "cpu" and _CPU_KERNELS:
        return torch.ops.eqscale.so2_wigner_from_rotation(rotations.contiguous(), lmax)
    return _reference.wigner_from_rotation(rotations, lmax)


@functools.cache
def _terms_per_degree(l: int) -> int:
    """Non-zero terms of one step of the recursion (what the C++ kernel visits)."""
    return sum(alpha != 0.0 for m in range(-l, l + 1) for _, _, alpha in _reference._terms(l, m))


def wigner_flops(num_edges: int, lmax: int) -> int:
    """Useful FLOPs of the sparse recursion of degrees ``2..lmax`` (``D_0``, ``D_1`` are copies).

    Per term, ``2l-1`` multiply-adds into the inner columns of ``D_l`` and four into the outer two,
    at 2 FLOPs each; then one multiplication by ``beta`` per entry.
    """
    per_edge = sum(2 * _terms_per_degree(l) * (2 * l + 3) + (2 * l + 1) ** 2 for l in range(2, lmax + 1))
    return num_edges * per_edge


def _register() -> None:
    """Fake impls, the autograd rule of the module docstring and the FLOP formulas."""
    backward_op = getattr(torch.ops.eqscale, BACKWARD_OP_NAME).default

    @torch.library.register_fake(f"eqscale::{OP_NAME}")
    def _fake(rotations, lmax):
        return rotations.new_empty(rotations.shape[0], wigner_numel(lmax))

    @torch.library.register_fake(f"eqscale::{BACKWARD_OP_NAME}")
    def _fake_backward(rotations, grad, lmax):
        return torch.empty_like(rotations)

    def setup_context(ctx, inputs, output):
        rotations, lmax = inputs
        ctx.save_for_backward(rotations)
        ctx.lmax = lmax

    def backward(ctx, grad):
        (rotations,) = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return backward_op(rotations, grad.contiguous(), ctx.lmax), None
        if ctx.lmax == 0:  # D_0 = 1: nothing for autograd to differentiate
            return torch.zeros_like(rotations), None
        # The saved rotations stay attached to their graph, so the result depends on them (and on
        # edge_vec behind them) as well as on grad.
        if not rotations.requires_grad:
            rotations = rotations.detach().requires_grad_()
        blocks = _reference.wigner_from_rotation(rotations, ctx.lmax)
        (grad_rotations,) = torch.autograd.grad(blocks, rotations, grad, create_graph=True)
        return grad_rotations, None

    torch.library.register_autograd(f"eqscale::{OP_NAME}", backward, setup_context=setup_context)

    @register_flop_formula(getattr(torch.ops.eqscale, OP_NAME))
    def _flops(rotations_shape, lmax, *args, **kwargs) -> int:
        return wigner_flops(rotations_shape[0], lmax)

    @register_flop_formula(getattr(torch.ops.eqscale, BACKWARD_OP_NAME))
    def _backward_flops(rotations_shape, grad_shape, lmax, *args, **kwargs) -> int:
        return 2 * wigner_flops(rotations_shape[0], lmax)  # each multiply-add has two partials


# Looked up once at import: torch.compile cannot trace the extension import.
_CPU_KERNELS = _extension.load() is not None and hasattr(torch.ops.eqscale, OP_NAME)
if _CPU_KERNELS:
    _register()
