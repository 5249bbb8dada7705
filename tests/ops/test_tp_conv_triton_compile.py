"""The Triton tensor-product convolution compiles for a real GPU target, without a GPU.

As in tests/ops/test_triton_compile.py: the interpreter accepts code the compiler rejects (it
once accepted a runtime ``if`` whose branches gave one name two shapes), so the kernel is
compiled with Triton's NVIDIA toolchain down to a cubin, in a subprocess without
``TRITON_INTERPRET``; and the operator is traced with fake CUDA tensors, as ``torch.compile``
sees it on a GPU: one captured kernel launch per call, writing only its output, and no
data-dependent shapes in the launcher (the deterministic CSR and the path groups included).
"""

import textwrap

import pytest

triton = pytest.importorskip("triton")

pytestmark = pytest.mark.triton


# (OPEN, LAYOUT, SEGMENTS, ATOMIC, dtype): every open slot, both layouts, every way of walking
# edges and both ways of writing, both dtypes, in five compilations (each takes seconds).
VARIANTS = [
    (3, 0, 0, True, "fp32"),
    (3, 1, 1, False, "fp64"),
    (0, 0, 0, True, "fp64"),
    (1, 1, 0, False, "fp32"),
    (2, 0, 2, True, "fp64"),
]


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget

from eqscale._kernels import import_kernels

kernels = import_kernels("tp_conv")
kernel = kernels.tp_conv_contract_kernel
SLOT_POINTERS = ("x_ptr", "y_ptr", "w_ptr", "g_ptr", "out_ptr")
for open_slot, layout, segments, atomic, dtype in VARIANTS:
    signature = {}
    for name in kernel.arg_names:
        if name.isupper():
            signature[name] = "constexpr"
        elif name in SLOT_POINTERS:
            signature[name] = "*" + dtype
        elif name == "cg_value_ptr":
            signature[name] = "*fp64"
        elif name.endswith("_ptr"):
            signature[name] = "*i64"
        else:
            signature[name] = "i32"
    constexprs = dict(OPEN=open_slot, LAYOUT=layout, SEGMENTS=segments, ATOMIC=atomic,
                      BLOCK_C=kernels.MAX_BLOCK_C, BLOCK_D=kernels.MAX_BLOCK_D,
                      BLOCK_N=kernels.BLOCK_N)
    source = triton.compiler.ASTSource(kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", CAPABILITY, 32))
    assert compiled.asm.get("cubin"), "no cubin"
    print("compiled", open_slot, layout, segments, atomic, dtype, len(compiled.asm["cubin"]))
"""


def test_kernel_compiles_to_cubin(run_compiled):
    # sm_90 (H100), the largest tiles the launcher picks.
    script = f"VARIANTS = {VARIANTS!r}\nCAPABILITY = 90\n" + textwrap.dedent(_COMPILE_SCRIPT)
    stdout = run_compiled(script)
    assert stdout.count("compiled ") == len(VARIANTS), stdout


_TRACE_SCRIPT = """
import torch

import eqscale
from eqscale.ops.tp_conv._tables import _host_tables

op = torch.ops.eqscale.tp_conv_contract_triton
plan = eqscale.o3.plan_tensor_product(
    "2x0e+2x1o", "2x0e+1x1o", "2x0e+2x1o+3x1o",
    [(0, 0, 0, "uuu", True), (1, 1, 0, "uvu", True), (0, 1, 1, "uvu", False),
     (1, 0, 2, "uvw", True)])
host = _host_tables(plan)
N, E = 5, 9
sizes = [N, plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel, 0, plan.irreps_out.dim]
shared_sizes = sizes[:4] + [1] + sizes[5:]


def function(x, y, w, w_shared, g, edge_index, paths, cg_index, cg_value):
    tables = (paths, cg_index, cg_value, host.layout)
    return (
        op(x, y, w, None, edge_index, N, 3, *tables, sizes, False, 0),
        op(x, y, w, None, edge_index, N, 3, *tables, sizes, True, 0),
        op(None, y, w, g, edge_index, N, 0, *tables, sizes, True, 0),
        op(x, None, w, g, edge_index, N, 1, *tables, sizes, False, 0),
        op(x, y, None, g, edge_index, N, 2, *tables, sizes, False, 0),
        op(x, y, None, g, edge_index, N, 2, *tables, shared_sizes, True, 0),
    )


trace_on_fake_gpu(function, lambda: (
    torch.empty(N, sizes[1], device="cuda"),
    torch.empty(E, sizes[2], device="cuda"),
    torch.empty(E, sizes[3], device="cuda"),
    torch.empty(sizes[3], device="cuda"),
    torch.empty(N, sizes[5], device="cuda"),
    torch.empty(2, E, dtype=torch.int64, device="cuda"),
    torch.empty(host.paths.shape, dtype=torch.int64, device="cuda"),
    torch.empty(host.cg_index.shape, dtype=torch.int64, device="cuda"),
    torch.empty(host.cg_value.shape, dtype=torch.float64, device="cuda"),
))
"""


def test_triton_op_traces_into_graph(run_compiled):
    stdout = run_compiled(_TRACE_SCRIPT, fake_gpu=True)
    assert "[(5, 17), (5, 17), (5, 8), (9, 5), (9, 16), (16,)]" in stdout, stdout
    # Each call decomposes into its kernel launch, which writes only the fresh output: no input
    # is cloned or mutated (that would mean torch failed to analyse the kernel).
    assert stdout.count("triton_kernel_wrapper_functional(") == 6, stdout
    assert stdout.count("tensors_to_clone = ['out_ptr']") == 6, stdout
