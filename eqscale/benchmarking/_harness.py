"""Timing primitives and the suite registry."""

from __future__ import annotations

import dataclasses
import importlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from eqscale import backends

SUITES = {
    "spherical_harmonics": "eqscale.benchmarking.spherical_harmonics",
    "radius_graph": "eqscale.benchmarking.radius_graph",
    "tp_conv": "eqscale.benchmarking.tp_conv",
    "so2_conv": "eqscale.benchmarking.so2_conv",
}


@dataclasses.dataclass
class Row:
    """One benchmark case: eqscale against one anchor, measured side by side."""

    suite: str
    case: str
    step: str
    backend: str
    anchor: str
    speedup: float  # anchor median time / eqscale median time (> 1: eqscale is faster)
    gflops: float | None = None  # eqscale's useful GFLOP/s
    matmul_gflops: float | None = None  # fp32 matmul GFLOP/s measured in the same run
    note: str = ""


@dataclasses.dataclass
class Case:
    """One input configuration of an op suite and the contestants timed on it."""

    name: str
    step: str
    device: torch.device
    contestants: dict[str, Callable[[], object]]  # first entry: eqscale


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(
    functions: Sequence[Callable[[], object]],
    *,
    repeats: int = 7,
    warmup: int = 2,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Median wall time in seconds of each function, timed in alternation.

    Alternating (A, B, A, B, ...) spreads the noise of a shared machine evenly over all the
    contestants, so the ratio of medians is meaningful even where absolute times are not.

    Args:
        functions: zero-argument callables.
        repeats: timed calls of each.
        warmup: untimed calls of each first.
        device: synchronised around each call when it is a GPU.

    Returns:
        One median per function.
    """
    device = torch.device(device)
    for function in functions:
        for _ in range(warmup):
            function()
    samples: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for index, function in enumerate(functions):
            _synchronize(device)
            start = time.perf_counter()
            function()
            _synchronize(device)
            samples[index].append(time.perf_counter() - start)
    return [statistics.median(times) for times in samples]


def fused_devices() -> list[tuple[torch.device, str]]:
    """The (device, fused backend) pairs usable here: the C++ backend on CPU, Triton on a GPU."""
    devices = []
    if backends.cpu_available():
        devices.append((torch.device("cpu"), "cpu"))
    if torch.cuda.is_available() and backends.usable("triton", torch.device("cuda")):
        devices.append((torch.device("cuda"), "triton"))
    return devices


def step_function(
    convolution: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], step: str
) -> Callable[[], object]:
    """A zero-argument callable running one benchmark step of ``convolution(*inputs)``.

    Steps: ``forward`` (no grad); ``forward+backward`` (gradients of every input);
    ``forward+backward+double-backward`` (the backward with ``create_graph=True`` and a backward
    through it, as in training on forces).
    """
    if step == "forward":

        def forward():
            with torch.no_grad():
                return convolution(*inputs)

        return forward
    leaves = tuple(t.detach().requires_grad_(True) for t in inputs)

    def backward():
        out = convolution(*leaves)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out), create_graph=step != "forward+backward")
        if step == "forward+backward":
            return grads
        second = sum(g.sum() for g in grads)
        return torch.autograd.grad(second, leaves)

    return backward


def matmul_probe(
    size: int = 1024, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[Callable[[], object], int]:
    """A square matmul and its FLOPs: the machine's practical peak rate.

    Timed among a case's contestants, it gives that peak under the same load as they ran (a lone
    measurement at the start of a long run on a shared machine does not).
    """
    device = torch.device(device)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    return (lambda: a @ b), 2 * size**3


def time_with_matmul_probe(
    functions: Sequence[Callable[[], object]], *, repeats: int, device: torch.device | str = "cpu"
) -> tuple[list[float], float]:
    """Median seconds of each function, and the matmul GFLOP/s, all timed in alternation.

    The probe (:func:`matmul_probe`) runs among the contestants, so its rate is the machine's peak
    under the load they saw.
    """
    probe, probe_flops = matmul_probe(device=device)
    *times, probe_time = time_side_by_side([*functions, probe], repeats=repeats, warmup=1, device=device)
    return times, probe_flops / probe_time / 1e9


def useful_flops(function: Callable[[], object]) -> int:
    """FLOPs of one call as ``torch.utils.flop_counter`` counts them (the ops' registered formulas)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def matmul_gflops(size: int = 1024, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> float:
    """Measured GFLOP/s of a square matmul, the machine's practical peak for comparison."""
    probe, flops = matmul_probe(size, dtype, device)
    (seconds,) = time_side_by_side([probe], repeats=5, warmup=1, device=device)
    return flops / seconds / 1e9


def run_suites(
    names: Sequence[str] | None = None, *, quick: bool = False, on_row: Callable[[Row], None] | None = None
) -> list[Row]:
    """Runs the named suites (all when ``None``) and returns their rows.

    Args:
        names: suite names, keys of ``SUITES``.
        quick: small inputs and few repeats (a smoke run that still prints real ratios).
        on_row: called with each row as soon as it is measured (full runs take many minutes).
    """
    names = list(SUITES) if names is None else list(names)
    unknown = sorted(set(names) - set(SUITES))
    if unknown:
        raise ValueError(f"unknown benchmark suite(s) {unknown}; choose from {sorted(SUITES)}")
    peak = matmul_gflops()
    rows: list[Row] = []
    for name in names:
        module = importlib.import_module(SUITES[name])
        for row in module.run(quick=quick):
            if row.matmul_gflops is None:  # suites that time the matmul beside their cases set it
                row.matmul_gflops = peak
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


TABLE_HEADER = (
    "| suite | case | step | eqscale | vs | speedup | useful GFLOP/s | matmul GFLOP/s | note |\n"
    "|---|---|---|---|---|---:|---:|---:|---|"
)


def format_row(row: Row) -> str:
    """One Markdown table line (under ``TABLE_HEADER``)."""
    gflops = f"{row.gflops:.1f}" if row.gflops is not None else ""
    peak = f"{row.matmul_gflops:.0f}" if row.matmul_gflops is not None else ""
    return (
        f"| {row.suite} | {row.case} | {row.step} | {row.backend} | {row.anchor} | "
        f"{row.speedup:.2f}x | {gflops} | {peak} | {row.note} |"
    )


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of rows (the format the README shows)."""
    return "\n".join([TABLE_HEADER, *(format_row(row) for row in rows)])


def peak_tensor_bytes(function: Callable[[], object]) -> int:
    """Peak bytes of live tensor storage allocated by PyTorch operators while ``function`` runs.

    Tracks every storage that an operator returns (including what autograd saves) until it is
    freed, through a ``TorchDispatchMode``. Memory that a fused kernel allocates privately (e.g.
    index scratch inside C++) is not seen; inputs that exist before the call are not counted.
    """
    import weakref  # noqa: PLC0415

    from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC0415
    from torch.utils._pytree import tree_flatten  # noqa: PLC0415

    state = {"live": 0, "peak": 0}
    seen: set[int] = set()

    def release(key: int, size: int) -> None:
        seen.discard(key)
        state["live"] -= size

    class Tracker(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for value in tree_flatten(result)[0]:
                if isinstance(value, torch.Tensor):
                    storage = value.untyped_storage()
                    key = storage.data_ptr()
                    if key and key not in seen:
                        seen.add(key)
                        size = storage.nbytes()
                        state["live"] += size
                        state["peak"] = max(state["peak"], state["live"])
                        weakref.finalize(storage, release, key, size)
            return result

    with Tracker():
        function()
    return state["peak"]


def benchmark_params(cases: Sequence[Any]) -> list[tuple[Any, str, str]]:
    """``(case, contestant, group)`` triples for ``pytest.mark.parametrize`` in ``benchmarks/``.

    ``group`` names the input configuration and step, so that pytest-benchmark's table puts
    eqscale and its anchors side by side (``--benchmark-group-by=group``).
    """
    return [(case, contestant, f"{case.name}, {case.step}") for case in cases for contestant in case.contestants]
