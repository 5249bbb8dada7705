"""eqscale: fused kernels for E(3)-equivariant interatomic potentials, built for scaling studies.

Example:
    >>> import torch, eqscale
    >>> sh = eqscale.ops.spherical_harmonics(torch.randn(100, 3), lmax=4)
    >>> sh.shape
    torch.Size([100, 25])
"""

from eqscale import backends, compat, nn, o3, ops, testing
from eqscale._info import info

__version__ = "0.1.0"

__all__ = ["__version__", "backends", "compat", "info", "nn", "o3", "ops", "testing"]
