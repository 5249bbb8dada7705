"""eSEN building blocks on ``(N, (L+1)^2, C)`` features.

S2 grid activation, equivariant RMS layer norm, radial basis with a smooth envelope.
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
from __future__ import annotations

import math

import numpy as np
import torch

from eqscale.o3._spherical_harmonics import sh_coefficients, solid_harmonics_reference
from eqscale.ops.so2_conv._layout import check_int


def s2_grid(lmax: int, resolution: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points and quadrature weights of a product grid on the sphere, exact for degree ``2 lmax``.

    Gauss-Legendre nodes in ``cos(theta)`` about e3nn's polar axis ``y`` times equally spaced
    azimuths: with ``n_lat >= lmax + 1`` and ``n_lon >= 2 lmax + 1`` the grid integrates every
    product of two harmonics of degree ``<= lmax`` exactly, so projecting back a band-limited
    function is lossless.

    Args:
        lmax: highest degree represented.
        resolution: ``(n_lat, n_lon)``; default ``(2 (lmax + 1), 2 (2 lmax + 1))``, which samples
            the pointwise nonlinearity more finely than exactness needs.

    Returns:
        ``(points (G, 3), weights (G,))`` in float64, weights summing to ``4 pi``.

    Example:
        >>> points, weights = s2_grid(2)
        >>> points.shape, abs(float(weights.sum()) - 4 * math.pi) < 1e-12
        (torch.Size([60, 3]), True)
    """
    n_lat, n_lon = resolution if resolution is not None else (2 * (lmax + 1), 2 * (2 * lmax + 1))
    if n_lat < lmax + 1 or n_lon < 2 * lmax + 1:
        raise ValueError(
            f"resolution must be at least (lmax + 1, 2 lmax + 1) = ({lmax + 1}, {2 * lmax + 1}), got {resolution}"
        )
    cos_theta, lat_weights = np.polynomial.legendre.leggauss(n_lat)
    phi = 2 * math.pi * np.arange(n_lon) / n_lon
    sin_theta = np.sqrt(1 - cos_theta**2)
    # Polar axis y; the azimuth turns in the (z, x) plane as e3nn's (x', y') = (z, x).
    x = sin_theta[:, None] * np.sin(phi)[None, :]
    y = np.broadcast_to(cos_theta[:, None], x.shape)
    z = sin_theta[:, None] * np.cos(phi)[None, :]
    points = torch.tensor(np.stack([x, y, z], axis=-1).reshape(-1, 3))
    weights = torch.tensor(np.repeat(lat_weights * 2 * math.pi / n_lon, n_lon))
    return points, weights


class S2Activation(torch.nn.Module):
    """Project to a spherical grid, apply a pointwise MLP over channels, project back.

    ``out = P(MLP(G x))`` with ``G`` the harmonics ``(L+1)^2 -> grid`` and ``P`` the quadrature
    projection back; ``P G = I`` exactly (:func:`s2_grid`). Equivariant up to the grid's sampling
    of the nonlinearity (exactly for the rotations about ``y`` by multiples of ``2 pi / n_lon``).

    Args:
        lmax: degree ``L`` of the features.
        channels: channels ``C`` (in and out).
        hidden: width of the MLP's hidden layer (default ``C``).
        resolution: grid ``(n_lat, n_lon)``, see :func:`s2_grid`.

    Example:
        >>> act = S2Activation(lmax=2, channels=4)
        >>> act(torch.randn(3, 9, 4)).shape
        torch.Size([3, 9, 4])
    """

    def __init__(self, lmax: int, channels: int, hidden: int | None = None, resolution: tuple[int, int] | None = None):
        super().__init__()
        self.lmax = check_int(lmax, "lmax")
        channels = check_int(channels, "channels", 1)
        hidden = channels if hidden is None else check_int(hidden, "hidden", 1)
        points, weights = s2_grid(lmax, resolution)
        coefficients = sh_coefficients(lmax, "component", dtype=torch.float64)
        to_grid = solid_harmonics_reference(points, lmax, coefficients)  # (G, (L+1)^2)
        # "component" harmonics have mean square 1 over the sphere: <Y_a, Y_b> = 4 pi delta_ab.
        from_grid = (to_grid * weights[:, None]).T / (4 * math.pi)
        # Kept in float64 (cast per call) so that .double() after construction loses nothing.
        self.register_buffer("to_grid", to_grid, persistent=False)
        self.register_buffer("from_grid", from_grid, persistent=False)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(channels, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, channels)
        )

    def forward(self, node_feats: torch.Tensor) -> torch.Tensor:
        """``(N, (L+1)^2, C) -> (N, (L+1)^2, C)``."""
        if node_feats.dim() != 3 or node_feats.shape[1] != self.to_grid.shape[1]:
            raise ValueError(
                f"node_feats must have shape (N, {self.to_grid.shape[1]}, C) for lmax={self.lmax}, "
                f"got {tuple(node_feats.shape)}"
            )
        to_grid, from_grid = self.to_grid.to(node_feats.dtype), self.from_grid.to(node_feats.dtype)
        grid = torch.einsum("gk,nkc->ngc", to_grid, node_feats)
        return torch.einsum("kg,ngc->nkc", from_grid, self.mlp(grid))


