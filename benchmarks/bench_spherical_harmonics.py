"""eqscale spherical harmonics (C++ on CPU, Triton on GPU) vs e3nn, 100,000 vectors, lmax 2-8.

    pytest benchmarks/bench_spherical_harmonics.py --benchmark-group-by=param:case_id

pytest-benchmark groups each input configuration so that eqscale and e3nn sit side by side;
`eqscale bench --suites spherical_harmonics` prints the same cases as speed ratios.
"""

import os

import pytest

pytest.importorskip("e3nn")

from eqscale.benchmarking import spherical_harmonics as suite  # noqa: E402

CASES = suite.cases(quick=os.environ.get("EQSCALE_BENCH_QUICK", "0") == "1")
PARAMS = [
    pytest.param(case, contestant, f"{case.name}, {case.step}", id=f"{case.name}-{case.step}-{contestant}")
    for case in CASES
    for contestant in case.contestants
]


@pytest.mark.parametrize(("case", "contestant", "case_id"), PARAMS)
def test_spherical_harmonics(benchmark, case, contestant, case_id):
    benchmark.group = case_id
    benchmark.extra_info["contestant"] = contestant
    benchmark.pedantic(case.contestants[contestant], rounds=7, warmup_rounds=1)
