"""Wigner-D matrices and rotation utilities against e3nn and the group laws."""

# ruff: noqa: E741 - l is the physicists' name for the degree
import math

import pytest
import torch
from e3nn import o3 as e3nn_o3

from eqscale.o3 import (
    quaternion_to_matrix,
    random_orthogonal,
    random_rotation,
    rotation_to_axis,
    spherical_harmonics,
    wigner_D,
    wigner_D_from_quaternion,
)

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _eye(n):
    return torch.eye(n, dtype=F64)


@pytest.fixture
def e3nn_float64():
    # e3nn builds its so(3) generators in the default dtype; float32 would cap its accuracy at 1e-7.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def rotations():
    return random_rotation((2, 2), dtype=F64, generator=_gen(0)), random_rotation(
        (2, 2), dtype=F64, generator=_gen(1)
    )


# ----------------------------------------------------------------------------------------------
# group laws


@pytest.mark.parametrize("l", [0, 1, 2, 3, 5, 7, 10])
def test_homomorphism_and_orthogonality(l, rotations):
    R1, R2 = rotations
    D1, D2, D12 = wigner_D(l, R1), wigner_D(l, R2), wigner_D(l, R1 @ R2)
    assert D12.shape == (2, 2, 2 * l + 1, 2 * l + 1) and D12.dtype == F64
    torch.testing.assert_close(D12, D1 @ D2, rtol=0, atol=1e-13)
    torch.testing.assert_close(
        D1 @ D1.transpose(-1, -2), _eye(2 * l + 1).expand_as(D1), rtol=0, atol=1e-13
    )
    torch.testing.assert_close(
        torch.linalg.det(D1), torch.ones(2, 2, dtype=F64), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        wigner_D(l, R1.transpose(-1, -2)), D1.transpose(-1, -2), rtol=0, atol=1e-13
    )
    torch.testing.assert_close(wigner_D(l, _eye(3)), _eye(2 * l + 1), rtol=0, atol=1e-13)


def test_fit_points_are_well_conditioned():
    from eqscale.o3._spherical_harmonics import solid_harmonics_reference
    from eqscale.o3._wigner import _build_fit_table

    for l in [*range(10), 19, 30]:
        points, projector, coefficients = _build_fit_table(l, F64, torch.device("cpu"))
        design = solid_harmonics_reference(points, l, coefficients)[:, l * l :]
        singular = torch.linalg.svdvals(design)
        assert singular[0] / singular[-1] < 20, l
        torch.testing.assert_close(projector @ design, _eye(2 * l + 1), rtol=0, atol=1e-13)


