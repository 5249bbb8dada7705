"""eqscale SO(2) (eSCN) convolution: fused backend vs the reference PyTorch path, and vs tp_conv.

    pytest benchmarks/bench_so2_conv.py --benchmark-group-by=group

N = 1,000, E = 30,000, C = 64, L = 2, 4, 6 with mmax = 2 and mmax = L, float32; forward and
forward+backward. On a GPU the eqscale contestant is the Triton backend (eqscale-triton vs the
reference on CUDA). `eqscale bench --suites so2_conv` prints the same cases as speed ratios.
"""

import os

import pytest

from eqscale.benchmarking import benchmark_params
from eqscale.benchmarking import so2_conv as suite

PARAMS = benchmark_params(suite.cases(quick=os.environ.get("EQSCALE_BENCH_QUICK") == "1"))


@pytest.mark.parametrize(("case", "contestant", "group"), PARAMS, ids=[f"{g}-{c}" for _, c, g in PARAMS])
def test_so2_conv(benchmark, case, contestant, group):
    benchmark.group = group
    benchmark.pedantic(case.contestants[contestant], rounds=5, warmup_rounds=1)
