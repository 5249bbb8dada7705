"""SO(2) (eSCN) convolution: the fused backend against the reference, and against tp_conv.

The reference is the PyTorch path; tp_conv is a CG tensor-product convolution at the same degree
and width.

N = 1,000 nodes, E = 30,000 random edges (quick: 200 and 3,000), C = 64 channels (quick: 16),
``L`` = 2, 4, 6 with ``mmax`` = 2 and ``mmax`` = ``L``, float32, per-edge radial multipliers.
Steps: ``forward`` and ``forward+backward`` (gradients of node features, edge vectors, weights
and radial multipliers). Contestants on the same inputs, timed alternately:

- ``eqscale-cpu`` (on a GPU: ``eqscale-triton``) against ``reference`` (the readable PyTorch spec:
  gather, per-degree batched matmuls, GEMMs, ``index_add``), checked equal before timing;
- ``so2_conv`` against ``tp_conv`` (channelwise ``uvu``, every path of ``C x (0e+1o+...)`` times
  the spherical harmonics up to ``L`` into every ``l <= L``), both on the fused backend: what the
  ``O(L^3)`` SO(2) form buys over the ``O(L^6)`` tensor product (``mmax = L`` only, where the two
  span the same maps).
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
from __future__ import annotations

from collections.abc import Iterator

import torch

from eqscale.benchmarking._harness import (
    Case,
    Row,
    fused_devices,
    step_function,
    time_with_matmul_probe,
    useful_flops,
)
from eqscale.ops.so2_conv import _CPU_KERNELS, _TRITON_KERNELS, num_radial, so2_conv, so2_weight_numel

LS = (2, 4, 6)
# The channel-mixing tensor product is O(L^6 C^2) per edge: on the full graph one forward pass takes
# about 25 s at L = 4 and minutes at L = 6 on a 2-core CPU, so it is timed forward only, L <= 4.
TP_CONV_MAX_L = 4
STEPS = ("forward", "forward+backward")


def _devices() -> list[tuple[torch.device, str]]:
    available = {"cpu": _CPU_KERNELS, "triton": _TRITON_KERNELS}
    return [(device, backend) for device, backend in fused_devices() if available[backend]]


def _inputs(lmax, mmax, channels, num_nodes, num_edges, device):
    generator = torch.Generator().manual_seed(lmax * 10 + mmax)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    x = torch.randn(num_nodes, (lmax + 1) ** 2, channels, generator=generator)
    vec = torch.randn(num_edges, 3, generator=generator)
    w = (
        torch.randn(so2_weight_numel(lmax, mmax, channels, channels), generator=generator)
        / (channels * (lmax + 1)) ** 0.5
    )
    radial = torch.rand(num_edges, num_radial(lmax, mmax), channels, generator=generator)
    return edge_index.to(device), tuple(t.to(device) for t in (x, vec, w, radial))


def _tp_conv_contestant(lmax, channels, num_nodes, edge_index, vec, backend):
    """The tensor-product convolution spanning the same maps, on the same graph.

    Channel-mixing (``uvw``) paths from ``C x (0e+1o+...)`` and the spherical harmonics up to
    ``L`` into ``C x l`` of both parities for every ``l <= L`` (the odd paths are the SO(2) map's
    ``W2`` part), shared path weights.
    """
    from eqscale.o3 import Irreps, plan_tensor_product  # noqa: PLC0415
    from eqscale.ops import spherical_harmonics, tp_conv  # noqa: PLC0415

    irreps_in = Irreps("+".join(f"{channels}x{l}{'eo'[l % 2]}" for l in range(lmax + 1)))
    irreps_out = Irreps("+".join(f"{channels}x{l}{p}" for l in range(lmax + 1) for p in "eo"))
    plan = plan_tensor_product(irreps_in, Irreps.spherical_harmonics(lmax), irreps_out, mode="uvw", layout="ir_mul")
    generator = torch.Generator().manual_seed(lmax)
    weights = torch.randn(plan.weight_numel, generator=generator).to(vec.device) / channels
    sh_backend = "reference" if backend == "reference" else backend

    def convolution(x, vec, weights):
        sh = spherical_harmonics(vec, lmax, backend=sh_backend)
        return tp_conv(x.reshape(x.shape[0], -1), sh, weights, edge_index, num_nodes, plan=plan, backend=backend)

    return convolution, weights


def cases(quick: bool = False) -> list[Case]:
    """Every configuration on every device with a fused backend here."""
    num_nodes, num_edges, channels = (200, 3_000, 16) if quick else (1_000, 30_000, 64)
    result = []
    for device, backend in _devices():
        for lmax in LS[:2] if quick else LS:
            for mmax in sorted({min(2, lmax), lmax}):
                edge_index, inputs = _inputs(lmax, mmax, channels, num_nodes, num_edges, device)

                def conv(x, vec, w, radial, chosen, lmax=lmax, mmax=mmax, edge_index=edge_index):
                    return so2_conv(x, vec, edge_index, num_nodes, w, radial, lmax=lmax, mmax=mmax, backend=chosen)

                ours = lambda *args, conv=conv, backend=backend: conv(*args, backend)  # noqa: E731
                reference = lambda *args, conv=conv: conv(*args, "reference")  # noqa: E731
                _check_agreement(ours, reference, inputs)
                name = f"L={lmax}, mmax={mmax}, C={channels}, N={num_nodes}, E={num_edges}, {device.type}"
                for step in STEPS:
                    contestants = {
                        f"eqscale-{backend}": step_function(ours, inputs, step),
                        "reference": step_function(reference, inputs, step),
                    }
                    if mmax == lmax and lmax <= TP_CONV_MAX_L and step == "forward":
                        tp, tp_weights = _tp_conv_contestant(lmax, channels, num_nodes, edge_index, inputs[1], backend)
                        contestants[f"tp_conv (eqscale-{backend})"] = step_function(
                            tp, (inputs[0], inputs[1], tp_weights), step
                        )
                    result.append(Case(name=name, step=step, device=device, contestants=contestants))
    return result


def _check_agreement(ours, reference, inputs) -> None:
    with torch.no_grad():
        a, b = ours(*inputs), reference(*inputs)
    if not float((a - b).abs().max() / b.abs().max().clamp_min(1.0)) < 1e-4:
        raise AssertionError("the fused so2_conv and the reference disagree on the benchmark inputs")


def run(quick: bool = False) -> Iterator[Row]:
    """Times every case side by side (with a matmul probe under the same load); rows as measured."""
    for case in cases(quick):
        names, functions = zip(*case.contestants.items(), strict=True)
        times, probe_gflops = time_with_matmul_probe(functions, repeats=3 if quick else 5, device=case.device)
        flops = useful_flops(functions[0])
        for index in range(1, len(names)):
            yield Row(
                suite="so2_conv",
                case=case.name,
                step=case.step,
                backend=names[0],
                anchor=names[index],
                speedup=times[index] / times[0],
                gflops=flops / times[0] / 1e9,
                matmul_gflops=probe_gflops,
            )
