"""SO(2) (eSCN) convolution: Wigner-D against e3nn and eqscale.o3, equivariance, the equivalence
with a CG tensor-product convolution, gradients, backend parity, torch.compile, errors.

Sizes stay tiny (a handful of nodes and edges, 1-3 channels); gradient checks run in float64.
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
import math

import e3nn.o3
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import eqscale
from eqscale import backends
from eqscale.o3 import Irreps, plan_tensor_product, random_rotation, rotation_to_axis, uvu_irreps_out, wigner_D
from eqscale.ops import edge_rotate_in, edge_rotate_out_scatter, so2_conv, wigner_d
from eqscale.ops.so2_conv import _linear as so2_linear_module
from eqscale.ops.so2_conv import (
    num_m_coefficients,
    num_radial,
    so2_weight_numel,
    unpack_wigner,
)
from eqscale.ops.so2_conv import reference as so2_reference
from eqscale.testing import assert_backend_parity, assert_close, assert_equivariant, check_gradients

F64 = torch.float64


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _graph(num_nodes, num_edges, seed=0):
    generator = _generator(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    edge_vec = torch.randn(num_edges, 3, dtype=F64, generator=generator)
    return edge_index, edge_vec


def _problem(lmax, mmax, channels_in, channels_out, num_nodes=4, num_edges=6, seed=0, dtype=F64):
    edge_index, edge_vec = _graph(num_nodes, num_edges, seed)
    generator = _generator(seed + 1)
    x = torch.randn(num_nodes, (lmax + 1) ** 2, channels_in, dtype=dtype, generator=generator)
    w = torch.randn(so2_weight_numel(lmax, mmax, channels_in, channels_out), dtype=dtype, generator=generator)
    radial = torch.rand(num_edges, num_radial(lmax, mmax), channels_in, dtype=dtype, generator=generator) + 0.5
    return x, edge_vec.to(dtype), edge_index, w, radial


def _sh_irreps(channels, lmax, flipped=False):
    """``C x (0e + 1o + 2e + ...)``, or the opposite parities."""
    parity = lambda l: "eo"[(l + flipped) % 2]  # noqa: E731
    return "+".join(f"{channels}x{l}{parity(l)}" for l in range(lmax + 1))


def _weights_only(w, lmax, mmax, channels_in, channels_out, keep):
    """Zeroes W2 (keep="W1") or W0 and W1 (keep="W2") in a flat weight vector."""
    pieces = so2_reference.split_weights(w, lmax, mmax, channels_in, channels_out)
    flat = []
    for m, matrices in enumerate(pieces):
        for index, matrix in enumerate(matrices):
            is_w2 = m > 0 and index == 1
            flat.append(matrix.reshape(-1) * float(is_w2 == (keep == "W2")))
    return torch.cat(flat)


def _require_fused(backend):
    """Skips when ``backend`` (already required by the conftest fixture) lacks these kernels."""
    if backend == "reference":
        return
    with eqscale.backends.use_backend(backend):
        try:
            so2_conv(
                *_problem(1, 1, 1, 1, num_edges=1)[:3],
                4,
                torch.zeros(so2_weight_numel(1, 1, 1, 1), dtype=F64),
                None,
                lmax=1,
                mmax=1,
            )
        except ValueError as error:
            if "no SO(2) convolution kernels" in str(error):
                pytest.skip(str(error))
            raise


# ---------------------------------------------------------------------------------------------
# Wigner-D
# ---------------------------------------------------------------------------------------------


def test_wigner_blocks_match_foundation_and_e3nn():
    rotations = random_rotation(4, dtype=F64, generator=_generator(0))
    blocks = so2_reference.wigner_blocks(rotations, 10)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # e3nn builds its Euler-angle constants at the default dtype
    try:
        for l, block in enumerate(blocks):
            assert_close(block, wigner_D(l, rotations), message=f"eqscale.o3.wigner_D, l={l}")
            assert_close(block, e3nn.o3.Irrep(l, 1).D_from_matrix(rotations), "grad", message=f"e3nn, l={l}")
    finally:
        torch.set_default_dtype(previous)


def test_wigner_homomorphism_and_orthogonality():
    first, second = random_rotation(2, dtype=F64, generator=_generator(1))
    product = so2_reference.wigner_blocks(torch.stack([first, second, first @ second]), 10)
    for l, block in enumerate(product):
        eye = torch.eye(2 * l + 1, dtype=F64)
        assert_close(block[2], block[0] @ block[1], message=f"D(R1 R2) = D(R1) D(R2), l={l}")
        assert_close(block @ block.transpose(1, 2), eye.expand_as(block), message=f"orthogonality, l={l}")


def test_wigner_d_takes_edges_to_the_y_axis():
    _, edge_vec = _graph(2, 7, seed=3)
    lmax = 10
    blocks = unpack_wigner(wigner_d(edge_vec, lmax), lmax)
    sh = eqscale.ops.spherical_harmonics(edge_vec, lmax, backend="reference")
    sh_axis = eqscale.ops.spherical_harmonics(torch.tensor([[0.0, 1.0, 0.0]], dtype=F64), lmax, backend="reference")
    rotated = torch.cat([blocks[l] @ sh[:, l * l : (l + 1) ** 2, None] for l in range(lmax + 1)], dim=1)[..., 0]
    assert_close(rotated, sh_axis.expand_as(rotated), message="D Y(v) = Y(e_y): only m = 0 survives")
    # The documented roll convention: the minimal rotation of eqscale.o3.rotation_to_axis.
    rotations = rotation_to_axis(edge_vec, "y")
    for l in (1, 4, 10):
        assert_close(blocks[l], wigner_D(l, rotations), message=f"l={l}")


def test_wigner_d_gradients():
    _, edge_vec = _graph(2, 3, seed=4)
    check_gradients(lambda v: wigner_d(v, 3), [edge_vec], fast_mode=True)


# ---------------------------------------------------------------------------------------------
# Equivariance, roll invariance, equivalence with a CG tensor-product convolution
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lmax", "mmax"), [(1, 1), (3, 2), (8, 3), (8, 8)])
@pytest.mark.parametrize("keep", ["W1", "W2"])
def test_so2_conv_equivariant_under_o3(lmax, mmax, keep):
    channels_in, channels_out = 2, 1
    x, edge_vec, edge_index, w, radial = _problem(lmax, mmax, channels_in, channels_out, seed=lmax)
    w = _weights_only(w, lmax, mmax, channels_in, channels_out, keep)
    num_nodes = x.shape[0]

    def conv(x_flat, vec):
        x3 = x_flat.reshape(num_nodes, (lmax + 1) ** 2, channels_in)
        return so2_conv(x3, vec, edge_index, num_nodes, w, radial, lmax=lmax, mmax=mmax).reshape(num_nodes, -1)

    # W1 keeps the parity of the input; W2 (the "odd" paths of the tensor product) flips it.
    irreps_out = _sh_irreps(channels_out, lmax, flipped=keep == "W2")
    assert_equivariant(
        conv,
        [x.reshape(num_nodes, -1), edge_vec],
        [_sh_irreps(channels_in, lmax), "1o"],
        irreps_out,
        layout="ir_mul",
        trials=2,
        generator=_generator(lmax),
    )


def test_so2_conv_independent_of_roll_angle():
    lmax, mmax = 4, 3
    x, edge_vec, edge_index, w, radial = _problem(lmax, mmax, 2, 2, seed=5)
    angles = torch.rand(edge_vec.shape[0], dtype=F64, generator=_generator(6)) * 2 * math.pi
    cos, sin, zero, one = angles.cos(), angles.sin(), torch.zeros_like(angles), torch.ones_like(angles)
    roll = torch.stack([cos, zero, sin, zero, one, zero, -sin, zero, cos], dim=1).reshape(-1, 3, 3)  # about y
    rolled = roll @ rotation_to_axis(edge_vec, "y")
    wigner = torch.cat([b.reshape(b.shape[0], -1) for b in so2_reference.wigner_blocks(rolled, lmax)], dim=1)
    edge = edge_rotate_in(x, wigner, edge_index, mmax)
    messages = so2_reference.so2_linear(edge, w, radial, lmax, mmax, 2)
    out = edge_rotate_out_scatter(messages, wigner, edge_index, x.shape[0])
    expected = so2_conv(x, edge_vec, edge_index, x.shape[0], w, radial, lmax=lmax, mmax=mmax)
    assert_close(out, expected)


def _tp_conv_case(lmax, channels):
    irreps_in = Irreps(_sh_irreps(channels, lmax))
    irreps_sh = Irreps.spherical_harmonics(lmax)
    allowed = [eqscale.o3.Irrep(l, p) for l in range(lmax + 1) for p in (1, -1)]
    irreps_out, instructions = uvu_irreps_out(irreps_in, irreps_sh, allowed)
    return plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions, layout="ir_mul")


def _tp_conv_by_degree(plan, x3, edge_vec, weights, edge_index, num_nodes, lmax):
    """tp_conv in ir_mul layout, its per-path outputs summed by degree: ``(N, (L+1)^2, C)``."""
    channels = x3.shape[2]
    sh = eqscale.ops.spherical_harmonics(edge_vec, lmax, backend="reference")
    out = eqscale.ops.tp_conv(
        x3.reshape(x3.shape[0], -1), sh, weights, edge_index, num_nodes, plan=plan, backend="reference"
    )
    summed = x3.new_zeros(num_nodes, (lmax + 1) ** 2, channels)
    offset = 0
    for mul, ir in plan.irreps_out:
        size = mul * ir.dim
        block = out[:, offset : offset + size].reshape(num_nodes, ir.dim, mul)
        summed[:, ir.l**2 : (ir.l + 1) ** 2] += block
        offset += size
    return summed


def _so2_weights_of(plan, tp_weights, lmax, channels):
    """The SO(2) weights of a tp_conv: its linear map for an edge along y (where D = I), read off
    in the (+m, -m) blocks, after checking that it has the block form [[W1, -W2], [W2, W1]]."""
    size = (lmax + 1) ** 2 * channels
    x3 = torch.eye(size, dtype=F64).reshape(size, (lmax + 1) ** 2, channels)
    along_y = torch.tensor([[0.0, 1.0, 0.0]], dtype=F64).expand(size, 3)
    self_loops = torch.arange(size).expand(2, size)
    out = _tp_conv_by_degree(plan, x3, along_y, tp_weights, self_loops, size, lmax)
    # M[(l3, m3, c_out), (l1, m1, c_in)], with out[i] = M e_i.
    M = out.reshape(size, -1).T.reshape((lmax + 1) ** 2, channels, (lmax + 1) ** 2, channels)
    index = lambda l, m: l * l + l + m  # noqa: E731
    pieces = []
    for m in range(lmax + 1):
        ls = range(m, lmax + 1)

        def block(m_out, m_in, ls=ls):
            rows = [M[index(l3, m_out), :, index(l1, m_in), :].T for l1 in ls for l3 in ls]
            n = len(ls)
            stacked = torch.stack(rows).reshape(n, n, channels, channels)  # [l1, l3, c_in, c_out]
            return stacked.permute(0, 2, 1, 3).reshape(n * channels, n * channels)

        if m == 0:
            pieces.append(block(0, 0))
            continue
        w1, w2 = block(m, m), block(-m, m)
        assert_close(block(-m, -m), w1, message=f"m={m}: the (-m, -m) block must equal W1")
        assert_close(block(m, -m), -w2, message=f"m={m}: the (+m, -m) block must equal -W2")
        pieces += [w1, w2]
    # Orders never mix: everything outside the |m1| = |m3| blocks is zero.
    orders = torch.tensor([abs(m) for l in range(lmax + 1) for m in range(-l, l + 1)])
    mixing = M.permute(0, 2, 1, 3)[orders[:, None] != orders[None, :]]
    assert float(mixing.abs().max()) < 1e-12
    return torch.cat([p.reshape(-1) for p in pieces])


@pytest.mark.parametrize("lmax", [1, 2, 3])
def test_so2_conv_equals_tp_conv_with_sh_filter(lmax):
    channels, num_nodes, num_edges = 2, 4, 7
    plan = _tp_conv_case(lmax, channels)
    generator = _generator(lmax)
    path_weights = torch.randn(plan.weight_numel, dtype=F64, generator=generator)
    so2_weights = _so2_weights_of(plan, path_weights, lmax, channels)

    edge_index, edge_vec = _graph(num_nodes, num_edges, seed=lmax)
    x = torch.randn(num_nodes, (lmax + 1) ** 2, channels, dtype=F64, generator=generator)
    scale = torch.rand(num_edges, dtype=F64, generator=generator) + 0.5  # a per-edge radial factor
    radial = scale[:, None, None].expand(num_edges, num_radial(lmax, lmax), channels)
    expected = _tp_conv_by_degree(plan, x, edge_vec, scale[:, None] * path_weights, edge_index, num_nodes, lmax)
    actual = so2_conv(x, edge_vec, edge_index, num_nodes, so2_weights, radial, lmax=lmax, mmax=lmax)
    assert_close(actual, expected)


# ---------------------------------------------------------------------------------------------
# Gradients, parity, compile, FLOPs
# ---------------------------------------------------------------------------------------------


def test_so2_conv_gradcheck_reference():
    x, edge_vec, edge_index, w, radial = _problem(2, 1, 2, 1, num_nodes=3, num_edges=4)
    check_gradients(
        lambda x, v, w, r: so2_conv(x, v, edge_index, 3, w, r, lmax=2, mmax=1, backend="reference"),
        [x, edge_vec, w, radial],
        fast_mode=True,
    )


# The fused path's SO(2) maps have their own first-order backward (eqscale.ops.so2_conv._linear)
# and fall back to the reference composition for higher orders: both are checked here.
@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
def test_so2_conv_gradcheck_fused(backend):
    _require_fused(backend)
    x, edge_vec, edge_index, w, radial = _problem(2, 1, 2, 1, num_nodes=3, num_edges=4)
    check_gradients(
        lambda x, v, w, r: so2_conv(x, v, edge_index, 3, w, r, lmax=2, mmax=1, backend=backend),
        [x, edge_vec, w, radial],
        fast_mode=True,
    )


# Orders with m > 0 run as one stacked GEMM or, when wide, as three complex GEMMs (Gauss); the
# width threshold is moved so that both forms meet these small problems, with unequal channel
# counts (the sums cannot then share the output's rows) and with and without radial multipliers.
@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("three_products", [True, False])
@pytest.mark.parametrize("channels", [(2, 1), (2, 2)])
@pytest.mark.parametrize("with_radial", [True, False])
def test_so2_maps_gemm_forms(backend, three_products, channels, with_radial, monkeypatch):
    _require_fused(backend)
    monkeypatch.setattr(so2_linear_module, "THREE_PRODUCTS_MIN_WIDTH", 1 if three_products else 10**9)
    lmax, mmax = 3, 2
    x, edge_vec, edge_index, w, radial = _problem(lmax, mmax, *channels, num_nodes=3, num_edges=5)
    conv = lambda backend, r: lambda x, v, w: so2_conv(  # noqa: E731
        x, v, edge_index, 3, w, r, lmax=lmax, mmax=mmax, backend=backend
    )
    radial = radial if with_radial else None
    check_gradients(conv(backend, radial), [x, edge_vec, w], fast_mode=True)
    # Each gradient alone (the others not requested) equals the reference's.
    for index in range(3):
        inputs = [t.clone().requires_grad_(i == index) for i, t in enumerate((x, edge_vec, w))]
        (ours,) = torch.autograd.grad(conv(backend, radial)(*inputs).sum(), inputs[index])
        (expected,) = torch.autograd.grad(conv("reference", radial)(*inputs).sum(), inputs[index])
        assert_close(ours, expected, kind="grad")


# Triton's derivatives are compared with the reference to second order in test_backend_parity;
# finite differences through its interpreter would take minutes.
@pytest.mark.parametrize("backend", ["reference", "cpu"], indirect=True)
def test_rotations_gradcheck(backend):
    _require_fused(backend)
    lmax, mmax, num_nodes, num_edges = 2, 1, 3, 3
    edge_index, edge_vec = _graph(num_nodes, num_edges, seed=7)
    wigner = wigner_d(edge_vec, lmax)
    x = torch.randn(num_nodes, (lmax + 1) ** 2, 2, dtype=F64, generator=_generator(8))
    y = torch.randn(num_edges, num_m_coefficients(lmax, mmax), 2, dtype=F64, generator=_generator(9))
    rotate_in = lambda x, d: edge_rotate_in(x, d, edge_index, mmax, receivers=True, backend=backend)  # noqa: E731
    rotate_out = lambda y, d: edge_rotate_out_scatter(y, d, edge_index, num_nodes, backend=backend)  # noqa: E731
    check_gradients(rotate_in, [x, wigner], fast_mode=True)
    check_gradients(rotate_out, [y, wigner], fast_mode=True)


# The C++ rotations work in SIMD vectors of channels (chunks of four, single vectors, a scalar
# tail); the Wigner-D gradient in groups of four dot products per row (d = 2l + 1 leaves one or
# three). These channel counts reach every path, in both dtypes; the oracle is the reference.
@pytest.mark.parametrize("backend", ["cpu"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 19, 67])
def test_rotation_kernels_match_reference_across_channel_counts(backend, dtype, channels):
    _require_fused(backend)
    lmax, mmax, num_nodes, num_edges = 4, 3, 5, 9
    edge_index, edge_vec = _graph(num_nodes, num_edges, seed=channels)
    generator = _generator(channels)
    x = torch.randn(num_nodes, (lmax + 1) ** 2, channels, dtype=dtype, generator=generator)
    upstream = torch.randn(num_edges, num_m_coefficients(lmax, mmax), channels, dtype=dtype, generator=generator)
    wigner = wigner_d(edge_vec.to(dtype), lmax)
    results = {}
    for name in ("reference", backend):
        inputs = [t.clone().requires_grad_() for t in (x, wigner)]
        rotated = edge_rotate_in(*inputs, edge_index, mmax, backend=name)
        results[name] = (rotated, *torch.autograd.grad((rotated * upstream).sum(), inputs))
    for ours, expected in zip(results[backend], results["reference"], strict=True):
        assert_close(ours, expected, kind="grad")


# The Triton interpreter runs each program in Python: its cases are the smallest that still cover
# every kernel (padding of degrees and channels, empty segments, |m| > mmax rows, both dtypes).
PARITY_CASES = {
    "cpu": [(0, 0, torch.float64), (2, 1, torch.float64), (4, 4, torch.float64), (3, 2, torch.float32)],
    "triton": [(2, 1, torch.float64), (1, 0, torch.float32)],
}


@pytest.mark.parametrize(
    ("backend", "case"),
    [(name, case) for name, cases in PARITY_CASES.items() for case in cases],
    indirect=["backend"],
)
def test_backend_parity(backend, case):
    _require_fused(backend)
    lmax, mmax, dtype = case
    num_nodes, num_edges, channels = (3, 4, 3) if backend == "triton" else (5, 9, 3)
    x, edge_vec, edge_index, w, radial = _problem(
        lmax, mmax, channels, 2, num_nodes=num_nodes, num_edges=num_edges, seed=lmax, dtype=dtype
    )
    edge_index[1, 0] = edge_index[1, 1]  # a node with two edges; with 4 edges over 3 nodes, maybe one with none
    assert_backend_parity(
        lambda x, v, w, r: so2_conv(x, v, edge_index, num_nodes, w, r, lmax=lmax, mmax=mmax),
        [x, edge_vec, w, radial],
        backend,
    )
    wigner = wigner_d(edge_vec, lmax)
    assert_backend_parity(lambda x, d: edge_rotate_in(x, d, edge_index, mmax, receivers=True), [x, wigner], backend)
    y = torch.randn(num_edges, num_m_coefficients(lmax, mmax), channels, dtype=dtype, generator=_generator(2))
    assert_backend_parity(lambda y, d: edge_rotate_out_scatter(y, d, edge_index, num_nodes), [y, wigner], backend)


@pytest.mark.parametrize("backend", ["cpu", "triton"], indirect=True)
def test_torch_compile_forces(backend):
    _require_fused(backend)
    lmax, mmax, num_nodes = 2, 2, 4
    x, edge_vec, edge_index, w, radial = _problem(lmax, mmax, 2, 2, num_nodes=num_nodes)
    pos = torch.randn(num_nodes, 3, dtype=F64, generator=_generator(3))
    edge_index = torch.tensor([[0, 1, 2, 3, 0, 2], [1, 2, 3, 0, 2, 0]])

    def energy_and_forces(pos):
        vec = pos[edge_index[1]] - pos[edge_index[0]]
        energy = (
            so2_conv(x, vec, edge_index, num_nodes, w, radial, lmax=lmax, mmax=mmax, backend=backend).square().sum()
        )
        (grad,) = torch.autograd.grad(energy, pos, create_graph=True)
        return energy, -grad

    pos_eager, pos_compiled = pos.clone().requires_grad_(), pos.clone().requires_grad_()
    eager_energy, eager_forces = energy_and_forces(pos_eager)
    torch._dynamo.reset()
    # aot_eager runs dynamo and AOTAutograd (fake impls, autograd registrations) without codegen.
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(energy_and_forces, fullgraph=True, backend="aot_eager")
        energy, forces = compiled(pos_compiled)
    assert_close(energy.detach(), eager_energy.detach())
    assert_close(forces.detach(), eager_forces.detach(), "grad")
    # Training on forces reaches the double backward through the compiled graph.
    (grad,) = torch.autograd.grad(forces.square().sum(), pos_compiled)
    (grad_eager,) = torch.autograd.grad(eager_forces.square().sum(), pos_eager)
    assert_close(grad, grad_eager, "double_grad")


def test_triton_tables_are_built_inside_traces():
    """The kernels' index tables are cached for eager calls, never shared with a trace."""
    pytest.importorskip("triton")
    from torch._subclasses.fake_tensor import FakeTensorMode, is_fake  # noqa: PLC0415

    from eqscale._kernels import import_kernels  # noqa: PLC0415

    tables = import_kernels("so2_conv").tables
    cpu = torch.device("cpu")
    with FakeTensorMode():
        assert all(is_fake(t) for t in tables(3, 1, cpu))  # nothing fake is cached ...
    eager = tables(3, 1, cpu)
    assert not any(is_fake(t) for t in eager)
    assert all(a is b for a, b in zip(eager, tables(3, 1, cpu), strict=True))  # ... real ones are
    with FakeTensorMode():
        assert all(is_fake(t) for t in tables(3, 1, cpu))  # and a trace gets its own


