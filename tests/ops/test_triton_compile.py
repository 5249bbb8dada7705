"""The Triton kernels compile for a real GPU target, on machines without a GPU.

The interpreter (``TRITON_INTERPRET=1``, how the other tests run the kernels on CPU) executes the
Python of a kernel and accepts things the compiler rejects, so these tests compile the kernels
with Triton's own NVIDIA toolchain (its bundled ``ptxas``), down to a cubin, in a subprocess
without ``TRITON_INTERPRET``. No driver or device is needed for that. They also check what
``torch.compile`` sees on a GPU: a ``triton_op`` whose kernels are captured into the graph, with
only their outputs written.
"""

import textwrap

import pytest

triton = pytest.importorskip("triton")

pytestmark = pytest.mark.triton


# Both dtypes, the empty recursion (lmax 0) and the general one; small degrees, because compile
# time grows fast with lmax (the recursion is unrolled).
CASES = [(0, "fp64"), (2, "fp32")]


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget

from eqscale._kernels import import_kernels

kernels = import_kernels("spherical_harmonics")
POINTER = {"fp32": "*fp32", "fp64": "*fp64"}
for lmax, dtype in CASES:
    for kernel in (
        kernels.spherical_harmonics_fwd_kernel,
        kernels.spherical_harmonics_bwd_kernel,
        kernels.spherical_harmonics_bwd_bwd_kernel,
    ):
        signature = {}
        for name in kernel.arg_names:
            if name in ("LMAX", "BLOCK_N"):
                signature[name] = "constexpr"
            elif name == "num_vectors":
                signature[name] = "i32"
            elif name == "coefficients_ptr":
                signature[name] = "*fp64"
            else:
                signature[name] = POINTER[dtype]
        source = triton.compiler.ASTSource(
            kernel, signature=signature, constexprs={"LMAX": lmax, "BLOCK_N": kernels.BLOCK_N}
        )
        compiled = triton.compile(source, target=GPUTarget("cuda", CAPABILITY, 32))
        assert compiled.asm.get("cubin"), "no cubin"
        print("compiled", kernel.__name__, lmax, dtype, len(compiled.asm["cubin"]))
"""


def test_kernels_compile_to_cubin(run_compiled):
    # sm_90 (H100); what differs for sm_80 lies below these kernels' simple loads and stores.
    script = f"CASES = {CASES!r}\nCAPABILITY = 90\n" + textwrap.dedent(_COMPILE_SCRIPT)
    stdout = run_compiled(script)
    assert stdout.count("compiled ") == 3 * len(CASES), stdout


_RADIUS_GRAPH_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget

from eqscale._kernels import import_kernels

kernels = import_kernels("radius_graph")
kernel = kernels.radius_graph_search_kernel
block_r, block_s = kernels.block_sizes(interpreted=False)
for self_interaction, half in FLAGS:
    signature = {}
    for name in kernel.arg_names:
        if name.isupper():
            signature[name] = "constexpr"
        elif name in ("cell_ptr", "pos_ptr"):
            signature[name] = "*fp32"
        elif name == "image_ptr":
            signature[name] = "*i32"
        elif name.endswith("_ptr"):
            signature[name] = "*i64"
        elif name == "loose2":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    constexprs = dict(SELF_INTERACTION=self_interaction, HALF=half, BLOCK_R=block_r, BLOCK_S=block_s)
    source = triton.compiler.ASTSource(kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", CAPABILITY, 32))
    assert compiled.asm.get("cubin"), "no cubin"
    print("compiled", self_interaction, half, len(compiled.asm["cubin"]))
"""


def test_radius_graph_kernel_compiles_to_cubin(run_compiled):
    # The search kernel with each integer filter on and off, at the GPU tile sizes.
    flags = [(False, False), (False, True), (True, False)]
    script = f"FLAGS = {flags!r}\nCAPABILITY = 90\n" + textwrap.dedent(_RADIUS_GRAPH_SCRIPT)
    stdout = run_compiled(script)
    assert stdout.count("compiled ") == len(flags), stdout


_TRACE_SCRIPT = """
import torch

import eqscale  # noqa: F401 - registers the operators

ops = torch.ops.eqscale


def function(vectors, coefficients, grad_sh, grad_grad):
    return (
        ops.spherical_harmonics_triton_fwd(vectors, coefficients, 3),
        ops.spherical_harmonics_triton_bwd(vectors, grad_sh, coefficients, 3),
        *ops.spherical_harmonics_triton_bwd_bwd(vectors, grad_sh, grad_grad, coefficients, 3),
    )


trace_on_fake_gpu(function, lambda: (
    torch.empty(10, 3, device="cuda"),
    torch.empty(16, dtype=torch.float64, device="cuda"),
    torch.empty(10, 16, device="cuda"),
    torch.empty(10, 3, device="cuda"),
))
"""


def test_triton_ops_trace_into_graph(run_compiled):
    stdout = run_compiled(_TRACE_SCRIPT, fake_gpu=True)
    assert "[(10, 16), (10, 3), (10, 16), (10, 3)]" in stdout, stdout
    # Each operator decomposes into its kernel launch (what lets inductor schedule it) ...
    assert stdout.count("triton_kernel_wrapper_functional(") == 3, stdout
    # ... and only the freshly allocated outputs are written: no input is cloned or mutated,
    # which would happen had torch failed to analyse the kernels.
    for clone_list in (
        "tensors_to_clone = ['sh_ptr']",
        "tensors_to_clone = ['grad_vectors_ptr']",
        "tensors_to_clone = ['grad_grad_sh_ptr', 'grad_vectors_ptr']",
    ):
        assert clone_list in stdout, stdout
