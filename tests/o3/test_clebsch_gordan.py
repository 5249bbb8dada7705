"""Wigner 3j / Clebsch-Gordan tensors against e3nn and the identities they must satisfy."""

import itertools

import pytest
import torch
from e3nn import o3 as e3nn_o3

from eqscale.o3 import (
    CGEntry,
    cg_nonzeros,
    clebsch_gordan,
    random_orthogonal,
    random_rotation,
    wigner_3j,
    wigner_D,
)


def _triples(lmax, l3max=None):
    l3max = lmax if l3max is None else l3max
    return [
        (l1, l2, l3)
        for l1, l2 in itertools.product(range(lmax + 1), repeat=2)
        for l3 in range(abs(l1 - l2), min(l1 + l2, l3max) + 1)
    ]


SMALL = _triples(4)
LARGE = [(5, 5, 0), (5, 6, 3), (6, 6, 6), (6, 5, 11), (6, 2, 5), (3, 6, 4), (1, 6, 7)]


def test_equals_e3nn_all_small_triples():
    worst = 0.0
    for triple in SMALL:
        ours = wigner_3j(*triple)
        theirs = e3nn_o3.wigner_3j(*triple, dtype=torch.float64)
        assert ours.shape == theirs.shape
        worst = max(worst, float((ours - theirs).abs().max()))
    assert worst < 1e-14, worst


@pytest.mark.parametrize("triple", LARGE)
def test_equals_e3nn_larger_degrees(triple):
    ours, theirs = wigner_3j(*triple), e3nn_o3.wigner_3j(*triple, dtype=torch.float64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-14)


def test_dtype_device_and_fresh_copies():
    C = wigner_3j(2, 1, 2, dtype=torch.float32)
    assert C.dtype == torch.float32 and C.device.type == "cpu"
    C.zero_()  # must not corrupt the cache
    assert wigner_3j(2, 1, 2).norm() == pytest.approx(1.0, abs=1e-15)
    assert (wigner_3j(2, 1, 2, device="cpu").norm() - 1).abs() < 1e-15


@pytest.mark.parametrize("triple", SMALL + LARGE)
def test_orthogonality(triple):
    # C maps V1 (x) V2 -> V3 equivariantly, so by Schur sum_ij C_ijk C_ijk' = a delta_kk', and the
    # trace gives a (2 l3 + 1) = |C|_F^2 = 1.
    C = wigner_3j(*triple)
    gram = torch.einsum("ijk,ijl->kl", C, C)
    torch.testing.assert_close(
        gram, torch.eye(C.shape[2], dtype=C.dtype) / C.shape[2], rtol=0, atol=1e-14
    )


@pytest.mark.parametrize("l1, l2", [(0, 3), (1, 1), (2, 3), (4, 4)])
def test_completeness(l1, l2):
    # The couplings to every l3 together form an orthogonal change of basis of V1 (x) V2.
    total = sum(
        (2 * l3 + 1) * torch.einsum("ijk,abk->ijab", wigner_3j(l1, l2, l3), wigner_3j(l1, l2, l3))
        for l3 in range(abs(l1 - l2), l1 + l2 + 1)
    )
    d1, d2 = 2 * l1 + 1, 2 * l2 + 1
    torch.testing.assert_close(
        total.reshape(d1 * d2, d1 * d2), torch.eye(d1 * d2, dtype=torch.float64), rtol=0, atol=1e-13
    )


def _assert_equivariant(C, D1, D2, D3):
    # z_k = sum_ij C_ijk x_i y_j  =>  z(D1 x, D2 y) = D3 z(x, y)
    left = torch.einsum("ijk,nia,njb->nabk", C, D1, D2)
    right = torch.einsum("nkc,abc->nabk", D3, C)
    torch.testing.assert_close(left, right, rtol=0, atol=1e-13)


@pytest.fixture(scope="module")
def wigner_matrices():
    R = random_rotation(3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    return [wigner_D(degree, R) for degree in range(7)]


@pytest.mark.parametrize("triple", _triples(6, 6)[::6] + [(6, 6, 6), (6, 6, 0), (4, 6, 2)])
def test_equivariance_rotations(triple, wigner_matrices):
    _assert_equivariant(wigner_3j(*triple), *(wigner_matrices[degree] for degree in triple))


@pytest.mark.parametrize(
    "irreps",
    [
        ("1o", "1o", "0e"),
        ("1o", "1o", "1e"),
        ("1o", "2e", "3o"),
        ("2o", "1e", "2o"),
        ("3o", "3o", "4e"),
    ],
)
def test_equivariance_reflections(irreps):
    Q = random_orthogonal(8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert (torch.linalg.det(Q) < 0).any()
    _assert_equivariant(clebsch_gordan(*irreps), *(wigner_D(ir, Q) for ir in irreps))


def test_clebsch_gordan_matches_wigner_3j():
    torch.testing.assert_close(clebsch_gordan("1o", "2e", "2o"), wigner_3j(1, 2, 2), rtol=0, atol=0)
    assert clebsch_gordan("1o", "1o", "2e", dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("triple", SMALL[::2] + LARGE[:3])
def test_nonzeros_reconstruct_dense(triple):
    dense = wigner_3j(*triple)
    entries = cg_nonzeros(*triple)
    assert all(isinstance(entry, CGEntry) for entry in entries)
    assert list(entries) == sorted(entries)
    rebuilt = torch.zeros_like(dense)
    for i, j, k, value in entries:
        assert abs(value) >= 1e-12
        rebuilt[i, j, k] = value
    assert torch.equal(rebuilt, dense)
    assert len(entries) == int((dense != 0).sum())


def test_nonzeros_sparsity_example():
    # (1 x 1 -> 0) is the dot product: diagonal, 1/sqrt(3) each.
    entries = cg_nonzeros(1, 1, 0)
    assert [(i, j, k) for i, j, k, _ in entries] == [(0, 0, 0), (1, 1, 0), (2, 2, 0)]
    assert all(value == pytest.approx(3**-0.5, abs=1e-15) for *_, value in entries)


def test_errors():
    with pytest.raises(ValueError, match="triangle"):
        wigner_3j(1, 1, 3)
    with pytest.raises(ValueError, match="triangle"):
        cg_nonzeros(0, 2, 1)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        wigner_3j(1, -1, 1)
    with pytest.raises(TypeError, match="l1 must be an int"):
        wigner_3j(1.0, 1, 1)
    with pytest.raises(TypeError, match="l3 must be an int"):
        cg_nonzeros(1, 1, True)
    with pytest.raises(TypeError, match="dtype"):
        wigner_3j(1, 1, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="parity"):
        clebsch_gordan("1o", "1o", "1o")
    with pytest.raises(ValueError, match="triangle"):
        clebsch_gordan("1e", "1e", "3e")
    with pytest.raises(ValueError, match="cannot parse"):
        clebsch_gordan("1q", "1o", "0e")
