"""Module wrapper of :func:`eqscale.ops.spherical_harmonics`."""

from __future__ import annotations

import torch

from eqscale.o3._irreps import Irreps
from eqscale.o3._spherical_harmonics import check_lmax, check_normalization
from eqscale.ops.spherical_harmonics import spherical_harmonics


class SphericalHarmonics(torch.nn.Module):
    """Real spherical harmonics of degrees ``0..lmax`` of edge vectors (e3nn's basis and order).

    Args:
        lmax: maximum degree.
        normalize: project the vectors on the unit sphere first.
        normalization: ``"component"``, ``"norm"`` or ``"integral"``.
        backend: force a backend; ``None`` follows :mod:`eqscale.backends`.

    Example:
        >>> import torch
        >>> module = SphericalHarmonics(lmax=2)
        >>> module.irreps_out
        1x0e+1x1o+1x2e
        >>> module(torch.randn(5, 3)).shape
        torch.Size([5, 9])
    """

    def __init__(
        self, lmax: int, normalize: bool = True, normalization: str = "component", backend: str | None = None
    ) -> None:
        super().__init__()
        self.lmax = check_lmax(lmax)
        self.normalize = normalize
        self.normalization = check_normalization(normalization)
        self.backend = backend
        self.irreps_out = Irreps.spherical_harmonics(lmax)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """Spherical harmonics of ``vectors`` ``(..., 3)`` -> ``(..., (lmax + 1)^2)``."""
        return spherical_harmonics(vectors, self.lmax, self.normalize, self.normalization, backend=self.backend)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, normalize={self.normalize}, normalization={self.normalization!r}"
