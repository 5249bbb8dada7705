"""Side-by-side benchmarks of eqscale ops against the libraries people would otherwise use.

Each suite returns :class:`Row` objects: eqscale and an anchor (e3nn, cuequivariance, vesin, ...)
timed alternately in one process on the same inputs, reported as a speed ratio of medians, plus
eqscale's useful GFLOP/s next to the fp32 matmul GFLOP/s measured in the same run. ``eqscale
bench`` prints them; ``benchmarks/`` runs the same cases under pytest-benchmark.

Example:
    >>> from eqscale.benchmarking import run_suites
    >>> rows = run_suites(["spherical_harmonics"], quick=True)  # doctest: +SKIP
"""

from eqscale.benchmarking._harness import (
    TABLE_HEADER,
    Row,
    benchmark_params,
    format_row,
    format_table,
    matmul_gflops,
    peak_tensor_bytes,
    run_suites,
    time_side_by_side,
)

__all__ = [
    "TABLE_HEADER",
    "Row",
    "benchmark_params",
    "format_row",
    "format_table",
    "matmul_gflops",
    "peak_tensor_bytes",
    "run_suites",
    "time_side_by_side",
]
