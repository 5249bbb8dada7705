"""Test helpers shipped with eqscale, so that users test their own models the same way.

- :func:`tolerance` / :func:`assert_close`: the one tolerance table (fp32 ~1e-4 relative, fp64
  ~1e-10; gradients 10x wider).
- :func:`assert_equivariant`: random O(3) elements including reflections, translations and
  permutations of atoms.
- :func:`check_gradients`: ``gradcheck`` + ``gradgradcheck`` in float64.
- :func:`assert_backend_parity`: a backend against the reference, to the double backward.

Example:
    >>> import torch, eqscale
    >>> from eqscale.testing import assert_equivariant
    >>> assert_equivariant(lambda v: eqscale.ops.spherical_harmonics(v, 2), [torch.randn(5, 3)], ["1o"], "0e+1o+2e")
"""

from eqscale.testing._equivariance import CARTESIAN_POINTS, assert_equivariant, irreps_matrix
from eqscale.testing._gradients import assert_backend_parity, check_gradients
from eqscale.testing._tolerances import Tolerance, assert_close, tolerance

__all__ = [
    "CARTESIAN_POINTS",
    "Tolerance",
    "assert_backend_parity",
    "assert_close",
    "assert_equivariant",
    "check_gradients",
    "irreps_matrix",
    "tolerance",
]
