"""Public tensor-product convolution against e3nn and cuequivariance (independent oracles)."""

import contextlib
import itertools

import numpy as np
import pytest
import torch

import eqscale
from eqscale.nn import TensorProductConv
from eqscale.o3 import plan_tensor_product, uvu_irreps_out
from eqscale.testing import assert_close, check_gradients

e3nn_o3 = pytest.importorskip("e3nn.o3")


def _graph(num_nodes, num_edges, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_nodes, (2, num_edges), generator=generator)


def _uvu_case(irreps_in, lmax_sh, lmax_out=None):
    irreps_sh = eqscale.o3.Irreps.spherical_harmonics(lmax_sh)
    lmax_out = lmax_sh if lmax_out is None else lmax_out
    allowed = [ir for ir in itertools.chain.from_iterable(
        (eqscale.o3.Irrep(d, 1), eqscale.o3.Irrep(d, -1)) for d in range(lmax_out + 1))]
    irreps_out, instructions = uvu_irreps_out(irreps_in, irreps_sh, allowed)
    return str(irreps_in), str(irreps_sh), str(irreps_out), instructions


# Seeded family: mixed parities, different multiplicities per irrep, l up to 4 (6 for cpu/reference).
CASES = {
    "scalars": _uvu_case("3x0e", 1),
    "l1": _uvu_case("2x0e+3x1o", 1),
    "l2_mixed": _uvu_case("2x0e+1x0o+2x1o+1x1e+2x2e", 2),
    "l4": _uvu_case("1x0e+1x2e+1x3o+1x4e", 4, 2),
}
LARGE_CASES = {"l6": _uvu_case("2x0e+1x3o+1x6e", 6, 6)}


@contextlib.contextmanager
def _default_dtype(dtype):
    # e3nn bakes its Clebsch-Gordan constants at the default dtype when a module is built.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _e3nn_conv(irreps_in, irreps_sh, irreps_out, instructions, x, sh, w, edge_index, num_nodes):
    with _default_dtype(x.dtype):
        tp = e3nn_o3.TensorProduct(irreps_in, irreps_sh, irreps_out, instructions,
                                   shared_weights=w.dim() == 1, internal_weights=False)
    messages = tp(x[edge_index[0]], sh, w)
    return torch.zeros(num_nodes, messages.shape[1], dtype=x.dtype).index_add(0, edge_index[1], messages)


def _inputs(irreps_in, irreps_sh, weight_numel, num_nodes, num_edges, dtype, seed=0, shared=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, eqscale.o3.Irreps(irreps_in).dim, generator=generator, dtype=dtype)
    sh = torch.randn(num_edges, eqscale.o3.Irreps(irreps_sh).dim, generator=generator, dtype=dtype)
    w_shape = (weight_numel,) if shared else (num_edges, weight_numel)
    w = torch.randn(w_shape, generator=generator, dtype=dtype)
    return x, sh, w


