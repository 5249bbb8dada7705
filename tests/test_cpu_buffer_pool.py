"""The buffer pool behind the C++ kernels' large outputs and the SO(2) maps' GEMM outputs (csrc/cpu/memory.h).

A freed output of 256 KiB or more goes back to the pool and the next output of about its size
reuses it, pages already in place (huge pages from 8 MiB on); EQSCALE_CPU_POOL_MB=0 turns that off.
Reused buffers must never leak old values: every output is fully written.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from eqscale.o3 import plan_tensor_product, uvu_irreps_out
from eqscale.ops.so2_conv import _linear, num_m_coefficients, num_radial, so2_weight_numel
from eqscale.ops.so2_conv import reference as so2_reference
from eqscale.ops.tp_conv import reference
from eqscale.ops.tp_conv._tables import kernel_tables

pytestmark = pytest.mark.usefixtures("cpu_extension")

_REPO = Path(__file__).resolve().parents[1]
NUM_EDGES = 2500  # x 1088 weights x 4 bytes: a 10.9 MB weight gradient, pooled


def _plan():
    allowed = [f"{d}{p}" for d in range(4) for p in "eo"]
    irreps_out, instructions = uvu_irreps_out("32x0e+32x1o+32x2e+32x3o", "0e+1o+2e+3o", allowed)
    return plan_tensor_product("32x0e+32x1o+32x2e+32x3o", "0e+1o+2e+3o", irreps_out, instructions)


def _weight_gradient(plan, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(50, plan.irreps_in1.dim, generator=generator)
    y = torch.randn(NUM_EDGES, plan.irreps_in2.dim, generator=generator)
    g = torch.randn(50, plan.irreps_out.dim, generator=generator)
    edge_index = torch.randint(0, 50, (2, NUM_EDGES), generator=generator)
    tables = kernel_tables(plan, torch.device("cpu"))
    sizes = [50, plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel, 0, plan.irreps_out.dim]
    out = torch.ops.eqscale.tp_conv_contract(x, y, None, g, edge_index, 50, 2, tables.paths, tables.cg_index,
                                             tables.cg_value, tables.layout, sizes, True, 0)
    w = torch.zeros(NUM_EDGES, plan.weight_numel, requires_grad=True)
    (expected,) = torch.autograd.grad((reference.tp_conv(x, y, w, edge_index, 50, plan) * g).sum(), w)
    return out, expected


def test_freed_output_is_reused_and_holds_only_new_values():
    plan = _plan()
    first, expected = _weight_gradient(plan, seed=0)
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-4)
    address = first.data_ptr()
    del first
    second, expected = _weight_gradient(plan, seed=1)
    assert second.data_ptr() == address  # the pool handed the same pages back
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-4)
    # A live output is never handed out twice.
    third, _ = _weight_gradient(plan, seed=2)
    assert third.data_ptr() != second.data_ptr()


def test_pool_can_be_turned_off():
    # Outputs then come from at::empty; still correct, one call after another.
    script = textwrap.dedent(
        """
        import torch, eqscale
        from tests.test_cpu_buffer_pool import _plan, _weight_gradient
        for seed in range(2):
            out, expected = _weight_gradient(_plan(), seed=seed)
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        """
    )
    env = {**os.environ, "EQSCALE_CPU_POOL_MB": "0"}
    result = subprocess.run([sys.executable, "-c", script], cwd=_REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def test_empty_pooled_reuses_freed_buffers_and_checks_its_arguments():
    like = torch.zeros(1, dtype=torch.float64)
    first = torch.ops.eqscale.empty_pooled(like, [1100, 1000])  # 8.8 MB: pooled
    assert first.shape == (1100, 1000) and first.dtype == torch.float64
    address = first.data_ptr()
    del first
    assert torch.ops.eqscale.empty_pooled(like, [1000, 1100]).data_ptr() == address
    with pytest.raises(RuntimeError, match="size must be non-negative"):
        torch.ops.eqscale.empty_pooled(like, [-1, 3])


def test_node_sized_buffers_are_pooled_and_hold_only_new_values():
    # A 1 MB buffer (the node tensors of a step: N = 1000 nodes x 288 features x 4 bytes) is pooled too.
    like = torch.zeros(1)
    first = torch.ops.eqscale.empty_pooled(like, [1000, 288])
    address = first.data_ptr()
    del first
    assert torch.ops.eqscale.empty_pooled(like, [1000, 288]).data_ptr() == address
    # The forward output and the canonical copy of mul_ir node features come from pooled buffers of
    # that size: poisoned ones must not leak into the result.
    plan = _plan()
    generator = torch.Generator().manual_seed(3)
    num_nodes, num_edges = 300, 900
    x = torch.randn(num_nodes, plan.irreps_in1.dim, generator=generator)
    y = torch.randn(num_edges, plan.irreps_in2.dim, generator=generator)
    w = torch.randn(num_edges, plan.weight_numel, generator=generator)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    poisoned = [torch.ops.eqscale.empty_pooled(like, [num_nodes, size]).fill_(float("nan"))
                for size in (plan.irreps_in1.dim, plan.irreps_out.dim) for _ in range(4)]
    del poisoned
    tables = kernel_tables(plan, torch.device("cpu"))
    sizes = [num_nodes, plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel, 0, plan.irreps_out.dim]
    out = torch.ops.eqscale.tp_conv_contract(x, y, w, None, edge_index, num_nodes, 3, tables.paths,
                                             tables.cg_index, tables.cg_value, tables.layout, sizes, True, 0)
    expected = reference.tp_conv(x, y, w, edge_index, num_nodes, plan)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_so2_maps_on_reused_buffers_hold_only_new_values():
    # The SO(2) maps write their GEMM outputs and input gradients into pooled buffers. Filling the
    # pool with NaN-poisoned buffers of their size (2,000 edges x 9 rows x 128 channels x 4 bytes
    # = 9.2 MB) makes them reuse poisoned pages, which must not leak into the results.
    lmax, mmax, channels, num_edges = 2, 2, 128, 2000
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(num_edges, num_m_coefficients(lmax, mmax), channels, generator=generator)
    w = torch.randn(so2_weight_numel(lmax, mmax, channels, channels), generator=generator) / channels**0.5
    radial = torch.randn(num_edges, num_radial(lmax, mmax), channels, generator=generator)
    g = torch.randn_like(x)
    poisoned = [torch.ops.eqscale.empty_pooled(x, list(x.shape)).fill_(float("nan")) for _ in range(8)]
    poisoned_addresses = {t.data_ptr() for t in poisoned}
    del poisoned
    results = []
    for linear in (_linear.so2_linear, so2_reference.so2_linear_blocks):
        inputs = [t.clone().requires_grad_() for t in (x, w, radial)]
        out = linear(inputs[0], inputs[1], inputs[2], lmax, mmax, channels)
        results.append([out.detach(), *torch.autograd.grad(out, inputs, g)])
    assert results[0][0].data_ptr() in poisoned_addresses  # the output was written into reused pages
    for ours, expected in zip(*results, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-3)
