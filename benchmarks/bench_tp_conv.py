"""eqscale tensor-product convolution vs e3nn (TensorProduct + index_add) and cuequivariance-torch.

    pytest benchmarks/bench_tp_conv.py --benchmark-group-by=group

N = 1,000, E = 30,000, uvu, L = 1-4, mul 32 and 64, float32; forward, forward+backward,
forward+backward+double-backward. On a GPU the eqscale contestant is the Triton backend.
`eqscale bench --suites tp_conv` prints the same cases as speed and memory ratios.
"""

import os

import pytest

pytest.importorskip("e3nn")
pytest.importorskip("cuequivariance_torch")

from eqscale.benchmarking import benchmark_params  # noqa: E402
from eqscale.benchmarking import tp_conv as suite  # noqa: E402

PARAMS = benchmark_params(suite.cases(quick=os.environ.get("EQSCALE_BENCH_QUICK") == "1"))


@pytest.mark.parametrize(("case", "contestant", "group"), PARAMS, ids=[f"{g}-{c}" for _, c, g in PARAMS])
def test_tp_conv(benchmark, case, contestant, group):
    benchmark.group = group
    benchmark.pedantic(case.contestants[contestant], rounds=5, warmup_rounds=1)
