"""``torch.nn`` modules over eqscale ops."""

from eqscale.nn._spherical_harmonics import SphericalHarmonics
from eqscale.nn._tensor_product_conv import TensorProductConv

__all__ = ["SphericalHarmonics", "TensorProductConv"]
