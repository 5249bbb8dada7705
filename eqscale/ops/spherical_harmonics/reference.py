"""Reference spherical harmonics: the spec every backend must match (plain, differentiable PyTorch)."""

from __future__ import annotations

import torch

from eqscale.o3._spherical_harmonics import sh_coefficients, solid_harmonics_reference


def spherical_harmonics(vectors: torch.Tensor, lmax: int, normalize: bool, normalization: str) -> torch.Tensor:
    """Real spherical harmonics of degrees ``0..lmax`` in e3nn's basis and order.

    Args:
        vectors: ``(..., 3)``.
        lmax: maximum degree.
        normalize: project the vectors on the unit sphere first (as e3nn, zero stays zero).
        normalization: ``"integral"``, ``"component"`` or ``"norm"``.

    Returns:
        ``(..., (lmax + 1)^2)``.
    """
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    coefficients = sh_coefficients(lmax, normalization, dtype=vectors.dtype, device=vectors.device)
    return solid_harmonics_reference(vectors, lmax, coefficients)
