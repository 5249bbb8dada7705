"""``torch.nn`` modules over eqscale ops."""

from eqscale.nn._escn_blocks import EquivariantRMSNorm, RadialBasis, S2Activation, s2_grid
from eqscale.nn._so2_conv import SO2Conv
from eqscale.nn._spherical_harmonics import SphericalHarmonics
from eqscale.nn._tensor_product_conv import TensorProductConv

__all__ = [
    "EquivariantRMSNorm",
    "RadialBasis",
    "S2Activation",
    "SO2Conv",
    "SphericalHarmonics",
    "TensorProductConv",
    "s2_grid",
]