class EquivariantRMSNorm(torch.nn.Module):
    """RMS layer norm of ``(N, (L+1)^2, C)`` features (EquiformerV2 / eSEN style).

    The ``l = 0`` component is centred over channels, then every component is divided by the
    root mean square over all components and channels of the node, and scaled by a learned
    weight per degree and channel (plus a bias on ``l = 0``). Only invariants are used, so the
    norm is O(3)-equivariant.

    Args:
        lmax: degree ``L``.
        channels: channels ``C``.
        eps: added to the mean square.
        affine: learn the per-degree weights and the ``l = 0`` bias.

    Example:
        >>> norm = EquivariantRMSNorm(lmax=2, channels=4)
        >>> norm(torch.randn(3, 9, 4)).shape
        torch.Size([3, 9, 4])
    """

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.lmax = check_int(lmax, "lmax")
        self.channels = check_int(channels, "channels", 1)
        self.eps = eps
        degree = torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)])
        self.register_buffer("degree", degree, persistent=False)
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(lmax + 1, channels))
            self.bias = torch.nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, node_feats: torch.Tensor) -> torch.Tensor:
        """``(N, (L+1)^2, C) -> (N, (L+1)^2, C)``."""
        if node_feats.dim() != 3 or tuple(node_feats.shape[1:]) != (self.degree.shape[0], self.channels):
            raise ValueError(
                f"node_feats must have shape (N, {self.degree.shape[0]}, {self.channels}), "
                f"got {tuple(node_feats.shape)}"
            )
        scalars = node_feats[:, :1] - node_feats[:, :1].mean(dim=2, keepdim=True)
        features = torch.cat([scalars, node_feats[:, 1:]], dim=1)
        scale = (features.square().mean(dim=(1, 2), keepdim=True) + self.eps).rsqrt()
        out = features * scale
        if self.weight is not None:
            out = out * self.weight[self.degree]
            out = torch.cat([out[:, :1] + self.bias, out[:, 1:]], dim=1)
        return out


class RadialBasis(torch.nn.Module):
    """Radial basis of edge lengths times a smooth polynomial envelope that vanishes at the cutoff.

    ``basis="bessel"``: ``sqrt(2 / c) sin(n pi r / c) / r`` (DimeNet); ``"gaussian"``: Gaussians
    centred on ``[0, c]`` with width the spacing. The envelope ``u(x) = 1 - (p+1)(p+2)/2 x^p +
    p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)``, ``x = r / c``, has value, slope and curvature zero at
    ``x = 1`` (so energies, forces and their derivatives are continuous when an atom crosses the
    cutoff); beyond the cutoff the output is zero.

    Args:
        num_basis: number of functions.
        cutoff: cutoff radius ``c > 0``.
        basis: ``"bessel"`` or ``"gaussian"``.
        envelope_exponent: ``p >= 1``.

    Example:
        >>> rbf = RadialBasis(8, cutoff=5.0)
        >>> rbf(torch.tensor([1.0, 4.0, 6.0])).shape
        torch.Size([3, 8])
    """

    def __init__(self, num_basis: int, cutoff: float, basis: str = "bessel", envelope_exponent: int = 5) -> None:
        super().__init__()
        self.num_basis = check_int(num_basis, "num_basis", 1)
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        if basis not in ("bessel", "gaussian"):
            raise ValueError(f"basis must be 'bessel' or 'gaussian', got {basis!r}")
        self.cutoff, self.basis = float(cutoff), basis
        self.p = check_int(envelope_exponent, "envelope_exponent", 1)
        frequencies = math.pi * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        self.register_buffer("frequencies", frequencies, persistent=False)

    def envelope(self, x: torch.Tensor) -> torch.Tensor:
        """The polynomial envelope of ``x = r / cutoff`` (zero for ``x >= 1``)."""
        p = self.p
        value = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
        return torch.where(x < 1, value, torch.zeros_like(x))

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        """``(...,)`` edge lengths (> 0 for the Bessel basis) -> ``(..., num_basis)``."""
        x = (lengths / self.cutoff)[..., None]
        frequencies = self.frequencies.to(lengths.dtype)
        if self.basis == "bessel":
            values = math.sqrt(2 / self.cutoff) * torch.sin(frequencies * x) / (x * self.cutoff)
        else:
            centres = torch.linspace(0, 1, self.num_basis, dtype=lengths.dtype, device=lengths.device)
            width = 1.0 / max(self.num_basis - 1, 1)
            values = torch.exp(-0.5 * ((x - centres) / width) ** 2)
        return values * self.envelope(x)
