"""Binds the C++ spherical-harmonics kernels (``csrc/cpu/spherical_harmonics.cpp``).

The kernels evaluate the recursion of :mod:`eqscale.o3._spherical_harmonics` on ``(N, 3)``
contiguous vectors; normalisation of the vectors happens before, in PyTorch. Their schemas are
in ``csrc/ops.cpp``:

- ``spherical_harmonics_fwd(vectors, coefficients, lmax) -> sh``
- ``spherical_harmonics_bwd(vectors, grad_sh, coefficients, lmax) -> grad_vectors``
- ``spherical_harmonics_bwd_bwd(vectors, grad_sh, grad_grad_vectors, coefficients, lmax)
  -> (grad_grad_sh, grad_vectors)``
"""

from __future__ import annotations

from eqscale import _extension

OP_NAMES = ("spherical_harmonics_fwd", "spherical_harmonics_bwd", "spherical_harmonics_bwd_bwd")


def load() -> bool:
    """Loads ``eqscale._C`` (which registers the operators); whether it is available."""
    return _extension.load() is not None
