"""The Triton SO(2)-convolution kernels compile for a real GPU target, without a GPU.

The interpreter accepts code that the compiler rejects, so each kernel is compiled with Triton's
NVIDIA toolchain down to a cubin (sm_90), in a subprocess without ``TRITON_INTERPRET``, for both
dtypes and the largest tiles the launcher picks for ``lmax <= 15``. And the operator is traced
with fake CUDA tensors, as ``torch.compile`` sees it on a GPU: one captured launch per call that
writes only its output, with the index tables built inside the trace.
"""

import pytest

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.triton


_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget

from eqscale._kernels import import_kernels

kernels = import_kernels("so2_conv")
DATA = {"node_ptr", "wigner_ptr", "edge_ptr", "out_ptr"}
for name in ("rotate_in_kernel", "rotate_out_kernel", "wigner_grad_kernel"):
    kernel = getattr(kernels, name)
    for dtype in ("fp32", "fp64"):
        signature = {}
        for arg in kernel.arg_names:
            if arg.isupper():
                signature[arg] = "constexpr"
            elif arg in DATA:
                signature[arg] = "*" + dtype
            elif arg.endswith("_ptr"):
                signature[arg] = "*i64"
            else:
                signature[arg] = "i32"
        constexprs = {"BLOCK_D": kernels.block_d(15), "BLOCK_C": 16 if name == "wigner_grad_kernel" else 64}
        source = triton.compiler.ASTSource(kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm.get("cubin"), "no cubin"
        print("compiled", name, dtype)
"""


def test_kernels_compile_to_cubin(run_compiled):
    stdout = run_compiled(_SCRIPT)
    assert stdout.count("compiled ") == 6, stdout


_TRACE_SCRIPT = """
import torch

import eqscale  # noqa: F401 - registers the operators

op = torch.ops.eqscale.so2_rotate_contract_triton
LMAX, MMAX, N, E, C = 3, 2, 4, 7, 5


def function(node, wigner, edge, index):
    return (
        op(None, wigner, edge, index, N, 0, LMAX, MMAX),
        op(node, None, edge, index, N, 1, LMAX, MMAX),
        op(node, wigner, None, index, N, 2, LMAX, MMAX),
    )


trace_on_fake_gpu(function, lambda: (
    torch.empty(N, 16, C, device="cuda"),
    torch.empty(E, 84, device="cuda"),
    torch.empty(E, 14, C, device="cuda"),
    torch.empty(E, dtype=torch.int64, device="cuda"),
))
"""


def test_triton_op_traces_into_graph(run_compiled):
    stdout = run_compiled(_TRACE_SCRIPT, fake_gpu=True)
    assert "[(4, 16, 5), (7, 84), (7, 14, 5)]" in stdout, stdout
    # One launch per call, writing only the fresh output: no input is cloned or mutated (that
    # would mean torch failed to analyse the kernel).
    assert stdout.count("triton_kernel_wrapper_functional(") == 3, stdout
    assert stdout.count("tensors_to_clone = ['out_ptr']") == 3, stdout