def _rotate_op(backend: str):
    """The rotations' operator (overload packet) of a fused backend."""
    ops = torch.ops.eqscale
    return ops.so2_rotate_contract_triton if backend == "triton" else ops.so2_rotate_contract


@pytest.mark.parametrize("backend", ["cpu", "triton"], indirect=True)
def test_opcheck_op(backend):
    _require_fused(backend)
    lmax, mmax, num_nodes, num_edges, channels = 2, 1, 3, 5, 2
    edge_index, edge_vec = _graph(num_nodes, num_edges, seed=11)
    generator = _generator(12)
    x = torch.randn(num_nodes, (lmax + 1) ** 2, channels, dtype=F64, generator=generator).requires_grad_()
    y = torch.randn(num_edges, num_m_coefficients(lmax, mmax), channels, dtype=F64, generator=generator)
    wigner = wigner_d(edge_vec, lmax).requires_grad_()
    op = _rotate_op(backend).default
    index = edge_index[0].contiguous()
    torch.library.opcheck(op, (x, wigner, None, index, num_nodes, 2, lmax, mmax))
    torch.library.opcheck(op, (None, wigner, y.requires_grad_(), index, num_nodes, 0, lmax, mmax))
    torch.library.opcheck(op, (x, None, y, index, num_nodes, 1, lmax, mmax))
    torch.library.opcheck(op, (x, wigner[:0], None, index[:0], num_nodes, 2, lmax, mmax))


