"""Real spherical harmonics of any degree in e3nn's basis, and the table every backend shares.

e3nn's real spherical harmonics use ``y`` as the polar axis and no Condon-Shortley phase. With
the permuted coordinates ``(x', y', z') = (z, x, y)`` and ``r^2 = x^2 + y^2 + z^2``, component
``l^2 + l + m`` (``m = -l..l``) of degree ``l`` is

    Y[l, m] = coefficient[l, m] * Q[l, |m|](z', r^2) * T[m](x', y')

    T[m] = c[|m|] (m > 0),  1 (m = 0),  s[|m|] (m < 0),    c[m] + i s[m] = (x' + i y')^m

    Q[m, m]   = (2m - 1)!!
    Q[m+1, m] = (2m + 1) z' Q[m, m]
    Q[l, m]   = ((2l - 1) z' Q[l-1, m] - (l + m - 1) r^2 Q[l-2, m]) / (l - m)

``Q[l, m] * T[m]`` is a homogeneous polynomial of degree ``l`` (a solid harmonic), so without
normalisation of the input the result is ``|x|^l Y(x/|x|)``, as in e3nn. Every backend (reference,
C++, Triton) runs this recursion with the coefficients of :func:`sh_coefficients`, which hold the
normalisation:

- ``"integral"``: orthonormal on the sphere, ``coefficient = sqrt((2l+1)/(4 pi) (l-|m|)!/(l+|m|)!)``,
  times ``sqrt(2)`` when ``m != 0``;
- ``"component"``: ``sqrt(4 pi)`` times that, so ``|Y_l(u)|^2 = 2l + 1`` for a unit vector ``u``;
- ``"norm"``: ``sqrt(4 pi / (2l + 1))`` times that, so ``|Y_l(u)| = 1``.
"""

from __future__ import annotations

import functools
import math

import torch

NORMALIZATIONS = ("integral", "component", "norm")


def num_sh_components(lmax: int) -> int:
    """Number of components ``(lmax + 1)^2`` of all degrees ``0..lmax``."""
    return (lmax + 1) ** 2


def check_lmax(lmax: object, argument: str = "lmax") -> int:
    """Validates a maximum degree and returns it as an int."""
    if isinstance(lmax, bool) or not isinstance(lmax, int):
        raise TypeError(f"{argument} must be an int, got {type(lmax).__name__}")
    if lmax < 0:
        raise ValueError(f"{argument} must be >= 0, got {lmax}")
    return lmax


def check_normalization(normalization: object) -> str:
    """Validates a spherical-harmonics normalisation name."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return normalization  # type: ignore[return-value]


def _degree_scale(degree: int, normalization: str) -> float:
    if normalization == "integral":
        return 1.0
    if normalization == "component":
        return math.sqrt(4.0 * math.pi)
    return math.sqrt(4.0 * math.pi / (2 * degree + 1))


@functools.cache
def _coefficients_tuple(lmax: int, normalization: str) -> tuple[float, ...]:
    values = []
    for degree in range(lmax + 1):
        scale = _degree_scale(degree, normalization)
        for order in range(-degree, degree + 1):
            m = abs(order)
            # sqrt((l-m)!/(l+m)!) through lgamma and a halved exponent: the ratio itself
            # underflows float64 from l of about 86, its square root only beyond l = 150.
            log_ratio = math.lgamma(degree - m + 1) - math.lgamma(degree + m + 1)
            value = math.sqrt((2 * degree + 1) / (4.0 * math.pi)) * math.exp(0.5 * log_ratio)
            if m != 0:
                value *= math.sqrt(2.0)
            values.append(value * scale)
    return tuple(values)


def sh_coefficients(
    lmax: int, normalization: str = "component", dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The per-component prefactors of the recursion in this module's docstring.

    Args:
        lmax: maximum degree.
        normalization: ``"integral"``, ``"component"`` or ``"norm"``.
        dtype: dtype of the returned table.
        device: device of the returned table.

    Returns:
        Tensor of shape ``((lmax + 1)^2,)``.

    Example:
        >>> sh_coefficients(1, "component")
        tensor([1.0000, 1.7321, 1.7321, 1.7321], dtype=torch.float64)
    """
    check_lmax(lmax)
    check_normalization(normalization)
    return torch.tensor(_coefficients_tuple(lmax, normalization), dtype=dtype, device=device)


def solid_harmonics_reference(vectors: torch.Tensor, lmax: int, coefficients: torch.Tensor) -> torch.Tensor:
    """The recursion of this module's docstring on un-normalised vectors, in plain PyTorch.

    Args:
        vectors: ``(..., 3)``.
        lmax: maximum degree.
        coefficients: from :func:`sh_coefficients`.

    Returns:
        ``(..., (lmax + 1)^2)``, differentiable to any order by autograd.
    """
    xp, yp, zp = vectors[..., 2], vectors[..., 0], vectors[..., 1]
    r2 = xp * xp + yp * yp + zp * zp
    cos_terms, sin_terms = [torch.ones_like(xp)], [torch.zeros_like(xp)]
    for m in range(1, lmax + 1):
        cos_terms.append(xp * cos_terms[m - 1] - yp * sin_terms[m - 1])
        sin_terms.append(xp * sin_terms[m - 1] + yp * cos_terms[m - 1])

    columns: dict[int, torch.Tensor] = {}
    for m in range(lmax + 1):
        q_diagonal = float(math.prod(range(1, 2 * m, 2)))  # (2m - 1)!!
        q = {m: torch.full_like(xp, q_diagonal)}
        if m + 1 <= lmax:
            q[m + 1] = (2 * m + 1) * zp * q[m]
        for degree in range(m + 2, lmax + 1):
            q[degree] = ((2 * degree - 1) * zp * q[degree - 1] - (degree + m - 1) * r2 * q[degree - 2]) / (degree - m)
        for degree in range(m, lmax + 1):
            center = degree * degree + degree
            if m == 0:
                columns[center] = q[degree]
            else:
                columns[center + m] = q[degree] * cos_terms[m]
                columns[center - m] = q[degree] * sin_terms[m]
    stacked = torch.stack([columns[index] for index in range(num_sh_components(lmax))], dim=-1)
    return stacked * coefficients.to(stacked.dtype)


def spherical_harmonics_flops(num_vectors: int, lmax: int) -> int:
    """Floating-point operations of the recursion above for ``num_vectors`` vectors (forward).

    Counted per vector: 5 for ``r^2``; 6 per ``(c[m], s[m])`` step; 2 for each ``Q[m+1, m]``; 6 for
    each three-term step (``(2l-1) z Q``, ``(l+m-1) r^2 Q``, the difference, the division as a
    multiplication); 2 per output component (``Q T`` and the prefactor), 1 for ``m = 0``.
    """
    per_vector = 5 + 6 * lmax
    for m in range(lmax + 1):
        per_vector += 2 if m + 1 <= lmax else 0
        per_vector += 6 * max(0, lmax - m - 1)
    per_vector += 2 * num_sh_components(lmax) - (lmax + 1)
    return num_vectors * per_vector
