"""The Triton SO(2)-convolution kernels compile for a real GPU target, without a GPU.

The interpreter accepts code that the compiler rejects, so each kernel is compiled with Triton's
NVIDIA toolchain down to a cubin (sm_90), in a subprocess without ``TRITON_INTERPRET``, for both
dtypes and the largest tiles the launcher picks for ``lmax <= 15``.
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
