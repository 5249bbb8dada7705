"""eqscale.ops.spherical_harmonics on every backend, against e3nn and the reference recursion.

The ``backend`` / ``fused_backend`` fixtures (tests/conftest.py) cover the Triton backend through
its interpreter; sizes stay small (<= 64 vectors) for it.
"""

import math

import e3nn.o3
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import eqscale
from eqscale.o3 import sh_coefficients, spherical_harmonics_flops

NORMALIZATIONS = ("integral", "component", "norm")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# Gradients get the 10x wider band of the project's tolerance table.
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


# Runs a test once, on the "cpu" backend, through the conftest fixture (so that it skips, or fails
# under EQSCALE_REQUIRE_BACKENDS, when the extension is not built).
only_cpu = pytest.mark.parametrize("backend", ["cpu"], indirect=True)


def interpreted(backend):
    """Whether this backend runs in Triton's (slow) interpreter, where the heaviest cases shrink."""
    return backend == "triton" and eqscale.backends.triton_interpreted()


def sh(vectors, lmax, normalize=True, normalization="component", backend=None):
    return eqscale.ops.spherical_harmonics(vectors, lmax, normalize, normalization, backend=backend)


def e3nn_sh(vectors, lmax, normalize=True, normalization="component"):
    """e3nn in float64, the independent oracle."""
    out = e3nn.o3.spherical_harmonics(
        list(range(lmax + 1)), vectors.double(), normalize, normalization=normalization
    )
    return out.to(vectors.dtype)