def test_large_degree():
    R1, R2 = random_rotation(2, dtype=F64, generator=_gen(3))
    D1, D2, D12 = (wigner_D(20, R) for R in (R1, R2, R1 @ R2))
    torch.testing.assert_close(D12, D1 @ D2, rtol=0, atol=1e-12)
    torch.testing.assert_close(D1 @ D1.T, _eye(41), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# e3nn


def test_degree_one_is_the_matrix(e3nn_float64):
    # e3nn's l = 1 harmonics are (x, y, z) up to a factor, so its D^1 is R itself: no permutation.
    R = random_rotation(4, dtype=F64, generator=_gen(4))
    torch.testing.assert_close(wigner_D(1, R), R, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        wigner_D(1, R), e3nn_o3.Irrep(1, 1).D_from_matrix(R), rtol=0, atol=1e-14
    )


def test_equals_e3nn_proper(e3nn_float64):
    R = random_rotation(4, dtype=F64, generator=_gen(5))
    worst = 0.0
    for l in range(9):
        ours, theirs = wigner_D(l, R), e3nn_o3.Irrep(l, 1).D_from_matrix(R)
        worst = max(worst, float((ours - theirs).abs().max()))
    assert worst < 1e-12, worst  # e3nn's matrix exponential is the less accurate side


@pytest.mark.parametrize("l", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("p", [1, -1])
def test_equals_e3nn_improper(l, p, e3nn_float64):
    Q = random_orthogonal(8, dtype=F64, generator=_gen(6))
    assert (torch.linalg.det(Q) < 0).any() and (torch.linalg.det(Q) > 0).any()
    theirs = e3nn_o3.Irrep(l, p).D_from_matrix(Q)
    torch.testing.assert_close(wigner_D(l, Q, p=p), theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(wigner_D(e3nn_o3.Irrep(l, p), Q), theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        wigner_D(f"{l}{'e' if p == 1 else 'o'}", Q), theirs, rtol=0, atol=1e-12
    )


# ----------------------------------------------------------------------------------------------
# spherical harmonics


def _sh_block(x, l, normalize, normalization):
    return spherical_harmonics(x, l, normalize, normalization)[..., l * l :]


@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
@pytest.mark.parametrize("normalize", [True, False])
def test_spherical_harmonics_transform_with_D(normalization, normalize):
    x = torch.randn(6, 3, dtype=F64, generator=_gen(7))
    Q = random_orthogonal(6, dtype=F64, generator=_gen(8))
    Q[0] = -_eye(3)  # the inversion: Y_l(-x) = (-1)^l Y_l(x)
    rotated = torch.einsum("nij,nj->ni", Q, x)
    sh, sh_rotated = (
        spherical_harmonics(x, 8, normalize, normalization),
        spherical_harmonics(rotated, 8, normalize, normalization),
    )
    for l in range(9):
        block = slice(l * l, (l + 1) ** 2)
        # harmonics carry parity (-1)^l, so they transform with Irrep(l, (-1)^l)
        D = wigner_D(l, Q, p=(-1) ** l)
        expected = torch.einsum("nab,nb->na", D, sh[:, block])
        torch.testing.assert_close(
            sh_rotated[:, block],
            expected,
            rtol=0,
            atol=1e-12 * max(1.0, float(sh[:, block].abs().max())),
        )
        torch.testing.assert_close(
            sh_rotated[0, block], (-1) ** l * sh[0, block], rtol=0, atol=1e-12
        )


# ----------------------------------------------------------------------------------------------
# dtypes, batching, gradients, quaternions


def test_float32_and_shapes():
    R = random_rotation((3, 2), dtype=F64, generator=_gen(9))
    for l in (0, 3):
        D64 = wigner_D(l, R)
        D32 = wigner_D(l, R.float())
        assert D32.dtype == torch.float32 and D32.shape == (3, 2, 2 * l + 1, 2 * l + 1)
        torch.testing.assert_close(D32, D64.float(), rtol=0, atol=1e-6)
    assert wigner_D(2, R[0, 0]).shape == (5, 5)
    assert wigner_D(2, R[:0]).shape == (0, 2, 5, 5)


def test_gradients():
    R = random_rotation(2, dtype=F64, generator=_gen(10)).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: wigner_D(2, m), (R,))
    q = torch.randn(2, 4, dtype=F64, generator=_gen(11), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: wigner_D_from_quaternion(3, v), (q,))


def test_quaternions(e3nn_float64):
    q = torch.randn(5, 4, dtype=F64, generator=_gen(12))
    R = quaternion_to_matrix(q)
    torch.testing.assert_close(
        R, e3nn_o3.quaternion_to_matrix(q / q.norm(dim=-1, keepdim=True)), rtol=0, atol=1e-14
    )
    torch.testing.assert_close(quaternion_to_matrix(-3 * q), R, rtol=0, atol=1e-14)
    torch.testing.assert_close(R @ R.transpose(-1, -2), _eye(3).expand_as(R), rtol=0, atol=1e-14)
    for l in (0, 2, 4):
        torch.testing.assert_close(
            wigner_D_from_quaternion(l, q), wigner_D(l, R), rtol=0, atol=1e-14
        )
    # (cos t/2, sin t/2 n): rotation by t about n
    t = 0.7
    about_z = quaternion_to_matrix(
        torch.tensor([math.cos(t / 2), 0, 0, math.sin(t / 2)], dtype=F64)
    )
    expected = torch.tensor(
        [[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]], dtype=F64
    )
    torch.testing.assert_close(about_z, expected, rtol=0, atol=1e-15)


def test_random_rotation_and_orthogonal():
    R = random_rotation(4000, dtype=F64, generator=_gen(13))
    torch.testing.assert_close(R @ R.transpose(-1, -2), _eye(3).expand_as(R), rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(4000, dtype=F64), rtol=0, atol=1e-13)
    assert R.mean(0).abs().max() < 0.05  # the Haar mean of the matrix entries is 0
    assert torch.equal(
        random_rotation(3, dtype=F64, generator=_gen(1)),
        random_rotation((3,), dtype=F64, generator=_gen(1)),
    )
    assert (
        random_rotation().shape == (3, 3) and random_rotation().dtype == torch.get_default_dtype()
    )
    Q = random_orthogonal((10, 5), dtype=torch.float32, generator=_gen(14))
    assert Q.shape == (10, 5, 3, 3) and Q.dtype == torch.float32
    det = torch.linalg.det(Q)
    assert ((det - 1).abs() < 1e-5).any() and ((det + 1).abs() < 1e-5).any()
    assert ((det.abs() - 1).abs() < 1e-5).all()


# ----------------------------------------------------------------------------------------------
# rotation_to_axis


def _rodrigues(u, e):
    k, c = torch.linalg.cross(u, e.expand_as(u)), (u * e).sum(-1)
    K = torch.zeros(*u.shape[:-1], 3, 3, dtype=u.dtype)
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K = K - K.transpose(-1, -2)
    return _eye(3) + K + K @ K / (1 + c)[..., None, None]


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_rotation_to_axis(axis):
    e = _eye(3)["xyz".index(axis)]
    v = 3 * torch.randn(200, 3, dtype=F64, generator=_gen(15))
    near = -e + torch.tensor([[1e-9, 2e-9, -1e-9], [1e-15, 0, 3e-16], [1e-5, 1e-5, 0]], dtype=F64)
    special = torch.stack([-e, -2.5 * e, e, 4 * e])
    vectors = torch.cat([v, near, special])
    R = rotation_to_axis(vectors, axis)
    u = vectors / vectors.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(torch.einsum("nij,nj->ni", R, u), e.expand_as(u), rtol=0, atol=1e-14)
    torch.testing.assert_close(R @ R.transpose(-1, -2), _eye(3).expand_as(R), rtol=0, atol=1e-14)
    torch.testing.assert_close(
        torch.linalg.det(R), torch.ones(len(R), dtype=F64), rtol=0, atol=1e-14
    )
    # minimal: the rotation of Rodrigues' formula, whose axis u x e is fixed
    torch.testing.assert_close(R[:200], _rodrigues(u[:200], e), rtol=0, atol=1e-10)
    axis_vectors = torch.linalg.cross(u[:200], e.expand(200, 3))
    torch.testing.assert_close(
        torch.einsum("nij,nj->ni", R[:200], axis_vectors), axis_vectors, rtol=0, atol=1e-14
    )
    # parallel vectors: identity; exactly antiparallel: 180 degrees about the next axis in the
    # cycle x -> y -> z -> x
    torch.testing.assert_close(R[-2:], _eye(3).expand(2, 3, 3), rtol=0, atol=0)
    about = ("xyz".index(axis) + 1) % 3
    expected = -_eye(3)
    expected[about, about] = 1
    torch.testing.assert_close(R[-4:-2], expected.expand(2, 3, 3), rtol=0, atol=0)


def test_rotation_to_axis_float32_and_batching():
    v = torch.randn(4, 5, 3, generator=_gen(16))
    R = rotation_to_axis(v, "z")
    assert R.shape == (4, 5, 3, 3) and R.dtype == torch.float32
    torch.testing.assert_close(
        R @ v[..., None],
        torch.zeros_like(v)[..., None]
        + torch.tensor([0, 0, 1.0])[:, None] * v.norm(dim=-1)[..., None, None],
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_rotation_to_axis_gradients(axis):
    e = _eye(3)["xyz".index(axis)]
    # generic vectors on both branches, away from the antiparallel singularity
    v = torch.randn(6, 3, dtype=F64, generator=_gen(17))
    v = torch.cat([v, (e + 0.01 * v[:1]), (-e + 0.3 * v[1:2])]).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: rotation_to_axis(x, axis), (v,))
    assert torch.autograd.gradgradcheck(lambda x: rotation_to_axis(x, axis), (v,))
    # finite (if not unique) gradients at the parallel and antiparallel points
    w = torch.stack([e, -e, 2 * e]).requires_grad_()
    rotation_to_axis(w, axis).square().sum().backward()
    assert torch.isfinite(w.grad).all()


# ----------------------------------------------------------------------------------------------
# bad input


def test_errors():
    R = random_rotation(dtype=F64)
    with pytest.raises(ValueError, match="l must be >= 0"):
        wigner_D(-1, R)
    with pytest.raises(TypeError, match="l must be an int"):
        wigner_D(1.5, R)
    with pytest.raises(TypeError, match="l must be an int"):
        wigner_D(True, R)
    with pytest.raises(ValueError, match=r"R must have shape \(\.\.\., 3, 3\)"):
        wigner_D(1, torch.zeros(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="R must have shape"):
        wigner_D(1, torch.zeros(3, dtype=F64))
    with pytest.raises(TypeError, match="R must have a floating dtype"):
        wigner_D(1, torch.eye(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="R must be a torch.Tensor"):
        wigner_D(1, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="p must be"):
        wigner_D(1, R, p=0)
    with pytest.raises(ValueError, match="contradicts"):
        wigner_D("1o", R, p=1)
    with pytest.raises(ValueError, match=r"q must have shape \(\.\.\., 4\)"):
        wigner_D_from_quaternion(1, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="zero quaternion"):
        quaternion_to_matrix(torch.zeros(4))
    with pytest.raises(TypeError, match="q must have a floating dtype"):
        quaternion_to_matrix(torch.ones(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="vectors contains a zero-length vector"):
        rotation_to_axis(torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="vectors must have shape"):
        rotation_to_axis(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="axis must be one of"):
        rotation_to_axis(torch.ones(3), axis="w")
    with pytest.raises(TypeError, match="dtype"):
        random_rotation(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="shape"):
        random_orthogonal(-1)
