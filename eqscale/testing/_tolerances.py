"""The one tolerance table of eqscale: values, and gradients with a 10x wider band."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Tolerance(NamedTuple):
    """Relative and absolute tolerance for ``torch.testing.assert_close``."""

    rtol: float
    atol: float


_VALUE_TOLERANCES = {
    torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
    torch.float32: Tolerance(rtol=1e-4, atol=1e-5),
    torch.bfloat16: Tolerance(rtol=2e-2, atol=1e-2),
    torch.float16: Tolerance(rtol=2e-3, atol=1e-3),
}
_DERIVATIVE_WIDENING = {"value": 1.0, "grad": 10.0, "double_grad": 100.0}


def tolerance(dtype: torch.dtype, kind: str = "value") -> Tolerance:
    """Tolerance for comparing results of ``dtype``.

    Args:
        dtype: the floating-point dtype compared.
        kind: ``"value"``; ``"grad"`` (10x wider); ``"double_grad"`` (100x wider).

    Example:
        >>> tolerance(torch.float32, "grad")
        Tolerance(rtol=0.001, atol=0.0001)
    """
    if dtype not in _VALUE_TOLERANCES:
        raise ValueError(f"dtype must be one of {list(_VALUE_TOLERANCES)}, got {dtype}")
    if kind not in _DERIVATIVE_WIDENING:
        raise ValueError(f"kind must be one of {list(_DERIVATIVE_WIDENING)}, got {kind!r}")
    base, factor = _VALUE_TOLERANCES[dtype], _DERIVATIVE_WIDENING[kind]
    return Tolerance(rtol=base.rtol * factor, atol=base.atol * factor)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, kind: str = "value", message: str = "") -> None:
    """``torch.testing.assert_close`` with eqscale's tolerance for the dtype of ``expected``.

    The absolute tolerance is scaled by the magnitude of ``expected`` so that the check is
    relative for large values and does not fail on round-off around zero.

    Example:
        >>> assert_close(torch.ones(3), torch.ones(3) + 1e-7)
    """
    tol = tolerance(expected.dtype, kind)
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual, expected, rtol=tol.rtol, atol=tol.atol * scale, msg=(lambda default: f"{message}\n{default}")
    )
