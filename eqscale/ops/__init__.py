"""eqscale operators: one sub-package per op, each with reference, cpu and triton backends.

Example:
    >>> import torch, eqscale
    >>> eqscale.ops.spherical_harmonics(torch.randn(10, 3), lmax=3).shape
    torch.Size([10, 16])
"""

from eqscale.ops.spherical_harmonics import spherical_harmonics

__all__ = ["spherical_harmonics"]
