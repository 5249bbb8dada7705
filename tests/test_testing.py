"""The shipped test helpers must catch what they are meant to catch."""

import pytest
import torch

import eqscale
from eqscale.testing import (
    assert_backend_parity,
    assert_close,
    assert_equivariant,
    check_gradients,
    irreps_matrix,
    tolerance,
)


def test_tolerance_table():
    assert tolerance(torch.float64) == (1e-10, 1e-12)
    assert tolerance(torch.float32).rtol == 1e-4
    assert tolerance(torch.float32, "grad").rtol == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="kind must be one of"):
        tolerance(torch.float32, "third")
    with pytest.raises(ValueError, match="dtype must be one of"):
        tolerance(torch.int64)


def test_assert_close_fails_beyond_tolerance():
    assert_close(torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64) + 1e-13)
    with pytest.raises(AssertionError, match="context"):
        assert_close(torch.ones(3), torch.ones(3) + 1e-2, message="context")


def test_irreps_matrix_is_a_representation():
    irreps = "2x0e+1o+2x2e+3o"
    first, second = eqscale.o3.random_rotation(dtype=torch.float64), eqscale.o3.random_rotation(dtype=torch.float64)
    for a, b in [(first, second), (-first, second), (-first, -second)]:
        assert_close(irreps_matrix(irreps, a @ b), irreps_matrix(irreps, a) @ irreps_matrix(irreps, b))
    for layout in ("mul_ir", "ir_mul"):
        matrix = irreps_matrix(irreps, first, layout)
        assert_close(matrix @ matrix.T, torch.eye(matrix.shape[0], dtype=torch.float64))


def test_assert_equivariant_accepts_equivariant_functions():
    positions = torch.randn(6, 3, dtype=torch.float64)

    def relative_sh(pos):
        # Invariant under translation, equivariant under O(3) and atom permutations.
        centered = pos - pos.mean(dim=0)
        return eqscale.ops.spherical_harmonics(centered, lmax=3, normalize=False)

    assert_equivariant(relative_sh, [positions], ["cartesian_points"], "0e+1o+2e+3o",
                       permuted_in=[True], permuted_out=True)


@pytest.mark.parametrize("broken", ["wrong_parity", "not_translation_invariant", "not_permutation_equivariant"])
def test_assert_equivariant_catches_broken_functions(broken):
    positions = torch.randn(6, 3, dtype=torch.float64)

    def function(pos):
        if broken == "not_translation_invariant":
            return eqscale.ops.spherical_harmonics(pos, lmax=1, normalize=False)
        if broken == "not_permutation_equivariant":
            return eqscale.ops.spherical_harmonics(pos - pos[0], lmax=1, normalize=False)
        return eqscale.ops.spherical_harmonics(pos - pos.mean(0), lmax=1, normalize=False)

    irreps_out = "0e+1e" if broken == "wrong_parity" else "0e+1o"
    with pytest.raises(AssertionError, match="equivariance broken"):
        assert_equivariant(function, [positions], ["cartesian_points"], irreps_out,
                           permuted_in=[True], permuted_out=True, trials=4)


def test_check_gradients_catches_a_wrong_backward():
    class WrongSquare(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**2

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 3 * x * grad

    check_gradients(lambda x: x**2, [torch.randn(4)])
    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        check_gradients(WrongSquare.apply, [torch.randn(4)], second_order=False)


def test_backend_parity_catches_a_difference():
    vectors = torch.randn(5, 3, dtype=torch.float64)
    assert_backend_parity(lambda v: eqscale.ops.spherical_harmonics(v, 2), [vectors], "reference")
    with pytest.raises(AssertionError, match="differs"):
        calls = []

        def drifting(v):
            calls.append(1)
            return eqscale.ops.spherical_harmonics(v, 2) * (1.0 + 1e-6 * len(calls))

        assert_backend_parity(drifting, [vectors], "reference")
