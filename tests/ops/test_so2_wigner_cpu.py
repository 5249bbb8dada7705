"""The C++ Wigner-D recursion of the SO(2) convolution (``cpu`` backend): parity with the
reference recursion in both dtypes, first derivatives against the reference, gradcheck and
gradgradcheck, opcheck of both operators, torch.compile, FLOPs and input errors.

Edge counts are not multiples of the kernel's 8 lanes, so idle lanes are always exercised.
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from eqscale.o3 import random_rotation
from eqscale.ops import so2_conv, wigner_d
from eqscale.ops.so2_conv import num_radial, so2_weight_numel
from eqscale.ops.so2_conv import reference as so2_reference
from eqscale.ops.so2_conv._wigner import wigner_flops
from eqscale.testing import assert_backend_parity, assert_close, check_gradients

pytestmark = pytest.mark.usefixtures("cpu_extension")

F64 = torch.float64
LMAXES = [*range(11), 24]


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _rotations(num_edges, seed=0):
    return random_rotation(num_edges, dtype=F64, generator=_generator(seed))


def _edge_vec(num_edges, seed=0, dtype=F64, along_y=False):
    edge_vec = torch.randn(num_edges, 3, dtype=F64, generator=_generator(seed))
    if along_y:
        # The rotation is the identity or a half turn (where the minimal rotation is not smooth).
        edge_vec[:2] = torch.tensor([[0.0, 2.0, 0.0], [0.0, -0.5, 0.0]], dtype=F64)
    return edge_vec.to(dtype)


def _forward(rotations, lmax):
    return torch.ops.eqscale.so2_wigner_from_rotation(rotations, lmax)


def _backward(rotations, grad, lmax):
    return torch.ops.eqscale.so2_wigner_from_rotation_backward(rotations, grad, lmax)


def _reference_vjp(rotations, grad, lmax):
    if lmax == 0:
        return torch.zeros_like(rotations)
    rotations = rotations.detach().requires_grad_()
    (result,) = torch.autograd.grad(so2_reference.wigner_from_rotation(rotations, lmax), rotations, grad)
    return result


# ---------------------------------------------------------------------------------------------
# Parity with the reference recursion
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lmax", LMAXES)
def test_forward_matches_reference_float64(lmax):
    rotations = _rotations(21, seed=lmax)
    expected = so2_reference.wigner_from_rotation(rotations, lmax)
    torch.testing.assert_close(_forward(rotations, lmax), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lmax", LMAXES)
def test_forward_matches_reference_float32(lmax):
    rotations = _rotations(21, seed=lmax)
    expected = so2_reference.wigner_from_rotation(rotations, lmax)
    got = _forward(rotations.float(), lmax)
    assert got.dtype == torch.float32
    assert_close(got, expected.float())


@pytest.mark.parametrize("lmax", LMAXES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_matches_reference(lmax, dtype):
    rotations = _rotations(13, seed=lmax + 100)
    grad = torch.randn(13, so2_reference.wigner_from_rotation(rotations, lmax).shape[1], dtype=F64)
    expected = _reference_vjp(rotations, grad, lmax)
    got = _backward(rotations.to(dtype), grad.to(dtype), lmax)
    assert got.dtype == dtype
    if dtype == torch.float64:
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * scale)
    else:
        assert_close(got, expected.float(), "grad")


def test_public_wigner_d_matches_reference():
    edge_vec = _edge_vec(11, seed=1, along_y=True)
    for dtype in (torch.float64, torch.float32):
        vec = edge_vec.to(dtype)
        assert_close(wigner_d(vec, 6, backend="cpu"), wigner_d(vec, 6, backend="reference"))


def test_no_edges():
    assert _forward(torch.empty(0, 3, 3, dtype=F64), 0).shape == (0, 1)
    assert _forward(torch.empty(0, 3, 3, dtype=F64), 3).shape == (0, 84)
    assert _backward(torch.empty(0, 3, 3, dtype=F64), torch.empty(0, 84, dtype=F64), 3).shape == (0, 3, 3)


# ---------------------------------------------------------------------------------------------
# Derivatives of the public function
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lmax", range(6))
def test_gradcheck_and_gradgradcheck(lmax):
    edge_vec = _edge_vec(3, seed=lmax + 7)
    check_gradients(lambda v: wigner_d(v, lmax, backend="cpu"), [edge_vec], fast_mode=True)


@pytest.mark.parametrize("lmax", [1, 2, 5, 8])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_derivatives_match_reference(lmax, dtype):
    # First order runs the C++ backward; the second order differentiates the reference recursion.
    assert_backend_parity(lambda v: wigner_d(v, lmax), [_edge_vec(10, seed=lmax, dtype=dtype)], "cpu")


# ---------------------------------------------------------------------------------------------
# torch.library, torch.compile, FLOPs
# ---------------------------------------------------------------------------------------------


def test_opcheck():
    rotations = _rotations(5, seed=3)
    grad = torch.randn(5, 35, dtype=F64, generator=_generator(4))
    torch.library.opcheck(torch.ops.eqscale.so2_wigner_from_rotation.default, (rotations.requires_grad_(), 2))
    torch.library.opcheck(torch.ops.eqscale.so2_wigner_from_rotation_backward.default, (rotations.detach(), grad, 2))
    torch.library.opcheck(torch.ops.eqscale.so2_wigner_from_rotation.default, (rotations[:0].detach(), 2))


def test_torch_compile_first_order():
    edge_vec = _edge_vec(9, seed=5)
    grad = torch.randn(9, 84, dtype=F64, generator=_generator(6))
    eager_vec, compiled_vec = edge_vec.clone().requires_grad_(), edge_vec.clone().requires_grad_()
    eager = wigner_d(eager_vec, 3, backend="cpu")
    eager.backward(grad)
    torch._dynamo.reset()
    compiled = torch.compile(lambda v: wigner_d(v, 3, backend="cpu"), fullgraph=True, backend="aot_eager")
    out = compiled(compiled_vec)
    out.backward(grad)
    assert_close(out.detach(), eager.detach())
    assert_close(compiled_vec.grad, eager_vec.grad, "grad")


def test_flop_counter_sees_the_recursion():
    edge_vec = _edge_vec(7, seed=8).requires_grad_()
    with FlopCounterMode(display=False) as counter:
        wigner_d(edge_vec, 4, backend="cpu").sum().backward()
    flops = counter.get_flop_counts()["Global"]
    assert flops[torch.ops.eqscale.so2_wigner_from_rotation] == wigner_flops(7, 4) > 0
    assert flops[torch.ops.eqscale.so2_wigner_from_rotation_backward] == 2 * wigner_flops(7, 4)


def test_so2_conv_cpu_uses_the_kernel():
    lmax, mmax, channels, num_nodes, num_edges = 3, 2, 2, 4, 9
    generator = _generator(9)
    x = torch.randn(num_nodes, (lmax + 1) ** 2, channels, dtype=F64, generator=generator)
    edge_vec = _edge_vec(num_edges, seed=10)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    w = torch.randn(so2_weight_numel(lmax, mmax, channels, channels), dtype=F64, generator=generator)
    radial = torch.rand(num_edges, num_radial(lmax, mmax), channels, dtype=F64, generator=generator)
    conv = lambda x, v, w, r: so2_conv(x, v, edge_index, num_nodes, w, r, lmax=lmax, mmax=mmax)  # noqa: E731
    with FlopCounterMode(display=False) as counter:
        conv(x, edge_vec, w, radial)
    assert torch.ops.eqscale.so2_wigner_from_rotation in counter.get_flop_counts()["Global"]
    assert_backend_parity(conv, [x, edge_vec, w, radial], "cpu")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_operator_errors():
    rotations = _rotations(4)
    grad = torch.zeros(4, 35, dtype=F64)
    with pytest.raises(RuntimeError, match=r"rotations must have shape \(E, 3, 3\)"):
        _forward(rotations.reshape(4, 9), 2)
    with pytest.raises(RuntimeError, match="rotations must be float32 or float64"):
        _forward(rotations.half(), 2)
    with pytest.raises(RuntimeError, match="rotations must be float32 or float64"):
        _forward(rotations.long(), 2)
    with pytest.raises(RuntimeError, match="rotations must be contiguous"):
        _forward(rotations.transpose(1, 2), 2)
    with pytest.raises(RuntimeError, match=r"lmax must be in \[0, 64\]"):
        _forward(rotations, 65)
    with pytest.raises(RuntimeError, match=r"lmax must be in \[0, 64\]"):
        _forward(rotations, -1)
    with pytest.raises(RuntimeError, match=r"grad must have shape \(4, 84\)"):
        _backward(rotations, grad, 3)
    with pytest.raises(RuntimeError, match="grad must be a CPU tensor of the rotations' dtype"):
        _backward(rotations, grad.float(), 2)
    with pytest.raises(RuntimeError, match=r"lmax must be in \[0, 64\]"):
        _backward(rotations, grad, 65)


def test_public_errors():
    edge_vec = _edge_vec(4)
    with pytest.raises(ValueError, match="lmax must be <= 64"):
        wigner_d(edge_vec, 65, backend="cpu")
    with pytest.raises(TypeError, match="float32 or float64"):
        wigner_d(edge_vec.half(), 2, backend="cpu")
    with pytest.raises(ValueError, match=r"edge_vec must have shape \(E, 3\)"):
        wigner_d(edge_vec[:, :2], 2, backend="cpu")
    with pytest.raises(TypeError, match="edge_vec must be a floating-point tensor"):
        wigner_d(edge_vec.long(), 2, backend="cpu")
