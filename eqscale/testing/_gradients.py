"""Gradient checks (finite differences in float64) and backend parity to second order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from eqscale import backends
from eqscale.testing._tolerances import assert_close


def check_gradients(
    function: Callable[..., Any], inputs: Sequence[torch.Tensor], *, second_order: bool = True, **kwargs: Any
) -> None:
    """Runs ``torch.autograd.gradcheck`` (and ``gradgradcheck``) in float64.

    Floating-point inputs are converted to float64 copies that require grad; others are passed as
    they are.

    Args:
        function: maps the inputs to a tensor or tuple of tensors.
        inputs: the inputs.
        second_order: also run ``gradgradcheck`` (needed wherever forces are trained on).
        **kwargs: forwarded to both checks (e.g. ``atol``, ``eps``).

    Example:
        >>> import torch, eqscale
        >>> check_gradients(lambda v: eqscale.ops.spherical_harmonics(v, 2), [torch.randn(4, 3)])
    """
    prepared = tuple(
        x.detach().to(torch.float64).requires_grad_(True) if x.is_floating_point() else x for x in inputs
    )
    torch.autograd.gradcheck(function, prepared, **kwargs)
    if second_order:
        torch.autograd.gradgradcheck(function, prepared, **kwargs)


def _derivatives(function: Callable[..., Any], inputs: Sequence[torch.Tensor], order: int, seed: int):
    """Output, first and second derivatives along fixed random directions.

    Returns ``[(kind, tensor), ...]`` with kind ``"value"``, ``"grad"`` or ``"double_grad"``.
    """
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    output = function(*leaves)
    results = [("value", output.detach())]
    if order == 0:
        return results
    differentiable = [x for x in leaves if x.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    cotangent = torch.randn(output.shape, generator=generator, dtype=output.dtype).to(output.device)
    grads = torch.autograd.grad(output, differentiable, cotangent, create_graph=order > 1, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, differentiable, strict=True)]
    results += [("grad", g.detach()) for g in grads]
    if order > 1:
        directions = [torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device) for g in grads]
        scalar = sum((g * d).sum() for g, d in zip(grads, directions, strict=True))
        if scalar.requires_grad:
            second = torch.autograd.grad(scalar, differentiable, allow_unused=True)
            second = [
                torch.zeros_like(x) if s is None else s.detach() for s, x in zip(second, differentiable, strict=True)
            ]
        else:
            second = [torch.zeros_like(x) for x in differentiable]
        results += [("double_grad", s) for s in second]
    return results


def assert_backend_parity(
    function: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    backend: str,
    *,
    reference: str = "reference",
    order: int = 2,
    seed: int = 0,
) -> None:
    """Asserts that ``function`` gives the same value and derivatives under two backends.

    Compares the output, the vector-Jacobian product with a random cotangent (``order >= 1``)
    and the derivative of that product along a random direction (``order == 2``, the double
    backward that force training needs), within the tolerance table.

    Args:
        function: calls eqscale ops on the inputs and returns one tensor.
        inputs: the inputs.
        backend: the backend under test.
        reference: the backend it must match.
        order: highest derivative order compared (0, 1 or 2).
        seed: seeds the random directions.

    Example:
        >>> import torch, eqscale
        >>> sh = lambda v: eqscale.ops.spherical_harmonics(v, 3)
        >>> assert_backend_parity(sh, [torch.randn(8, 3, dtype=torch.float64)], "reference")
    """
    with backends.use_backend(reference):
        expected = _derivatives(function, inputs, order, seed)
    with backends.use_backend(backend):
        actual = _derivatives(function, inputs, order, seed)
    for index, ((kind, got), (_, want)) in enumerate(zip(actual, expected, strict=True)):
        assert_close(got, want, kind, message=f"{backend} vs {reference}: {kind} #{index} differs")
