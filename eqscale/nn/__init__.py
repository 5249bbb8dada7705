"""``torch.nn`` modules over eqscale ops."""

from eqscale.nn._spherical_harmonics import SphericalHarmonics

__all__ = ["SphericalHarmonics"]
