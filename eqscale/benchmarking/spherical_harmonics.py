"""Spherical harmonics: eqscale (C++ on CPU, Triton on GPU) against e3nn.

Inputs: random vectors (100,000; 20,000 with ``quick``), ``lmax`` 2, 4, 6, 8, ``normalize=True``,
``"component"`` normalisation, float32. Steps: ``forward`` and ``forward+backward`` (gradient with
respect to the vectors, as for forces).
"""

from __future__ import annotations

import torch

from eqscale.benchmarking._harness import Case, Row, fused_devices, step_function, time_side_by_side, useful_flops
from eqscale.ops.spherical_harmonics import spherical_harmonics

LMAXES = (2, 4, 6, 8)
STEPS = ("forward", "forward+backward")


def cases(quick: bool = False) -> list[Case]:
    """The benchmark cases on every device with a fused backend here."""
    import e3nn.o3  # noqa: PLC0415 - benchmark-only dependency

    num_vectors = 20_000 if quick else 100_000
    result = []
    for device, backend in fused_devices():
        vectors = torch.randn(num_vectors, 3, generator=torch.Generator().manual_seed(0)).to(device)
        for lmax in LMAXES:
            degrees = list(range(lmax + 1))

            def ours(v, lmax=lmax, backend=backend):
                return spherical_harmonics(v, lmax, True, "component", backend=backend)

            def theirs(v, degrees=degrees):
                return e3nn.o3.spherical_harmonics(degrees, v, normalize=True, normalization="component")

            for step in STEPS:
                result.append(
                    Case(
                        name=f"N={num_vectors}, lmax={lmax}, {device.type}",
                        step=step,
                        device=device,
                        contestants={
                            f"eqscale-{backend}": step_function(ours, (vectors,), step),
                            "e3nn": step_function(theirs, (vectors,), step),
                        },
                    )
                )
    return result


def run(quick: bool = False) -> list[Row]:
    """Times every case side by side and returns the rows."""
    rows = []
    for case in cases(quick):
        (ours_name, ours), (anchor_name, anchor) = case.contestants.items()
        seconds_ours, seconds_anchor = time_side_by_side([ours, anchor], repeats=5 if quick else 11, device=case.device)
        rows.append(
            Row(
                suite="spherical_harmonics",
                case=case.name,
                step=case.step,
                backend=ours_name,
                anchor=anchor_name,
                speedup=seconds_anchor / seconds_ours,
                gflops=useful_flops(ours) / seconds_ours / 1e9,
            )
        )
    return rows
