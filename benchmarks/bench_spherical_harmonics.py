"""eqscale spherical harmonics (C++ on CPU, Triton on GPU) vs e3nn, 100,000 vectors, lmax 2-8.

    pytest benchmarks/bench_spherical_harmonics.py --benchmark-group-by=group

`eqscale bench --suites spherical_harmonics` prints the same cases as speed ratios.
"""

import os

import pytest

pytest.importorskip("e3nn")

from eqscale.benchmarking import benchmark_params  # noqa: E402
from eqscale.benchmarking import spherical_harmonics as suite  # noqa: E402

PARAMS = benchmark_params(suite.cases(quick=os.environ.get("EQSCALE_BENCH_QUICK") == "1"))


@pytest.mark.parametrize(("case", "contestant", "group"), PARAMS, ids=[f"{g}-{c}" for _, c, g in PARAMS])
def test_spherical_harmonics(benchmark, case, contestant, group):
    benchmark.group = group
    benchmark.pedantic(case.contestants[contestant], rounds=7, warmup_rounds=1)
