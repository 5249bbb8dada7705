import math
from decimal import Decimal

import torch

from eqscale.o3 import sh_coefficients


def test_coefficients_stay_normal_at_high_degree():
    # sqrt((l-m)!/(l+m)!) at l = m = 120 is ~1e-233: representable, unlike the ratio itself (1e-466).
    coefficients = sh_coefficients(120, "integral")
    assert bool(torch.isfinite(coefficients).all()) and bool((coefficients > 1e-300).all())
    degree = 120
    # Exact factorial, square root in decimal arithmetic: no lgamma in the oracle.
    expected = math.sqrt(2 * (2 * degree + 1) / (4 * math.pi)) / float(Decimal(math.factorial(2 * degree)).sqrt())
    assert math.isclose(float(coefficients[-1]), expected, rel_tol=1e-12)