def _derivatives(function, inputs, seed=1):
    """Value, VJP with a random cotangent, and the derivative of <VJP, v> (double backward)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = function(*leaves)
    generator = torch.Generator().manual_seed(seed)
    cotangent = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, cotangent, create_graph=True)
    directions = [torch.randn(g.shape, generator=generator, dtype=g.dtype) for g in grads]
    second = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, directions, strict=True)), leaves)
    return [("value", out.detach())] + [("grad", g.detach()) for g in grads] + [("double_grad", s) for s in second]


def _size(backend):
    # The Triton interpreter runs kernels in Python: keep its graphs tiny.
    return (5, 9) if backend == "triton" else (12, 40)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", [case for case in CASES if case != "l4"])
def test_matches_e3nn_to_double_backward(backend, case, dtype):
    _check_e3nn_to_double_backward(backend, case, dtype)


# l=4 takes minutes per case in Triton's interpreter; the Triton kernel's l=4 path is checked
# against the reference in tests/ops/test_tp_conv_triton_kernel.py instead.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_matches_e3nn_to_double_backward_l4(request, backend_name, dtype):
    if backend_name == "cpu":
        request.getfixturevalue("cpu_extension")
    _check_e3nn_to_double_backward(backend_name, "l4", dtype)


def _check_e3nn_to_double_backward(backend, case, dtype):
    irreps_in, irreps_sh, irreps_out, instructions = CASES[case]
    plan = plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions)
    num_nodes, num_edges = _size(backend)
    edge_index = _graph(num_nodes, num_edges)
    inputs = _inputs(irreps_in, irreps_sh, plan.weight_numel, num_nodes, num_edges, dtype)

    ours = _derivatives(lambda x, sh, w: eqscale.ops.tp_conv(
        x, sh, w, edge_index, num_nodes, plan=plan, backend=backend), inputs)
    theirs = _derivatives(lambda x, sh, w: _e3nn_conv(
        irreps_in, irreps_sh, irreps_out, instructions, x, sh, w, edge_index, num_nodes), inputs)
    for (kind, got), (_, want) in zip(ours, theirs, strict=True):
        assert_close(got, want, kind, message=f"{case} {kind} on {backend}")


@pytest.mark.parametrize("case", list(LARGE_CASES))
def test_matches_e3nn_high_order(case):
    irreps_in, irreps_sh, irreps_out, instructions = LARGE_CASES[case]
    plan = plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions)
    edge_index = _graph(10, 30)
    inputs = _inputs(irreps_in, irreps_sh, plan.weight_numel, 10, 30, torch.float64)
    theirs = _derivatives(lambda x, sh, w: _e3nn_conv(
        irreps_in, irreps_sh, irreps_out, instructions, x, sh, w, edge_index, 10), inputs)
    for backend in ("reference", "cpu"):
        if not eqscale.backends.usable(backend, torch.device("cpu")):
            continue
        ours = _derivatives(lambda x, sh, w, backend=backend: eqscale.ops.tp_conv(
            x, sh, w, edge_index, 10, plan=plan, backend=backend), inputs)
        for (kind, got), (_, want) in zip(ours, theirs, strict=True):
            assert_close(got, want, kind, message=f"{case} {kind} on {backend}")


@pytest.mark.parametrize("layout", ["mul_ir", "ir_mul"])
def test_uvw_shared_and_per_edge_weights(backend, layout):
    instructions = [(0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True), (1, 0, 1, "uvw", True), (0, 1, 1, "uvw", True)]
    plan = plan_tensor_product("2x0e+2x1o", "0e+1o", "3x0e+2x1o", instructions, mode="uvw", layout=layout)
    num_nodes, num_edges = _size(backend)
    edge_index = _graph(num_nodes, num_edges, seed=3)
    for shared in (True, False):
        inputs = _inputs("2x0e+2x1o", "0e+1o", plan.weight_numel, num_nodes, num_edges, torch.float64, shared=shared)
        ours = _derivatives(lambda x, sh, w: eqscale.ops.tp_conv(
            x, sh, w, edge_index, num_nodes, plan=plan, backend=backend), inputs)
        with eqscale.backends.use_backend("reference"):
            expected = _derivatives(lambda x, sh, w: eqscale.ops.tp_conv(
                x, sh, w, edge_index, num_nodes, plan=plan), inputs)
        for (kind, got), (_, want) in zip(ours, expected, strict=True):
            assert_close(got, want, kind, message=f"uvw shared={shared} {kind} on {backend}")


@pytest.mark.parametrize("layout", ["mul_ir", "ir_mul"])
def test_matches_cuequivariance_channelwise(backend, layout):
    cue = pytest.importorskip("cuequivariance")
    cuet = pytest.importorskip("cuequivariance_torch")
    module = cuet.ChannelWiseTensorProduct(
        cue.Irreps("O3", "2x0e+3x1o+1x2e"), cue.Irreps("O3", "0e+1o+2e"), layout=getattr(cue, layout),
        shared_weights=False, internal_weights=False, method="naive", dtype=torch.float64,
    )
    conv = TensorProductConv.from_cuequivariance(module, backend=backend)
    num_nodes, num_edges = _size(backend)
    edge_index = _graph(num_nodes, num_edges, seed=5)
    inputs = _inputs("2x0e+3x1o+1x2e", "0e+1o+2e", module.weight_numel, num_nodes, num_edges, torch.float64)

    def theirs(x, sh, w):
        messages = module(x[edge_index[0]], sh, w)
        return torch.zeros(num_nodes, messages.shape[1], dtype=x.dtype).index_add(0, edge_index[1], messages)

    expected = _derivatives(theirs, inputs)
    actual = _derivatives(lambda x, sh, w: conv(x, sh, w, edge_index, num_nodes), inputs)
    for (kind, got), (_, want) in zip(actual, expected, strict=True):
        assert_close(got, want, kind, message=f"cuequivariance {layout} {kind} on {backend}")


def test_from_e3nn_with_internal_weights(backend):
    with _default_dtype(torch.float64):
        tp = e3nn_o3.FullyConnectedTensorProduct("2x0e+1x1o", "0e+1o", "2x0e+1x1o")
    conv = TensorProductConv.from_e3nn(tp, backend=backend)
    assert conv.internal_weights and conv.plan.instructions[0].connection_mode == "uvw"
    num_nodes, num_edges = _size(backend)
    edge_index = _graph(num_nodes, num_edges, seed=7)
    x, sh, _ = _inputs("2x0e+1x1o", "0e+1o", 1, num_nodes, num_edges, torch.float64)
    expected = torch.zeros(num_nodes, 5, dtype=torch.float64).index_add(0, edge_index[1], tp(x[edge_index[0]], sh))
    assert_close(conv(x, sh, None, edge_index, num_nodes), expected.detach())


def test_gradcheck_and_gradgradcheck(backend):
    irreps_in, irreps_sh, irreps_out, instructions = CASES["l1"]
    plan = plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions)
    edge_index = _graph(4, 6, seed=2)
    inputs = _inputs(irreps_in, irreps_sh, plan.weight_numel, 4, 6, torch.float64)
    # Full gradgradcheck means thousands of launches, far too slow in Triton's interpreter; there,
    # fast-mode gradcheck here, and the double backward is checked against e3nn above.
    interpreted = backend == "triton"
    check_gradients(lambda x, sh, w: eqscale.ops.tp_conv(x, sh, w, edge_index, 4, plan=plan, backend=backend), inputs,
                    fast_mode=interpreted, second_order=not interpreted)


def test_empty_edges_and_isolated_nodes(backend):
    irreps_in, irreps_sh, irreps_out, instructions = CASES["l1"]
    plan = plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions)
    x, sh, w = _inputs(irreps_in, irreps_sh, plan.weight_numel, 4, 0, torch.float64)
    x.requires_grad_(True)
    out = eqscale.ops.tp_conv(x, sh, w, torch.zeros(2, 0, dtype=torch.int64), 3, plan=plan, backend=backend)
    assert out.shape == (3, plan.irreps_out.dim) and not out.any()
    (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    assert grad is None or not grad.any()
    # Node 4 and 5 receive nothing: their rows stay exactly zero.
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    x, sh, w = _inputs(irreps_in, irreps_sh, plan.weight_numel, 6, 3, torch.float64)
    out = eqscale.ops.tp_conv(x, sh, w, edge_index, 6, plan=plan, backend=backend)
    assert not out[3:].any() and out[:3].any()


def test_flop_formula_counts_cg_nonzeros(fused_backend):
    irreps_in, irreps_sh, irreps_out, instructions = CASES["l2_mixed"]
    plan = plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions)
    num_edges = 7
    edge_index = _graph(5, num_edges)
    x, sh, w = _inputs(irreps_in, irreps_sh, plan.weight_numel, 5, num_edges, torch.float32)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        eqscale.ops.tp_conv(x, sh, w, edge_index, 5, plan=plan, backend=fused_backend)
    # Independent count from e3nn's dense Wigner-3j tensors: per edge and uvu path,
    # mul2*nnz (C.x2) + mul1*mul2*nnz_ik (x1 contraction) + mul1*mul2*d_out (weights), x2 for FLOPs.
    expected = 0
    ins_in, ins_sh, ins_out = (eqscale.o3.Irreps(s) for s in (irreps_in, irreps_sh, irreps_out))
    for i1, i2, i_out, _, _ in instructions:
        (mul1, ir1), (mul2, ir2), (_, ir_out) = ins_in[i1], ins_sh[i2], ins_out[i_out]
        cg = e3nn_o3.wigner_3j(ir1.l, ir2.l, ir_out.l).numpy()
        nnz = np.count_nonzero(np.abs(cg) > 1e-12)
        nnz_ik = np.count_nonzero(np.abs(cg).sum(axis=1) > 1e-12)
        expected += 2 * (mul2 * nnz + mul1 * mul2 * nnz_ik + mul1 * mul2 * ir_out.dim)
    assert counter.get_total_flops() == expected * num_edges == plan.flops(num_edges)


def test_cpu_backend_is_deterministic_across_thread_counts(cpu_extension):
    irreps_in, irreps_sh, irreps_out, instructions = CASES["l2_mixed"]
    plan = plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions)
    edge_index = _graph(50, 2000, seed=11)
    x, sh, w = _inputs(irreps_in, irreps_sh, plan.weight_numel, 50, 2000, torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 1, 2):
            torch.set_num_threads(count)
            results.append(eqscale.ops.tp_conv(x, sh, w, edge_index, 50, plan=plan, backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], other) for other in results[1:])


def test_compiled_model_trains_on_forces(fused_backend):
    """A tiny potential: SH of edge vectors, radial weights, one convolution, energy, forces."""
    irreps_in, irreps_sh, irreps_out, instructions = _uvu_case("4x0e", 2, 0)
    plan = plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions)
    torch.manual_seed(0)
    radial = torch.nn.Linear(1, plan.weight_numel, dtype=torch.float64)
    embedding = torch.randn(5, 4, dtype=torch.float64)
    positions = torch.randn(5, 3, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 1, 2], [1, 2, 3, 4, 0, 0, 4]])

    def loss_and_grads(pos):
        pos = pos.detach().requires_grad_(True)
        vectors = pos[edge_index[1]] - pos[edge_index[0]]
        sh = eqscale.ops.spherical_harmonics(vectors, 2, backend=fused_backend)
        weights = radial(vectors.norm(dim=-1, keepdim=True))
        out = eqscale.ops.tp_conv(embedding, sh, weights, edge_index, 5, plan=plan, backend=fused_backend)
        energy = out.sum()
        (forces,) = torch.autograd.grad(-energy, pos, create_graph=True)
        loss = forces.square().sum()
        return loss.detach(), torch.autograd.grad(loss, list(radial.parameters()))

    eager_loss, eager_grads = loss_and_grads(positions)
    # Forces inside the compiled region need dynamo to trace torch.autograd.grad (off by default).
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled_loss, compiled_grads = torch.compile(loss_and_grads, fullgraph=True)(positions)
    assert eager_loss.item() > 0
    assert_close(compiled_loss.detach(), eager_loss.detach())
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        assert_close(got, want, "grad")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(x=torch.randn(4, 3)), ValueError, "node_feats must have shape"),
        (dict(sh=torch.randn(5, 4)), ValueError, "edge_attrs must have shape"),
        (dict(w=torch.randn(6, 2)), ValueError, "edge_weights must have shape"),
        (dict(edge_index=torch.tensor([[0, 9], [1, 2]])), ValueError, "edge_index out of range"),
        (dict(edge_index=torch.tensor([[0, 1], [1, 4]])), ValueError, "edge_index out of range"),
        (dict(edge_index=torch.tensor([[0, -1], [1, 2]])), ValueError, "edge_index out of range"),
        (dict(edge_index=torch.tensor([[0.0, 1.0], [1.0, 2.0]])), TypeError, "edge_index must be int64"),
        (dict(edge_index=torch.tensor([0, 1])), ValueError, r"edge_index must have shape \(2, E\)"),
        (dict(num_nodes=-1), ValueError, "num_nodes must be a non-negative int"),
        (dict(sh=torch.randn(2, 4, dtype=torch.float64)), TypeError, "edge_attrs must have node_feats' dtype"),
        (dict(plan="2x0e"), TypeError, "plan must be a TensorProductPlan"),
        (dict(w=None), ValueError, "edge_weights are required"),
    ],
)
def test_bad_input(backend, change, error, match):
    irreps_in, irreps_sh, irreps_out, instructions = CASES["l1"]
    plan = plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions)
    arguments = dict(x=torch.randn(4, 11), sh=torch.randn(2, 4), w=torch.randn(2, plan.weight_numel),
                     edge_index=torch.tensor([[0, 1], [1, 2]]), num_nodes=4, plan=plan)
    arguments.update(change)
    with pytest.raises(error, match=match):
        eqscale.ops.tp_conv(arguments["x"], arguments["sh"], arguments["w"], arguments["edge_index"],
                            arguments["num_nodes"], plan=arguments["plan"], backend=backend)


def test_non_contiguous_inputs_are_accepted(backend):
    irreps_in, irreps_sh, irreps_out, instructions = CASES["l1"]
    plan = plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions)
    edge_index = _graph(4, 6, seed=4)
    x, sh, w = _inputs(irreps_in, irreps_sh, plan.weight_numel, 4, 6, torch.float64)
    x_strided = torch.cat([x, x], dim=1)[:, ::2]
    assert not x_strided.is_contiguous()
    expected = eqscale.ops.tp_conv(x_strided.contiguous(), sh, w, edge_index, 4, plan=plan, backend="reference")
    assert_close(eqscale.ops.tp_conv(x_strided, sh, w, edge_index.t().contiguous().t(), 4, plan=plan,
                                     backend=backend), expected)
