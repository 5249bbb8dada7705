"""Benchmarks run under pytest-benchmark: `pytest benchmarks/ --benchmark-group-by=param:case`.

`EQSCALE_BENCH_QUICK=1` uses the small inputs of `eqscale bench --quick`.
"""

import os

import pytest


@pytest.fixture(scope="session")
def quick() -> bool:
    return os.environ.get("EQSCALE_BENCH_QUICK", "0") == "1"
