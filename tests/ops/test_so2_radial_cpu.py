"""The C++ radial modulation of the SO(2) maps' inputs (``so2_radial_scale`` and its backward):
parity with the PyTorch formula in both dtypes, every combination of wanted gradients, the
SO(2) linear maps with and without the kernels, and input errors.

Channel counts are not multiples of a SIMD vector, so tails are always exercised.
"""

import pytest
import torch

from eqscale.ops.so2_conv import _linear, num_m_coefficients, num_radial, so2_weight_numel
from eqscale.ops.so2_conv._layout import m_blocks
from eqscale.testing import assert_close

pytestmark = pytest.mark.usefixtures("cpu_extension")

CASES = [(0, 0), (2, 0), (3, 2), (4, 4), (6, 3)]


def _inputs(lmax, mmax, dtype, num_edges=9, channels=19, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (num_edges, num_m_coefficients(lmax, mmax), channels)
    feats = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    radial = torch.randn(num_edges, num_radial(lmax, mmax), channels, generator=generator)
    return feats, radial.to(dtype)


def _expand(radial, lmax, mmax):
    """The radial multipliers repeated onto every m-major row: row (l, +m) and (l, -m) take (l, |m|)."""
    blocks = m_blocks(lmax, mmax)
    parts = []
    for (m, _, _), block in zip(blocks, radial.split([n for _, _, n in blocks], 1), strict=True):
        parts += [block] if m == 0 else [block, block]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("lmax", "mmax"), CASES)
def test_scale_matches_the_formula(lmax, mmax, dtype):
    feats, radial = _inputs(lmax, mmax, dtype)
    scaled = torch.ops.eqscale.so2_radial_scale(feats, radial, lmax, mmax)
    assert_close(scaled, feats * _expand(radial, lmax, mmax))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("lmax", "mmax"), CASES)
@pytest.mark.parametrize(("need_feats", "need_radial"), [(True, True), (True, False), (False, True)])
def test_backward_matches_autograd(lmax, mmax, dtype, need_feats, need_radial):
    feats, radial = _inputs(lmax, mmax, dtype)
    grad = torch.randn_like(feats)
    feats_leaf, radial_leaf = feats.clone().requires_grad_(), radial.clone().requires_grad_()
    (feats_leaf * _expand(radial_leaf, lmax, mmax)).backward(grad)
    grad_feats, grad_radial = torch.ops.eqscale.so2_radial_scale_backward(
        grad, feats, radial, lmax, mmax, need_feats, need_radial
    )
    if need_feats:
        assert_close(grad_feats, feats_leaf.grad)
    else:
        assert grad_feats.numel() == 0
    if need_radial:
        assert_close(grad_radial, radial_leaf.grad)
    else:
        assert grad_radial.numel() == 0


@pytest.mark.parametrize(("lmax", "mmax"), [(3, 2), (4, 4)])
def test_so2_linear_with_and_without_the_kernels(lmax, mmax, monkeypatch):
    feats, radial = _inputs(lmax, mmax, torch.float64, channels=5)
    weights = torch.randn(so2_weight_numel(lmax, mmax, 5, 3), dtype=torch.float64)
    upstream = torch.randn(feats.shape[0], feats.shape[1], 3, dtype=torch.float64)

    def run():
        leaves = [t.clone().requires_grad_() for t in (feats, weights, radial)]
        out = _linear.so2_linear(leaves[0], leaves[1], leaves[2], lmax, mmax, 3)
        out.backward(upstream)
        return out.detach(), *(leaf.grad for leaf in leaves)

    assert _linear._radial_kernels(feats)
    fused = run()
    monkeypatch.setattr(_linear, "_radial_kernels", lambda _: False)
    for ours, theirs in zip(fused, run(), strict=True):
        assert_close(ours, theirs)


def test_bad_input():
    feats, radial = _inputs(3, 2, torch.float32)
    with pytest.raises(RuntimeError, match="edge_feats must have 14 rows"):
        torch.ops.eqscale.so2_radial_scale(feats[:, 1:], radial, 3, 2)
    with pytest.raises(RuntimeError, match="radial must have shape"):
        torch.ops.eqscale.so2_radial_scale(feats, radial[:, 1:], 3, 2)
    with pytest.raises(RuntimeError, match="radial must have dtype"):
        torch.ops.eqscale.so2_radial_scale(feats, radial.double(), 3, 2)
    with pytest.raises(RuntimeError, match="need 0 <= mmax <= lmax"):
        torch.ops.eqscale.so2_radial_scale(feats, radial, 3, 4)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.eqscale.so2_radial_scale_backward(feats[:2], feats, radial, 3, 2, True, True)
