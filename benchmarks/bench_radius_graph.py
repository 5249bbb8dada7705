"""eqscale radius graph (C++ cell list on CPU, Triton on GPU) vs vesin, matscipy and ASE.

    pytest benchmarks/bench_radius_graph.py --benchmark-group-by=param:case_id

Cases: a 13,824-atom rattled diamond supercell (cutoff 3 and 6 Å, periodic), 1,000 QM9-sized
molecules in one batch (cutoff 5 Å; the anchors run per molecule) and a 2-atom skewed cell
(cutoff 8 Å). `eqscale bench --suites radius_graph` prints the same cases as speed ratios and
checks that every contestant finds the same number of pairs.
"""

import os

import pytest

pytest.importorskip("vesin")
pytest.importorskip("matscipy")
pytest.importorskip("ase")

from eqscale.benchmarking import radius_graph as suite  # noqa: E402

CASES = suite.cases(quick=os.environ.get("EQSCALE_BENCH_QUICK", "0") == "1")
PARAMS = [
    pytest.param(case, contestant, f"{case.name}, {case.step}", id=f"{case.name}-{contestant}")
    for case in CASES
    for contestant in case.contestants
]


@pytest.mark.parametrize(("case", "contestant", "case_id"), PARAMS)
def test_radius_graph(benchmark, case, contestant, case_id):
    benchmark.group = case_id
    benchmark.extra_info["contestant"] = contestant
    pairs = benchmark.pedantic(case.contestants[contestant], rounds=5, warmup_rounds=1)
    benchmark.extra_info["pairs"] = pairs
    assert pairs == case.contestants[next(iter(case.contestants))]()