def assert_rel_close(actual, expected, tol, what=""):
    """max |actual - expected| <= tol * max |expected| (or <= tol when expected is all zeros)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    if expected.numel() == 0:
        return
    scale = expected.abs().max().item() or 1.0
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tol * scale, f"{what}: max abs error {error:.3e} > {tol:.0e} x {scale:.3e}"


def assert_grads_close(actual, expected, tol):
    names = ("backward", "double backward (x)", "double backward (grad_sh)")
    for name, a, e in zip(names, actual, expected, strict=True):
        assert_rel_close(a, e, tol, name)


def random_vectors(n, dtype=torch.float64, seed=0, scale=1.5):
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 3, dtype=dtype, generator=generator)


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "solid"])
@pytest.mark.parametrize("lmax", range(9))
def test_matches_e3nn(backend, lmax, normalize, dtype):
    x = random_vectors(33, dtype, seed=lmax)
    normalizations = NORMALIZATIONS
    if interpreted(backend):
        # One normalisation per case, rotating so that each one meets every lmax.
        normalizations = (NORMALIZATIONS[(lmax + normalize + (dtype == torch.float32)) % 3],)
    for normalization in normalizations:
        out = sh(x, lmax, normalize, normalization, backend=backend)
        assert out.shape == (33, (lmax + 1) ** 2)
        assert_rel_close(
            out, e3nn_sh(x, lmax, normalize, normalization), TOL[dtype], f"{normalization}"
        )


@pytest.mark.parametrize("shape", [(0, 3), (3,), (1, 3), (2, 5, 3), (2, 0, 3), (3, 1, 2, 3)])
def test_batch_shapes(backend, shape):
    x = random_vectors(math.prod(shape[:-1]), seed=1).reshape(shape)
    out = sh(x, 3, backend=backend)
    assert out.shape == (*shape[:-1], 16)
    assert_rel_close(out, e3nn_sh(x, 3), TOL[torch.float64])


def test_non_contiguous_input(backend):
    x = random_vectors(24, seed=2).t().contiguous().t()  # (24, 3) with strides (1, 24)
    assert not x.is_contiguous()
    assert_rel_close(sh(x, 4, backend=backend), e3nn_sh(x, 4), TOL[torch.float64])
    sliced = random_vectors(24, seed=3)[::2]
    assert_rel_close(
        sh(sliced, 4, normalize=False, backend=backend),
        e3nn_sh(sliced, 4, False),
        TOL[torch.float64],
    )


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_zero_vector(backend, normalization):
    # F.normalize maps 0 to 0, so only the l = 0 component survives, as in e3nn.
    x = torch.zeros(2, 3, dtype=torch.float64)
    for normalize in (True, False):
        out = sh(x, 4, normalize, normalization, backend=backend)
        assert torch.isfinite(out).all()
        assert_rel_close(out, e3nn_sh(x, 4, normalize, normalization), TOL[torch.float64])


def test_dtype_preserved(backend):
    for dtype in (torch.float32, torch.float64):
        assert sh(random_vectors(4, dtype), 2, backend=backend).dtype == dtype


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "solid"])
@pytest.mark.parametrize("lmax", [0, 1, 3, 6])
def test_gradcheck(backend, lmax, normalize):
    x = random_vectors(3, seed=4 + lmax).requires_grad_()
    # The reference (many small ops) and the Triton interpreter are slow in full mode; the
    # random-projection check still covers every output.
    fast = backend != "cpu"

    def function(v):
        out = sh(v, lmax, normalize, "component", backend=backend)
        # At lmax = 0 the reference output is a constant without grad_fn, which gradgradcheck
        # cannot handle; the zero term gives it one and changes no derivative.
        return out + 0.0 * v.sum() if lmax == 0 else out

    assert torch.autograd.gradcheck(function, (x,), fast_mode=fast)
    if interpreted(backend) and (lmax > 3 or normalize):
        # 5-15 s each in the interpreter (the normalisation in front is plain PyTorch, covered on
        # the other backends); test_gradient_parity_with_reference checks the double backward at
        # lmax 5 and 8 there. On a GPU all of them run.
        return
    assert torch.autograd.gradgradcheck(function, (x,), fast_mode=fast)


def _first_and_second_grads(x, lmax, backend, seed):
    generator = torch.Generator().manual_seed(seed)
    x = x.detach().requires_grad_()
    grad_sh = torch.randn(
        x.shape[0], (lmax + 1) ** 2, dtype=x.dtype, generator=generator
    ).requires_grad_()
    weight = torch.randn(x.shape, dtype=x.dtype, generator=generator)
    out = sh(x, lmax, normalize=True, backend=backend)
    (grad_x,) = torch.autograd.grad(out, x, grad_sh, create_graph=True)
    # Forces-like second pass: d/dx and d/dgrad_sh of <grad_x, weight>.
    second_x, second_g = torch.autograd.grad((grad_x * weight).sum(), (x, grad_sh))
    return grad_x.detach(), second_x, second_g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("lmax", [1, 2, 5, 8])
def test_gradient_parity_with_reference(fused_backend, lmax, dtype):
    x = random_vectors(40, dtype, seed=10 + lmax)
    expected = _first_and_second_grads(x, lmax, "reference", seed=lmax)
    actual = _first_and_second_grads(x, lmax, fused_backend, seed=lmax)
    assert_grads_close(actual, expected, GRAD_TOL[dtype])


@pytest.mark.parametrize("lmax", [15, 20])
@only_cpu
def test_large_lmax_cpu(backend, lmax):
    x = random_vectors(20, seed=lmax, scale=0.7)
    assert_rel_close(
        sh(x, lmax, backend="cpu"), sh(x, lmax, backend="reference"), TOL[torch.float64], "forward"
    )
    assert_rel_close(
        sh(x, lmax, normalize=False, backend="cpu"),
        sh(x, lmax, normalize=False, backend="reference"),
        TOL[torch.float64],
        "solid",
    )
    expected = _first_and_second_grads(x, lmax, "reference", seed=lmax)
    actual = _first_and_second_grads(x, lmax, "cpu", seed=lmax)
    assert_grads_close(actual, expected, GRAD_TOL[torch.float64])
    # float32 keeps its precision at these degrees ((2l-1)!! and the prefactors stay in range).
    expected = sh(x, lmax, backend="reference").float()
    assert_rel_close(sh(x.float(), lmax, backend="cpu"), expected, 1e-5, "fp32")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@only_cpu
def test_many_points_cpu(backend, dtype):
    # Several thread-pool tasks and a partial last block of SIMD lanes.
    x = random_vectors(4099, dtype, seed=11)
    assert_rel_close(sh(x, 5, backend="cpu"), sh(x, 5, backend="reference"), TOL[dtype], "forward")
    expected = _first_and_second_grads(x, 5, "reference", seed=1)
    actual = _first_and_second_grads(x, 5, "cpu", seed=1)
    assert_grads_close(actual, expected, GRAD_TOL[dtype])


def test_third_derivative_raises(fused_backend):
    x = random_vectors(4, seed=5).requires_grad_()
    out = sh(x, 3, backend=fused_backend)
    (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad_x.square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="third derivatives.*backend='reference'"):
        torch.autograd.grad(second.sum(), x)


def test_third_derivative_reference():
    x = random_vectors(4, seed=5).requires_grad_()
    out = sh(x, 3, backend="reference")
    (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad_x.square().sum(), x, create_graph=True)
    (third,) = torch.autograd.grad(second.sum(), x)
    assert torch.isfinite(third).all()


# ---------------------------------------------------------------------------------------------
# torch.library integration: compile, opcheck, FLOP counting
# ---------------------------------------------------------------------------------------------


@only_cpu
def test_torch_compile_forces_cpu(backend):
    torch._dynamo.reset()

    def energy_and_forces(x, weight):
        out = sh(x, 3, backend="cpu")
        energy = (out * weight).sum()
        (grad,) = torch.autograd.grad(energy, x, create_graph=True)
        return out, -grad

    x = random_vectors(10, seed=6)
    weight = torch.randn(10, 16, dtype=torch.float64)
    # aot_eager traces through dynamo and AOTAutograd (fake impls, autograd registrations) like
    # inductor does, without the C++ code generation that would dominate this test's runtime.
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(energy_and_forces, fullgraph=True, backend="aot_eager")
        x_compiled = x.clone().requires_grad_()
        out, forces = compiled(x_compiled, weight)
    x_eager = x.clone().requires_grad_()
    out_eager, forces_eager = energy_and_forces(x_eager, weight)
    assert_rel_close(out, out_eager.detach(), TOL[torch.float64], "sh")
    assert_rel_close(forces.detach(), forces_eager.detach(), TOL[torch.float64], "forces")
    # Training on forces: backward through the compiled forces reaches the double backward.
    (grad_compiled,) = torch.autograd.grad(forces.square().sum(), x_compiled)
    (grad_eager,) = torch.autograd.grad(forces_eager.square().sum(), x_eager)
    assert_rel_close(grad_compiled, grad_eager, GRAD_TOL[torch.float64], "loss on forces")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@only_cpu
def test_opcheck_cpu_ops(backend, dtype):
    lmax = 3
    x = random_vectors(7, dtype, seed=7)
    coefficients = sh_coefficients(lmax, "norm")
    grad_sh = torch.randn(7, 16, dtype=dtype)
    grad_grad = torch.randn(7, 3, dtype=dtype)
    ops = torch.ops.eqscale
    torch.library.opcheck(
        ops.spherical_harmonics_fwd.default, (x.clone().requires_grad_(), coefficients, lmax)
    )
    torch.library.opcheck(
        ops.spherical_harmonics_bwd.default,
        (x.clone().requires_grad_(), grad_sh.clone().requires_grad_(), coefficients, lmax),
    )
    # Its own backward is the third derivative, which is not implemented: no requires_grad here.
    torch.library.opcheck(
        ops.spherical_harmonics_bwd_bwd.default, (x, grad_sh, grad_grad, coefficients, lmax)
    )
    torch.library.opcheck(ops.spherical_harmonics_fwd.default, (x[:0], coefficients, lmax))


@pytest.mark.parametrize("lmax", [0, 4])
def test_flop_counter(fused_backend, lmax):
    x = random_vectors(12, seed=8)
    with FlopCounterMode(display=False) as counter:
        sh(x, lmax, normalize=False, backend=fused_backend)
    assert counter.get_total_flops() == spherical_harmonics_flops(12, lmax)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vectors", "lmax", "kwargs", "error", "match"),
    [
        ([[1.0, 2.0, 3.0]], 2, {}, TypeError, "vectors must be a torch.Tensor"),
        (torch.ones(4, 3, dtype=torch.int64), 2, {}, TypeError, "vectors must be a floating-point"),
        (torch.ones(4, 2), 2, {}, ValueError, r"vectors must have shape \(\.\.\., 3\)"),
        (torch.ones(4, 3, 1), 2, {}, ValueError, r"vectors must have shape \(\.\.\., 3\)"),
        (torch.ones(()), 2, {}, ValueError, r"vectors must have shape \(\.\.\., 3\)"),
        (torch.ones(4, 3), -1, {}, ValueError, "lmax must be >= 0"),
        (torch.ones(4, 3), 2.0, {}, TypeError, "lmax must be an int"),
        (torch.ones(4, 3), True, {}, TypeError, "lmax must be an int"),
        (
            torch.ones(4, 3),
            2,
            {"normalization": "unit"},
            ValueError,
            "normalization must be one of",
        ),
        (torch.ones(4, 3), 2, {"normalize": 1}, TypeError, "normalize must be a bool"),
        (torch.ones(4, 3), 2, {"backend": "cuda"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input(backend, vectors, lmax, kwargs, error, match):
    normalize = kwargs.get("normalize", True)
    normalization = kwargs.get("normalization", "component")
    chosen = kwargs.get("backend", backend)
    with pytest.raises(error, match=match):
        eqscale.ops.spherical_harmonics(vectors, lmax, normalize, normalization, backend=chosen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rejected_by_fused(fused_backend, dtype):
    with pytest.raises(TypeError, match="vectors must be float32 or float64.*backend='reference'"):
        sh(torch.ones(4, 3, dtype=dtype), 2, backend=fused_backend)


def test_float32_degree_limit_of_fused(fused_backend):
    assert torch.isfinite(sh(torch.ones(4, 3), 28, backend=fused_backend)).all()
    with pytest.raises(ValueError, match="lmax must be <= 28 for float32 vectors"):
        sh(torch.ones(4, 3), 29, backend=fused_backend)


def test_half_precision_reference():
    out = sh(torch.ones(4, 3, dtype=torch.bfloat16), 2, backend="reference")
    assert out.dtype == torch.bfloat16


def _cpu_op_arguments(lmax=2, n=5, dtype=torch.float64):
    return {
        "vectors": torch.randn(n, 3, dtype=dtype),
        "grad_sh": torch.randn(n, (lmax + 1) ** 2, dtype=dtype),
        "grad_grad_vectors": torch.randn(n, 3, dtype=dtype),
        "coefficients": sh_coefficients(lmax),
        "lmax": lmax,
    }


def _call(op, arguments):
    names = {
        "fwd": ("vectors", "coefficients", "lmax"),
        "bwd": ("vectors", "grad_sh", "coefficients", "lmax"),
        "bwd_bwd": ("vectors", "grad_sh", "grad_grad_vectors", "coefficients", "lmax"),
    }[op]
    return getattr(torch.ops.eqscale, f"spherical_harmonics_{op}")(
        *(arguments[name] for name in names)
    )


@pytest.mark.parametrize(
    ("ops", "change", "match"),
    [
        (
            ("fwd", "bwd", "bwd_bwd"),
            {"vectors": torch.randn(5, 4)},
            r"vectors must have shape \(N, 3\)",
        ),
        (
            ("fwd", "bwd", "bwd_bwd"),
            {"vectors": torch.randn(5, 3, 1)},
            r"vectors must have shape \(N, 3\)",
        ),
        (("fwd",), {"vectors": torch.randn(3, 5).t()}, "vectors must be contiguous"),
        (
            ("fwd",),
            {"vectors": torch.ones(5, 3, dtype=torch.int32)},
            "vectors must be float32 or float64",
        ),
        (
            ("fwd",),
            {"vectors": torch.ones(5, 3, dtype=torch.float16)},
            "vectors must be float32 or float64",
        ),
        (
            ("fwd", "bwd", "bwd_bwd"),
            {"coefficients": sh_coefficients(3)},
            r"coefficients must have shape",
        ),
        (("fwd",), {"coefficients": sh_coefficients(2).float()}, "coefficients must be float64"),
        (("fwd", "bwd", "bwd_bwd"), {"lmax": -1}, "lmax must be >= 0"),
        (
            ("bwd", "bwd_bwd"),
            {"grad_sh": torch.randn(5, 10, dtype=torch.float64)},
            r"grad_sh must have shape \(5, 9\)",
        ),
        (
            ("bwd", "bwd_bwd"),
            {"grad_sh": torch.randn(4, 9, dtype=torch.float64)},
            r"grad_sh must have shape \(5, 9\)",
        ),
        (
            ("bwd", "bwd_bwd"),
            {"grad_sh": torch.randn(5, 9)},
            "grad_sh must have the dtype of vectors",
        ),
        (
            ("bwd_bwd",),
            {"grad_grad_vectors": torch.randn(5, 2, dtype=torch.float64)},
            "grad_grad_vectors must have shape",
        ),
        (
            ("bwd_bwd",),
            {"grad_grad_vectors": torch.randn(3, 5, dtype=torch.float64).t()},
            "grad_grad_vectors must be",
        ),
    ],
)
@only_cpu
def test_cpu_ops_reject_bad_arguments(backend, ops, change, match):
    for op in ops:
        arguments = {**_cpu_op_arguments(), **change}
        with pytest.raises(RuntimeError, match=match):
            _call(op, arguments)


@only_cpu
def test_cpu_ops_float32_degree_bound(backend):
    # (2 lmax - 1)!! overflows float32 from lmax = 29 on: refused, not answered with inf/nan.
    lmax = 29
    arguments = {**_cpu_op_arguments(lmax=lmax, dtype=torch.float32)}
    for op in ("fwd", "bwd", "bwd_bwd"):
        with pytest.raises(ValueError, match="lmax must be <= 28 for float32 vectors"):
            _call(op, arguments)
    # Unit vectors: Q[28, 28] c_28 alone reaches 55!! |x|^28, ~1e37 |x|^28.
    x = torch.nn.functional.normalize(random_vectors(9, torch.float32, seed=9), dim=-1)
    out = _call("fwd", {**_cpu_op_arguments(lmax=28, n=9, dtype=torch.float32), "vectors": x})
    expected = sh(x.double(), 28, normalize=False, backend="reference").float()
    assert_rel_close(out, expected, 1e-5, "lmax 28 in float32")
