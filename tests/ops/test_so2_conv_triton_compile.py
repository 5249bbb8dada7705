"""The Triton SO(2)-convolution kernels compile for a real GPU target, without a GPU.

The interpreter accepts code that the compiler rejects, so each kernel is compiled with Triton's
NVIDIA toolchain down to a cubin (sm_90), in a subprocess without ``TRITON_INTERPRET``, for both
dtypes and the largest tiles the launcher picks for ``lmax <= 15``.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[2]

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


def _nvidia_backend_available() -> bool:
    try:
        from triton.backends import backends  # noqa: PLC0415
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.mark.skipif(not _nvidia_backend_available(), reason="this Triton build has no NVIDIA backend")
def test_kernels_compile_to_cubin(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # really compile; keep ~/.triton clean
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"
    assert result.stdout.count("compiled ") == 6, result.stdout
