"""Clebsch-Gordan coefficients of O(3) in e3nn's real basis and normalisation.

The coefficients come from ``cuequivariance.clebsch_gordan`` (exact group theory, any degree),
rescaled to Frobenius norm 1 like ``e3nn.o3.wigner_3j``. With that normalisation cuequivariance's
tensor equals e3nn's entry for entry (checked to ~1e-16 in the tests), because both use the same
real basis (``y`` polar axis, component ``l^2 + l + m``) and the same sign convention.

Properties (``C = wigner_3j(l1, l2, l3)``, ``D_l`` from :func:`eqscale.o3.wigner_D`):

- equivariance: ``einsum("ijk,ia,jb->abk", C, D_l1, D_l2) == einsum("kc,abc->abk", D_l3, C)``,
  i.e. ``z_k = sum_ij C_ijk x_i y_j`` maps ``(D_l1 x, D_l2 y)`` to ``D_l3 z``;
- orthogonality: ``sum_ij C_ijk C_ijk' = delta_kk' / (2 l3 + 1)``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
import torch

from eqscale.o3._irreps import Irrep

#: Entries with ``|c| < ZERO_TOLERANCE`` (after normalisation) are exact zeros of the tensor. They
#: are set to 0 in the dense tensor too, so that dense and sparse forms agree bit for bit.
ZERO_TOLERANCE = 1e-12


class CGEntry(NamedTuple):
    """One non-zero coefficient ``C[i, j, k] = value`` of :func:`wigner_3j`."""

    i: int
    j: int
    k: int
    value: float


def _check_degree(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _check_triple(l1: Any, l2: Any, l3: Any) -> tuple[int, int, int]:
    l1, l2, l3 = _check_degree(l1, "l1"), _check_degree(l2, "l2"), _check_degree(l3, "l3")
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(
            f"(l1, l2, l3) = ({l1}, {l2}, {l3}) violates the triangle rule "
            "|l1 - l2| <= l3 <= l1 + l2; the coupling is zero"
        )
    return l1, l2, l3


@functools.cache
def _wigner_3j_numpy(l1: int, l2: int, l3: int) -> np.ndarray:
    # Imported lazily: cuequivariance is only needed the first time a triple is requested.
    import cuequivariance as cue  # noqa: PLC0415

    solutions = np.asarray(
        cue.clebsch_gordan(cue.SO3(l1), cue.SO3(l2), cue.SO3(l3)), dtype=np.float64
    )
    if solutions.shape[0] != 1:  # SO(3) couplings are multiplicity free; 0 means forbidden.
        raise RuntimeError(
            f"cuequivariance returned {solutions.shape[0]} couplings for ({l1}, {l2}, {l3})"
        )
    tensor = solutions[0] / np.linalg.norm(solutions[0])
    tensor[np.abs(tensor) < ZERO_TOLERANCE] = 0.0
    tensor.flags.writeable = False  # shared by every caller through the cache
    return tensor


def wigner_3j(
    l1: int,
    l2: int,
    l3: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The real Wigner 3j tensor of ``l1 x l2 -> l3``, equal to ``e3nn.o3.wigner_3j``.

    Computed once per triple from cuequivariance in float64 and cached; every call returns a new
    tensor (safe to modify).

    Args:
        l1: degree of the first input (``>= 0``).
        l2: degree of the second input (``>= 0``).
        l3: degree of the output, ``|l1 - l2| <= l3 <= l1 + l2``.
        dtype: floating dtype of the result.
        device: device of the result (default: CPU).

    Returns:
        Tensor of shape ``(2 l1 + 1, 2 l2 + 1, 2 l3 + 1)`` with Frobenius norm 1.

    Raises:
        TypeError: a degree is not an int, or ``dtype`` is not floating point.
        ValueError: a degree is negative or the triangle rule is violated.

    Example:
        >>> C = wigner_3j(1, 1, 0)
        >>> C.shape, round(float(C.norm()), 6)
        (torch.Size([3, 3, 1]), 1.0)
    """
    l1, l2, l3 = _check_triple(l1, l2, l3)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return torch.tensor(_wigner_3j_numpy(l1, l2, l3), dtype=dtype, device=device)


def clebsch_gordan(
    ir1: Any,
    ir2: Any,
    ir3: Any,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The coupling tensor of irreps ``ir1 x ir2 -> ir3`` of O(3) (parity checked).

    Same tensor (and normalisation) as :func:`wigner_3j` of the degrees; this function also
    enforces the parity selection rule ``p1 * p2 == p3``.

    Args:
        ir1: first input irrep (:class:`Irrep`, ``"1o"``, cuequivariance O3 irrep, ...).
        ir2: second input irrep.
        ir3: output irrep.
        dtype: floating dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape ``(ir1.dim, ir2.dim, ir3.dim)`` with Frobenius norm 1.

    Raises:
        ValueError: the path is forbidden by parity or by the triangle rule.

    Example:
        >>> clebsch_gordan("1o", "1o", "2e").shape
        torch.Size([3, 3, 5])
    """
    ir1, ir2, ir3 = Irrep(ir1), Irrep(ir2), Irrep(ir3)
    if ir1.p * ir2.p != ir3.p:
        raise ValueError(
            f"ir1 x ir2 -> ir3 = {ir1} x {ir2} -> {ir3} is forbidden by parity: "
            f"{ir1.p * ir2.p} != {ir3.p}"
        )
    if not abs(ir1.l - ir2.l) <= ir3.l <= ir1.l + ir2.l:
        raise ValueError(
            f"ir1 x ir2 -> ir3 = {ir1} x {ir2} -> {ir3} violates the triangle rule "
            "|l1 - l2| <= l3 <= l1 + l2"
        )
    return wigner_3j(ir1.l, ir2.l, ir3.l, dtype=dtype, device=device)


@functools.cache
def _nonzeros(l1: int, l2: int, l3: int) -> tuple[CGEntry, ...]:
    tensor = _wigner_3j_numpy(l1, l2, l3)
    return tuple(
        CGEntry(int(i), int(j), int(k), float(tensor[i, j, k]))
        for i, j, k in zip(*np.nonzero(tensor), strict=True)
    )


def cg_nonzeros(l1: int, l2: int, l3: int) -> tuple[CGEntry, ...]:
    """The non-zero entries of :func:`wigner_3j` ``(l1, l2, l3)``, in ``(i, j, k)`` order.

    Tensor-product kernels bake these into their loops (or index tensors). Zeros are entries with
    ``|value| < 1e-12``; they are exactly 0 in :func:`wigner_3j` as well, so the entries
    reconstruct the dense tensor exactly.

    Args:
        l1: degree of the first input.
        l2: degree of the second input.
        l3: degree of the output.

    Returns:
        Tuple of :class:`CGEntry` ``(i, j, k, value)`` (value a Python float). Columns as lists:
        ``i, j, k, v = map(list, zip(*cg_nonzeros(l1, l2, l3)))``.

    Example:
        >>> [(i, j, k, round(value, 6)) for i, j, k, value in cg_nonzeros(1, 1, 0)]
        [(0, 0, 0, 0.57735), (1, 1, 0, 0.57735), (2, 2, 0, 0.57735)]
    """
    return _nonzeros(*_check_triple(l1, l2, l3))
