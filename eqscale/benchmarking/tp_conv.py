"""Tensor-product convolution: eqscale against e3nn and cuequivariance-torch, same function.

N = 1,000 nodes, E = 30,000 random edges (quick: 200 and 3,000), channelwise (``uvu``) paths from
node irreps ``mul x (0e + 1o + 2e + ...)`` up to ``L`` and spherical harmonics up to ``L`` into
every output irrep with ``l <= L``, ``mul`` 32 and 64, ``L`` 1-4, float32. The three contestants
compute the same numbers (checked before timing): cuequivariance's ``ChannelWiseTensorProduct``
fixes the path order, :meth:`TensorProductConv.from_cuequivariance` and an e3nn ``TensorProduct``
with the same instructions follow it. Steps: ``forward``; ``forward+backward`` (gradients of
node features, edge attributes and weights); ``forward+backward+double-backward`` (the backward
with ``create_graph=True`` and a backward through it, as in training on forces).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from eqscale.benchmarking._harness import (
    Case,
    Row,
    fused_devices,
    peak_tensor_bytes,
    step_function,
    time_with_matmul_probe,
    useful_flops,
)
from eqscale.ops import tp_conv

LS = (1, 2, 3, 4)
MULS = (32, 64)
STEPS = ("forward", "forward+backward", "forward+backward+double-backward")


def _modules(lmax: int, mul: int, device: torch.device, backend: str):
    import cuequivariance as cue  # noqa: PLC0415 - benchmark-only dependencies
    import cuequivariance_torch as cuet  # noqa: PLC0415
    import e3nn.o3  # noqa: PLC0415

    from eqscale.nn import TensorProductConv  # noqa: PLC0415

    irreps_in = cue.Irreps("O3", "+".join(f"{mul}x{d}{'eo'[d % 2]}" for d in range(lmax + 1)))
    irreps_sh = cue.Irreps("O3", "+".join(f"{d}{'eo'[d % 2]}" for d in range(lmax + 1)))
    filter_out = cue.Irreps("O3", "+".join(f"{d}{p}" for d in range(lmax + 1) for p in "eo"))
    method = "naive" if device.type == "cpu" else None
    theirs_cue = cuet.ChannelWiseTensorProduct(
        irreps_in, irreps_sh, filter_out, layout=cue.mul_ir, shared_weights=False, internal_weights=False,
        method=method, device=device,
    )
    ours = TensorProductConv.from_cuequivariance(theirs_cue, backend=backend)
    instructions = [(ins.i_in1, ins.i_in2, ins.i_out, "uvu", True) for ins in ours.plan.instructions]
    theirs_e3nn = e3nn.o3.TensorProduct(
        str(irreps_in), str(irreps_sh), str(ours.irreps_out), instructions, shared_weights=False,
        internal_weights=False,
    ).to(device)
    return ours, theirs_e3nn, theirs_cue


def cases(quick: bool = False) -> list[Case]:
    """Every configuration on every device with a fused backend here."""
    num_nodes, num_edges = (200, 3_000) if quick else (1_000, 30_000)
    result = []
    for device, backend in fused_devices():
        for lmax in LS[:2] if quick else LS:
            for mul in MULS[:1] if quick else MULS:
                ours, theirs_e3nn, theirs_cue = _modules(lmax, mul, device, backend)
                generator = torch.Generator().manual_seed(lmax * 100 + mul)
                edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator).to(device)
                x = torch.randn(num_nodes, ours.irreps_in.dim, generator=generator).to(device)
                sh = torch.randn(num_edges, ours.irreps_sh.dim, generator=generator).to(device)
                w = torch.randn(num_edges, ours.weight_numel, generator=generator).to(device) / 4
                senders, receivers = edge_index

                # The functional op (what the module calls): FlopCounterMode's module hooks cannot
                # follow torch.autograd.grad with respect to a module's leaf inputs.
                def eqscale_conv(x, sh, w, ours=ours, edge_index=edge_index):
                    return tp_conv(x, sh, w, edge_index, num_nodes, plan=ours.plan, backend=ours.backend)

                def e3nn_conv(x, sh, w, tp=theirs_e3nn, senders=senders, receivers=receivers):
                    messages = tp(x[senders], sh, w)
                    return messages.new_zeros(num_nodes, messages.shape[1]).index_add(0, receivers, messages)

                def cue_conv(x, sh, w, tp=theirs_cue, senders=senders, receivers=receivers):
                    return tp(x, sh, w, indices_1=senders, indices_out=receivers, size_out=num_nodes)

                _check_agreement([eqscale_conv, e3nn_conv, cue_conv], (x, sh, w))
                for step in STEPS:
                    result.append(Case(
                        name=f"L={lmax}, mul={mul}, N={num_nodes}, E={num_edges}, {device.type}",
                        step=step,
                        device=device,
                        contestants={
                            f"eqscale-{backend}": step_function(eqscale_conv, (x, sh, w), step),
                            "e3nn": step_function(e3nn_conv, (x, sh, w), step),
                            "cuequivariance": step_function(cue_conv, (x, sh, w), step),
                        },
                    ))
    return result


def _check_agreement(convolutions: list[Callable[..., torch.Tensor]], inputs: tuple[torch.Tensor, ...]) -> None:
    with torch.no_grad():
        outputs = [convolution(*inputs) for convolution in convolutions]
    scale = outputs[0].abs().max().clamp_min(1.0)
    for other in outputs[1:]:
        if not ((other - outputs[0]).abs().max() / scale < 1e-4):
            raise AssertionError("eqscale, e3nn and cuequivariance disagree on the benchmark inputs")


def run(quick: bool = False) -> Iterator[Row]:
    """Times every case side by side; one row per anchor, with peak memory ratios, as measured."""
    for case in cases(quick):
        names, functions = zip(*case.contestants.items(), strict=True)
        times, probe_gflops = time_with_matmul_probe(functions, repeats=3 if quick else 5, device=case.device)
        flops = useful_flops(functions[0])
        memory = [peak_tensor_bytes(function) for function in functions] if case.device.type == "cpu" else None
        for index in range(1, len(names)):
            note = f"peak memory {memory[0] / max(memory[index], 1):.2f}x of {names[index]}'s" if memory else ""
            yield Row(
                suite="tp_conv", case=case.name, step=case.step, backend=names[0], anchor=names[index],
                speedup=times[index] / times[0], gflops=flops / times[0] / 1e9,
                matmul_gflops=probe_gflops, note=note,
            )