@pytest.mark.parametrize("backend", ["cpu", "triton"], indirect=True)
def test_flop_counter_sees_the_rotations(backend):
    _require_fused(backend)
    lmax, mmax, channels = 3, 2, 4
    x, edge_vec, edge_index, w, radial = _problem(lmax, mmax, channels, channels, num_edges=5)
    with FlopCounterMode(display=False) as counter:
        so2_conv(x, edge_vec, edge_index, 4, w, radial, lmax=lmax, mmax=mmax, backend=backend)
    flops = counter.get_flop_counts()["Global"]
    rotate = flops[_rotate_op(backend)]
    from eqscale.ops.so2_conv._layout import rotate_flops  # noqa: PLC0415

    assert rotate == 2 * rotate_flops(5, lmax, mmax, channels)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_errors():
    x, edge_vec, edge_index, w, radial = _problem(2, 1, 2, 2)
    defaults = {
        "node_feats": x, "edge_vec": edge_vec, "edge_index": edge_index, "num_nodes": 4, "weights": w,
        "radial": radial, "lmax": 2, "mmax": 1, "backend": "reference",
    }  # fmt: skip

    def call(**changes):
        return so2_conv(**{**defaults, **changes})

    with pytest.raises(ValueError, match="mmax must be <= lmax"):
        call(mmax=3)
    with pytest.raises(ValueError, match="node_feats must have shape"):
        call(lmax=3)
    with pytest.raises(ValueError, match="zero-length"):
        call(edge_vec=torch.cat([edge_vec[:-1], torch.zeros(1, 3, dtype=F64)]))
    with pytest.raises(ValueError, match=r"edge_vec must have shape \(E, 3\)"):
        call(edge_vec=edge_vec[:, :2])
    with pytest.raises(ValueError, match="edge_index must have shape"):
        call(edge_index=edge_index[:, :-1])
    with pytest.raises(ValueError, match="edge_index out of range"):
        call(num_nodes=1)
    with pytest.raises(ValueError, match="weights must have"):
        call(weights=w[:-1])
    with pytest.raises(ValueError, match="radial must have shape"):
        call(radial=radial[:, :-1])
    with pytest.raises(TypeError, match="weights must have node_feats's dtype"):
        call(weights=w.float())
    with pytest.raises(ValueError, match="wigner must have shape"):
        edge_rotate_in(x, wigner_d(edge_vec, 1), edge_index, 1)
    with pytest.raises(ValueError, match="mmax must be <= lmax"):
        edge_rotate_in(x, wigner_d(edge_vec, 2), edge_index, 3)
    with pytest.raises(ValueError, match="edge_feats must have one of"):
        edge_rotate_out_scatter(torch.zeros(6, 4, 2, dtype=F64), wigner_d(edge_vec, 2), edge_index, 4)
    with pytest.raises(ValueError, match="zero-length"):
        wigner_d(torch.zeros(2, 3), 2)
    if backends.resolve(torch.device("cpu")) == "cpu":
        with pytest.raises(TypeError, match="edge_vec must be float32 or float64 for the 'cpu' backend"):
            wigner_d(edge_vec.half(), 2)
        with pytest.raises(TypeError, match="edge_feats must be float32 or float64"):
            edge_rotate_out_scatter(
                torch.zeros(6, 7, 2, dtype=torch.float16), wigner_d(edge_vec, 2).half(), edge_index, 4
            )
