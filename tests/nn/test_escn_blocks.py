"""SO2Conv and the eSEN blocks: shapes, equivariance, exact grid projection, smooth cutoff."""

# ruff: noqa: E741 - l is the physicists' name for the degree
import math

import pytest
import torch

from eqscale.nn import EquivariantRMSNorm, RadialBasis, S2Activation, SO2Conv, s2_grid
from eqscale.o3 import sh_coefficients, wigner_D
from eqscale.o3._spherical_harmonics import solid_harmonics_reference
from eqscale.testing import assert_close, assert_equivariant, check_gradients

F64 = torch.float64


def _irreps(channels, lmax):
    return "+".join(f"{channels}x{l}{'eo'[l % 2]}" for l in range(lmax + 1))


def _rotate(features, rotation, lmax):
    """Applies ``D_l(R)`` to each degree block of ``(N, (L+1)^2, C)`` features."""
    blocks = [wigner_D(l, rotation) @ features[:, l * l : (l + 1) ** 2] for l in range(lmax + 1)]
    return torch.cat(blocks, dim=1)


def test_so2_conv_module_equivariant_with_radial_layer():
    torch.manual_seed(0)
    lmax, mmax, channels, num_nodes = 3, 2, 3, 4
    conv = SO2Conv(lmax, mmax, channels, channels, edge_features=5).double()
    edge_index = torch.tensor([[0, 1, 2, 3, 1], [1, 2, 3, 0, 3]])
    x = torch.randn(num_nodes, (lmax + 1) ** 2, channels, dtype=F64)
    vec = torch.randn(5, 3, dtype=F64)
    rbf = RadialBasis(5, cutoff=4.0)

    def run(x_flat, vec):
        features = rbf(vec.norm(dim=1))
        out = conv(x_flat.reshape(num_nodes, -1, channels), vec, edge_index, num_nodes, features)
        return out.reshape(num_nodes, -1)

    # Random weights include W2, which is SO(3)- but not parity-equivariant: proper rotations only.
    assert_equivariant(
        run,
        [x.reshape(num_nodes, -1), vec],
        [_irreps(channels, lmax), "1o"],
        _irreps(channels, lmax),
        layout="ir_mul",
        reflections=False,
        trials=2,
    )
    with pytest.raises(ValueError, match="edge_features"):
        conv(x, vec, edge_index, num_nodes)


def test_so2_conv_module_initialisation_keeps_scale():
    torch.manual_seed(1)
    conv = SO2Conv(4, 2, 16, 16).double()
    num_edges = 400
    x = torch.randn(num_edges, 25, 16, dtype=F64)
    out = conv(x, torch.randn(num_edges, 3, dtype=F64), torch.arange(num_edges).expand(2, -1), num_edges)
    # Only |m| <= 2 survive; the kept components keep roughly unit variance.
    assert 0.3 < float(out.detach().square().mean()) < 1.5


def test_s2_grid_projection_is_exact():
    lmax = 4
    points, weights = s2_grid(lmax, (lmax + 1, 2 * lmax + 1))  # the smallest exact grid
    assert_close(weights.sum(), torch.tensor(4 * math.pi, dtype=F64))
    Y = solid_harmonics_reference(points, lmax, sh_coefficients(lmax, "component", dtype=F64))
    assert_close(Y.T @ (weights[:, None] * Y) / (4 * math.pi), torch.eye((lmax + 1) ** 2, dtype=F64))
    with pytest.raises(ValueError, match="resolution must be at least"):
        s2_grid(lmax, (lmax, 2 * lmax + 1))


def test_s2_activation_round_trip_and_grid_symmetry():
    torch.manual_seed(2)
    lmax, channels = 3, 4
    act = S2Activation(lmax, channels, hidden=8).double()
    x = torch.randn(5, (lmax + 1) ** 2, channels, dtype=F64)
    # to_grid then from_grid is the identity on band-limited functions.
    assert_close(act.from_grid @ act.to_grid, torch.eye((lmax + 1) ** 2, dtype=F64))
    # Rotations about y by a grid step permute the grid points: exact equivariance.
    n_lon = 2 * (2 * lmax + 1)
    angle = 2 * math.pi / n_lon * 3
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=F64)
    assert_close(act(_rotate(x, rotation, lmax)), _rotate(act(x), rotation, lmax))
    check_gradients(act, [x[:2]], second_order=False, fast_mode=True)


def test_rms_norm_equivariant_and_normalised():
    torch.manual_seed(3)
    lmax, channels = 3, 5
    norm = EquivariantRMSNorm(lmax, channels).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(6, (lmax + 1) ** 2, channels, dtype=F64)
    assert_equivariant(
        lambda t: norm(t.reshape(6, -1, channels)).reshape(6, -1),
        [x.reshape(6, -1)],
        [_irreps(channels, lmax)],
        _irreps(channels, lmax),
        layout="ir_mul",
        trials=2,
    )
    plain = EquivariantRMSNorm(lmax, channels, eps=0.0, affine=False)(x)
    assert_close(plain.square().mean(dim=(1, 2)), torch.ones(6, dtype=F64))
    assert_close(plain[:, 0].mean(dim=1), torch.zeros(6, dtype=F64))
    with pytest.raises(ValueError, match="node_feats must have shape"):
        norm(x[:, :-1])


@pytest.mark.parametrize("basis", ["bessel", "gaussian"])
def test_radial_basis_smooth_cutoff(basis):
    rbf = RadialBasis(6, cutoff=3.0, basis=basis)
    r = torch.tensor([0.5, 1.7, 3.0 - 1e-4, 3.0, 3.5], dtype=F64, requires_grad=True)
    values = rbf(r)
    assert values.shape == (5, 6)
    assert float(values[3:].abs().max()) == 0.0
    (slope,) = torch.autograd.grad(values.sum(), r, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), r)
    # Value, slope and curvature all go to zero at the cutoff.
    assert float(values[2].abs().max()) < 1e-8 and float(slope[2].abs()) < 1e-5 and float(curvature[2].abs()) < 1e-1
    check_gradients(rbf, [r.detach()[:2]], fast_mode=True)
    with pytest.raises(ValueError, match="cutoff must be > 0"):
        RadialBasis(4, cutoff=0.0)
