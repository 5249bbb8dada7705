"""The C++ operators ``eqscale::tp_conv_contract`` (slot by slot), ``eqscale::tp_conv_backward``
(slots 0-2 at once) and ``eqscale::tp_conv_double_backward`` called directly.

Each open slot must equal the autograd gradient of ``<reference.tp_conv(x, Y, W), G>`` with respect
to that slot (slot 3: the reference forward itself). The plans cover the templated channel kernels
(uvu, one edge channel, channel counts that are multiples of the SIMD width, l <= 4) and the generic
loop kernel (odd channel counts, several edge channels, uvw, uuu, l > 4), in both layouts.
"""

import pytest
import torch

from eqscale.o3 import plan_tensor_product, uvu_irreps_out
from eqscale.ops.tp_conv import reference
from eqscale.ops.tp_conv._tables import kernel_tables

pytestmark = pytest.mark.usefixtures("cpu_extension")

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
SLOTS = ("node_feats", "edge_attrs", "edge_weights", "output")


def _uvu(irreps_in, irreps_sh, lmax_out, **kwargs):
    allowed = [f"{d}{p}" for d in range(lmax_out + 1) for p in "eo"]
    irreps_out, instructions = uvu_irreps_out(irreps_in, irreps_sh, allowed)
    return plan_tensor_product(irreps_in, irreps_sh, irreps_out, instructions, **kwargs)


def _plans(layout):
    no_weights = [(i1, i2, o, "uvu", False) for i1, i2, o, *_ in uvu_irreps_out("4x0e+4x1o", "0e+1o")[1]]
    return {
        # Templated kernels: multiples of 8 (fp32 AVX2) and 4 (fp64); small and large l_out unrolls.
        "uvu_fast": _uvu("8x0e+8x1o+8x2e", "0e+1o+2e", 2, layout=layout),
        "uvu_fast_mul32_l4": _uvu("32x0e+32x4e", "0e+1o+4e", 4, layout=layout),
        # Templated for fp32 with AVX-512 too (16 lanes), and several channel chunks.
        "uvu_fast_mul16": _uvu("16x0e+16x1o+48x2e", "0e+1o+2e", 3, layout=layout),
        # Generic kernel: odd channel counts, l = 5, several edge channels.
        "uvu_generic": _uvu("3x0e+2x1o+2x5o", "0e+1o+5o", 5, layout=layout),
        "uvu_edge_channels": _uvu("3x0e+2x1o", "2x0e+2x1o", 1, layout=layout),
        # Paths listed against the column order, scalars between permuted blocks, and an output block
        # (3o) that no path writes: node rows are permuted block by block, the columns between copied.
        "uvu_unsorted_paths": plan_tensor_product(
            "8x1o+8x0e", "0e+1o", "8x1e+8x0e+8x3o+8x1o",
            [(1, 1, 3, "uvu", True), (1, 0, 1, "uvu", True), (0, 1, 0, "uvu", True), (0, 1, 1, "uvu", True),
             (0, 0, 3, "uvu", True)], layout=layout),
        "uvu_no_weights": plan_tensor_product("4x0e+4x1o", "0e+1o", uvu_irreps_out("4x0e+4x1o", "0e+1o")[0],
                                              no_weights, layout=layout),
        "uvw": plan_tensor_product("3x0e+2x1o", "2x0e+1x1o", "2x0e+3x1o+1x1e", mode="uvw", layout=layout),
        "uuu": plan_tensor_product("3x0e+3x1o", "3x0e+3x1o", "3x0e+3x1o+3x1e", mode="uuu", layout=layout),
        "uuu_no_weights": plan_tensor_product("3x0e+3x1o", "3x1o", "3x1o+3x0e+3x1e",
                                              [(0, 0, 0, "uuu", False), (1, 0, 1, "uuu", False),
                                               (1, 0, 2, "uuu", True)], layout=layout),
    }


PLAN_NAMES = list(_plans("mul_ir"))


def _sizes(plan, sender_rows, shared):
    return [sender_rows, plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel, int(shared),
            plan.irreps_out.dim]


def _contract(plan, slots, edge_index, num_nodes, open_slot, sender_rows, shared):
    tables = kernel_tables(plan, torch.device("cpu"))
    sizes = _sizes(plan, sender_rows, shared)
    arguments = list(slots)
    arguments[open_slot] = None
    return torch.ops.eqscale.tp_conv_contract(
        *arguments, edge_index, num_nodes, open_slot, tables.paths, tables.cg_index, tables.cg_value, tables.layout,
        sizes, True, plan.flops(1))


def _problem(plan, sender_rows, num_nodes, num_edges, dtype, shared, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(sender_rows, plan.irreps_in1.dim, generator=generator, dtype=dtype)
    y = torch.randn(num_edges, plan.irreps_in2.dim, generator=generator, dtype=dtype)
    w_shape = (plan.weight_numel,) if shared else (num_edges, plan.weight_numel)
    w = torch.randn(w_shape, generator=generator, dtype=dtype)
    g = torch.randn(num_nodes, plan.irreps_out.dim, generator=generator, dtype=dtype)
    senders = torch.randint(0, sender_rows, (num_edges,), generator=generator)
    receivers = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    return [x, y, w, g], torch.stack([senders, receivers])


def _expected(plan, slots, edge_index, num_nodes):
    """The reference forward and the autograd gradients of <forward, G>, the spec of each slot."""
    x, y, w, g = (t.detach().clone().requires_grad_(True) for t in slots)
    out = reference.tp_conv(x, y, w if plan.weight_numel else None, edge_index, num_nodes, plan)
    grads = torch.autograd.grad((out * g).sum(), [x, y, w], allow_unused=True)
    grads = [torch.zeros_like(t) if d is None else d for t, d in zip((x, y, w), grads, strict=True)]
    return [*grads, out.detach()]


def _assert_close(actual, expected, tol, what):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    if expected.numel() == 0:
        return
    scale = max(expected.abs().max().item(), 1.0)
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= tol * scale, f"{what}: max abs error {error:.3e} > {tol:.0e} x {scale:.3e}"


def _check_all_slots(plan, slots, edge_index, num_nodes, shared, what=""):
    expected = _expected(plan, slots, edge_index, num_nodes)
    dtype = slots[0].dtype
    for open_slot in range(4):
        actual = _contract(plan, slots, edge_index, num_nodes, open_slot, slots[0].shape[0], shared)
        tol = TOL[dtype] if open_slot == 3 else GRAD_TOL[dtype]
        _assert_close(actual, expected[open_slot], tol, f"{what} open slot {SLOTS[open_slot]}")


@pytest.mark.parametrize("shared", [False, True], ids=["per_edge", "shared"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("layout", ["mul_ir", "ir_mul"])
@pytest.mark.parametrize("name", PLAN_NAMES)
def test_every_slot_matches_reference_gradients(name, layout, dtype, shared):
    plan = _plans(layout)[name]
    slots, edge_index = _problem(plan, sender_rows=9, num_nodes=7, num_edges=40, dtype=dtype, shared=shared)
    _check_all_slots(plan, slots, edge_index, 7, shared, name)


def test_high_degree_nodes_span_several_edge_blocks():
    # 150 edges into 2 receivers: every node's edge list is cut into several blocks of the kernel.
    plan = _plans("mul_ir")["uvu_fast"]
    slots, edge_index = _problem(plan, sender_rows=4, num_nodes=2, num_edges=150, dtype=torch.float64, shared=False)
    _check_all_slots(plan, slots, edge_index, 2, False)


@pytest.mark.parametrize("name", ["uvu_fast", "uvw"])
def test_empty_edge_set(name):
    plan = _plans("mul_ir")[name]
    for shared in (False, True):
        slots, edge_index = _problem(plan, sender_rows=4, num_nodes=5, num_edges=0, dtype=torch.float64,
                                     shared=shared)
        for open_slot in range(4):
            out = _contract(plan, slots, edge_index, 5, open_slot, 4, shared)
            expected_shape = [(4, plan.irreps_in1.dim), (0, plan.irreps_in2.dim),
                              (plan.weight_numel,) if shared else (0, plan.weight_numel),
                              (5, plan.irreps_out.dim)][open_slot]
            assert tuple(out.shape) == expected_shape
            assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("name", ["uvu_fast", "uvu_generic"])
def test_isolated_nodes_extra_rows_and_bipartite_senders(name):
    # Senders from their own set of 13 rows; receivers only in [0, 6) of 20 output rows.
    plan = _plans("ir_mul")[name]
    slots, edge_index = _problem(plan, sender_rows=13, num_nodes=6, num_edges=40, dtype=torch.float64, shared=False)
    slots[3] = torch.randn(20, plan.irreps_out.dim, dtype=torch.float64)
    _check_all_slots(plan, slots, edge_index, 20, False, name)
    out = _contract(plan, slots, edge_index, 20, 3, 13, False)
    assert torch.count_nonzero(out[6:]) == 0
    unused_senders = sorted(set(range(13)) - set(edge_index[0].tolist()))
    grad_x = _contract(plan, slots, edge_index, 20, 0, 13, False)
    assert torch.count_nonzero(grad_x[unused_senders]) == 0


def test_no_weight_plan_takes_none_weights():
    plan = _plans("mul_ir")["uvu_no_weights"]
    assert plan.weight_numel == 0
    slots, edge_index = _problem(plan, sender_rows=5, num_nodes=5, num_edges=30, dtype=torch.float64, shared=False)
    expected = _expected(plan, slots, edge_index, 5)
    slots[2] = None
    for open_slot in (0, 1, 3):
        arguments = list(slots)
        actual = _contract(plan, arguments, edge_index, 5, open_slot, 5, False)
        _assert_close(actual, expected[open_slot], GRAD_TOL[torch.float64], SLOTS[open_slot])
    assert _contract(plan, slots, edge_index, 5, 2, 5, False).shape == (30, 0)


def test_int32_edge_index_gives_the_same_result():
    plan = _plans("mul_ir")["uvu_fast"]
    slots, edge_index = _problem(plan, sender_rows=6, num_nodes=6, num_edges=50, dtype=torch.float32, shared=False)
    for open_slot in range(4):
        a = _contract(plan, slots, edge_index, 6, open_slot, 6, False)
        b = _contract(plan, slots, edge_index.int(), 6, open_slot, 6, False)
        assert torch.equal(a, b)


def _assert_same_for_any_thread_count(compute, names):
    """compute() run with the default, one and two threads (and the default again) gives equal bits."""
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (previous, 1, max(previous, 2), previous):
            torch.set_num_threads(threads)
            results.append(compute())
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for index, name in enumerate(names):
            assert torch.equal(results[0][index], other[index]), name


@pytest.mark.parametrize("shared", [False, True], ids=["per_edge", "shared"])
def test_bitwise_deterministic_across_runs_and_thread_counts(shared):
    # Enough edges for many tasks (node tasks and the fixed edge chunks of the per-edge slots).
    plan = _plans("mul_ir")["uvu_fast"]
    slots, edge_index = _problem(plan, sender_rows=40, num_nodes=40, num_edges=3000, dtype=torch.float32,
                                 shared=shared)
    _assert_same_for_any_thread_count(
        lambda: [_contract(plan, slots, edge_index, 40, s, 40, shared) for s in range(4)], SLOTS)


def _bad_calls():
    plan = _plans("mul_ir")["uvu_fast"]
    slots, edge_index = _problem(plan, sender_rows=5, num_nodes=5, num_edges=8, dtype=torch.float32, shared=False)
    x, y, w, g = slots
    tables = kernel_tables(plan, torch.device("cpu"))
    sizes = [5, plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel, 0, plan.irreps_out.dim]
    good = dict(node_feats=x, edge_attrs=y, edge_weights=w, grad_out=None, edge_index=edge_index, num_nodes=5,
                open_slot=3, paths=tables.paths, cg_index=tables.cg_index, cg_value=tables.cg_value,
                layout=tables.layout, sizes=sizes)
    return {
        "node_feats shape": (dict(node_feats=x[:, :-1]), r"node_feats must have shape \(sizes\[0\], sizes\[1\]\)"),
        "edge_attrs rows": (dict(edge_attrs=y[:-1]), r"edge_attrs must have shape \(E, sizes\[2\]\)"),
        "edge_weights shape": (dict(edge_weights=w[:, :-1]), r"edge_weights must have shape \(E, sizes\[3\]\)"),
        "grad_out shape": (dict(open_slot=0, node_feats=None, grad_out=g[:-1]), r"grad_out must have shape"),
        "open slot given": (dict(grad_out=g), r"grad_out must be None: it is the open slot"),
        "missing input": (dict(edge_attrs=None), r"edge_attrs is required"),
        "dtype mismatch": (dict(edge_attrs=y.double()), r"edge_attrs must have dtype Float"),
        "non contiguous": (dict(node_feats=x.t().contiguous().t()), r"node_feats must be contiguous"),
        "edge_index dtype": (dict(edge_index=edge_index.float()), r"edge_index must be int64 \(or int32\)"),
        "edge_index shape": (dict(edge_index=edge_index[:1]), r"edge_index must have shape \(2, E\)"),
        "open_slot": (dict(open_slot=4), r"open_slot must be 0"),
        "layout": (dict(layout=2), r"layout must be 0 \(mul_ir\) or 1 \(ir_mul\)"),
        "sizes length": (dict(sizes=sizes[:5]), r"sizes must be \[sender_rows"),
        "paths dtype": (dict(paths=tables.paths.int()), r"paths must be a contiguous CPU int64 tensor"),
        "cg_value dtype": (dict(cg_value=tables.cg_value.float()), r"cg_value must be a contiguous CPU float64"),
        "path beyond dim": (dict(sizes=[5, 8, *sizes[2:]], node_feats=x[:, :8].contiguous()),
                            r"paths\[\d+\]: block of node_feats beyond dim_in1=8"),
    }, good


BAD = _bad_calls()[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_naming_the_argument(case):
    change, match = _bad_calls()[0][case]
    arguments = {**_bad_calls()[1], **change}
    with pytest.raises(RuntimeError, match=match):
        torch.ops.eqscale.tp_conv_contract(**arguments, deterministic=True, flops_per_edge=0)


@pytest.mark.parametrize(("row", "value", "bound"), [(0, 5, 5), (0, -1, 5), (1, 7, 5)])
def test_out_of_range_index_is_a_value_error(row, value, bound):
    # The cpu backend's only range check (tp_conv does not repeat it in Python): a ValueError, as
    # from the other backends' wrappers, naming the edge.
    arguments = dict(_bad_calls()[1])
    edge_index = arguments["edge_index"].clone()
    edge_index[row, 3] = value
    match = rf"edge_index out of range: edge_index\[{row}, 3\] = {value} is not in \[0, {bound}\)"
    with pytest.raises(ValueError, match=match):
        torch.ops.eqscale.tp_conv_contract(**{**arguments, "edge_index": edge_index}, deterministic=True,
                                           flops_per_edge=0)


# ---------------------------------------------------------------------------------------------
# tp_conv_backward: slots 0, 1 and 2 in one call
# ---------------------------------------------------------------------------------------------

def _backward(plan, slots, edge_index, num_nodes, wanted, sender_rows, shared):
    tables = kernel_tables(plan, torch.device("cpu"))
    sizes = _sizes(plan, sender_rows, shared)
    return torch.ops.eqscale.tp_conv_backward(
        *slots, edge_index, num_nodes, wanted, tables.paths, tables.cg_index, tables.cg_value, tables.layout, sizes,
        True, plan.flops(1))


def _backward_grid(test):
    """Parametrizes a backward test over plans (templated and generic), layouts, dtypes, weight sharing."""
    marks = [
        pytest.mark.parametrize("shared", [False, True], ids=["per_edge", "shared"]),
        pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"]),
        pytest.mark.parametrize("layout", ["mul_ir", "ir_mul"]),
        pytest.mark.parametrize("name", ["uvu_fast", "uvu_fast_mul16", "uvu_fast_mul32_l4", "uvu_generic", "uvw"]),
    ]
    for mark in marks:
        test = mark(test)
    return test


@_backward_grid
def test_backward_matches_reference_gradients_for_every_mask(name, layout, dtype, shared):
    # The templated plans take the fused pass (two or more gradients, per-edge weights); shared
    # weights and the generic plans fall back to one contraction per slot. Both must agree.
    plan = _plans(layout)[name]
    slots, edge_index = _problem(plan, sender_rows=9, num_nodes=7, num_edges=90, dtype=dtype, shared=shared)
    expected = _expected(plan, slots, edge_index, 7)
    for wanted in range(8):
        grads = _backward(plan, slots, edge_index, 7, wanted, 9, shared)
        for slot in range(3):
            if wanted >> slot & 1:
                _assert_close(grads[slot], expected[slot], GRAD_TOL[dtype], f"{name} wanted={wanted} {SLOTS[slot]}")
            else:
                assert grads[slot].shape == (0,)


def test_backward_with_many_edges_per_sender_and_isolated_rows():
    # 200 edges from 3 senders (several blocks each); senders 3-5 and receivers 4-5 have no edges.
    plan = _plans("mul_ir")["uvu_fast_mul16"]
    slots, edge_index = _problem(plan, sender_rows=3, num_nodes=4, num_edges=200, dtype=torch.float64, shared=False)
    slots[0] = torch.cat([slots[0], torch.randn(3, plan.irreps_in1.dim, dtype=torch.float64)])
    slots[3] = torch.cat([slots[3], torch.randn(2, plan.irreps_out.dim, dtype=torch.float64)])
    expected = _expected(plan, slots, edge_index, 6)
    grads = _backward(plan, slots, edge_index, 6, 7, 6, False)
    for slot in range(3):
        _assert_close(grads[slot], expected[slot], GRAD_TOL[torch.float64], SLOTS[slot])
    assert torch.count_nonzero(grads[0][3:]) == 0


def test_backward_empty_edge_set():
    plan = _plans("mul_ir")["uvu_fast_mul16"]
    slots, edge_index = _problem(plan, sender_rows=4, num_nodes=5, num_edges=0, dtype=torch.float32, shared=False)
    grads = _backward(plan, slots, edge_index, 5, 7, 4, False)
    assert grads[0].shape == (4, plan.irreps_in1.dim) and torch.count_nonzero(grads[0]) == 0
    assert grads[1].shape == (0, plan.irreps_in2.dim) and grads[2].shape == (0, plan.weight_numel)


def test_backward_is_bitwise_deterministic_across_thread_counts():
    plan = _plans("mul_ir")["uvu_fast_mul16"]
    slots, edge_index = _problem(plan, sender_rows=40, num_nodes=40, num_edges=3000, dtype=torch.float32,
                                 shared=False)
    _assert_same_for_any_thread_count(lambda: _backward(plan, slots, edge_index, 40, 7, 40, False), SLOTS[:3])


def test_backward_opcheck():
    plan = _plans("mul_ir")["uvu_fast"]
    slots, edge_index = _problem(plan, sender_rows=5, num_nodes=5, num_edges=20, dtype=torch.float64, shared=False)
    tables = kernel_tables(plan, torch.device("cpu"))
    sizes = [5, plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel, 0, plan.irreps_out.dim]
    for wanted in (7, 5, 2):
        torch.library.opcheck(
            torch.ops.eqscale.tp_conv_backward.default,
            (*(t.requires_grad_(True) for t in slots), edge_index, 5, wanted, tables.paths, tables.cg_index,
             tables.cg_value, tables.layout, sizes, True, plan.flops(1)))


@pytest.mark.parametrize("name", ["uvu_fast", "uvu_generic"])
def test_gradients_through_the_fused_backward(name):
    # tp_conv's backward takes tp_conv_backward when two or more inputs need gradients; its own
    # derivative (forces) is built from tp_conv_contract. gradcheck and gradgradcheck in fp64.
    from eqscale.ops import tp_conv
    from eqscale.testing import check_gradients

    plan = _plans("mul_ir")[name]
    slots, edge_index = _problem(plan, sender_rows=4, num_nodes=4, num_edges=7, dtype=torch.float64, shared=False)
    check_gradients(lambda x, y, w: tp_conv(x, y, w, edge_index, 4, plan=plan, backend="cpu"), slots[:3],
                    second_order=True)


def test_double_backward_fuses_the_gradients_of_each_cotangent():
    # Each first-order gradient's cotangent reaches the two other inputs through one fused call
    # (both open slots in one pass), not one contraction each; the values are checked above.
    from torch.utils._python_dispatch import TorchDispatchMode

    from eqscale.ops import tp_conv

    class CountCalls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.name())
            return func(*args, **(kwargs or {}))

    plan = _plans("mul_ir")["uvu_fast_mul16"]
    slots, edge_index = _problem(plan, sender_rows=6, num_nodes=6, num_edges=30, dtype=torch.float32, shared=False)
    leaves = [t.clone().requires_grad_(True) for t in slots[:3]]
    out = tp_conv(*leaves, edge_index, 6, plan=plan, backend="cpu")
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out), create_graph=True)
    with CountCalls() as calls:
        torch.autograd.grad(sum(g.sum() for g in grads), leaves, retain_graph=True)
    # No graph is built through it: all three cotangents go to the double backward, one sweep.
    assert calls.names.count("eqscale::tp_conv_double_backward") == 1
    assert calls.names.count("eqscale::tp_conv_backward") == 0
    assert calls.names.count("eqscale::tp_conv_contract") == 0
    # A graph built through it (third derivatives) takes the differentiable route: one fused call
    # per cotangent.
    with CountCalls() as calls:
        torch.autograd.grad(sum(g.sum() for g in grads), leaves, create_graph=True)
    assert calls.names.count("eqscale::tp_conv_backward") == 3
    assert calls.names.count("eqscale::tp_conv_double_backward") == 0
    assert calls.names.count("eqscale::tp_conv_contract") == 0


def test_fused_backward_counts_one_contraction_per_gradient():
    from eqscale.ops import tp_conv

    plan = _plans("mul_ir")["uvu_fast_mul16"]
    slots, edge_index = _problem(plan, sender_rows=6, num_nodes=6, num_edges=30, dtype=torch.float32, shared=False)
    for needs in ((True, True, True), (True, False, True), (False, True, False)):
        leaves = [t.clone().requires_grad_(need) for t, need in zip(slots[:3], needs, strict=True)]
        with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
            out = tp_conv(*leaves, edge_index, 6, plan=plan, backend="cpu")
            torch.autograd.grad(out, [t for t in leaves if t.requires_grad], torch.ones_like(out))
        assert counter.get_total_flops() == (1 + sum(needs)) * plan.flops(30)


def test_backward_bad_input():
    plan = _plans("mul_ir")["uvu_fast"]
    slots, edge_index = _problem(plan, sender_rows=5, num_nodes=5, num_edges=8, dtype=torch.float32, shared=False)
    with pytest.raises(RuntimeError, match="wanted must be a bit mask"):
        _backward(plan, slots, edge_index, 5, 8, 5, False)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape"):
        _backward(plan, [*slots[:3], slots[3][:-1]], edge_index, 5, 7, 5, False)


def _double_backward(plan, slots, cotangents, edge_index, num_nodes, sender_rows, shared):
    tables = kernel_tables(plan, torch.device("cpu"))
    sizes = _sizes(plan, sender_rows, shared)
    return torch.ops.eqscale.tp_conv_double_backward(
        *slots, *cotangents, edge_index, num_nodes, tables.paths, tables.cg_index, tables.cg_value, tables.layout,
        sizes, True, plan.flops(1))


def _expected_double(plan, slots, cotangents, edge_index, num_nodes):
    """Autograd through the reference's first-order gradients: d/d(x, Y, W) of sum_s <h_s, g_s>."""
    x, y, w = (t.detach().clone().requires_grad_(True) for t in slots[:3])
    out = reference.tp_conv(x, y, w, edge_index, num_nodes, plan)
    first = torch.autograd.grad((out * slots[3]).sum(), [x, y, w], create_graph=True)
    second = sum((h * g).sum() for h, g in zip(cotangents, first, strict=True))
    return torch.autograd.grad(second, [x, y, w])


@_backward_grid
def test_double_backward_matches_reference_second_derivatives(name, layout, dtype, shared):
    # Templated plans with per-edge weights take the one-sweep kernel; shared weights and the generic
    # plans fall back to one fused backward per cotangent. Both must equal autograd of the reference.
    plan = _plans(layout)[name]
    slots, edge_index = _problem(plan, sender_rows=9, num_nodes=7, num_edges=90, dtype=dtype, shared=shared)
    generator = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(t.shape, generator=generator, dtype=dtype) for t in slots[:3]]
    expected = _expected_double(plan, slots, cotangents, edge_index, 7)
    actual = _double_backward(plan, slots, cotangents, edge_index, 7, 9, shared)
    for slot in range(3):
        _assert_close(actual[slot], expected[slot], GRAD_TOL[dtype], f"{name} {SLOTS[slot]}")


@pytest.mark.parametrize("name", ["uvu_fast_mul16", "uvu_generic"])
def test_double_backward_takes_per_edge_cotangents_expanded_from_one_row(name):
    # What the backward of g.sum() hands over: one row, stride 0 along the edges.
    plan = _plans("mul_ir")[name]
    slots, edge_index = _problem(plan, sender_rows=9, num_nodes=7, num_edges=90, dtype=torch.float64, shared=False)
    cotangents = [torch.randn_like(slots[0])] + [torch.randn(1, t.shape[1], dtype=torch.float64).expand(t.shape)
                                                 for t in slots[1:3]]
    assert cotangents[2].stride(0) == 0
    expected = _expected_double(plan, slots, cotangents, edge_index, 7)
    actual = _double_backward(plan, slots, cotangents, edge_index, 7, 9, False)
    for slot in range(3):
        _assert_close(actual[slot], expected[slot], GRAD_TOL[torch.float64], f"{name} {SLOTS[slot]}")


def test_double_backward_with_many_edges_per_sender_isolated_rows_and_paths_without_weights():
    # 200 edges from 3 senders (several blocks each), rows without edges; a plan mixing weighted and
    # unweighted paths (the latter read W = 1 and contribute no weight gradient).
    plan = _plans("mul_ir")["uvu_fast_mul16"]
    instructions = [(ins.i_in1, ins.i_in2, ins.i_out, "uvu", index % 2 == 0)
                    for index, ins in enumerate(plan.instructions)]
    plan = plan_tensor_product(plan.irreps_in1, plan.irreps_in2, plan.irreps_out, instructions)
    slots, edge_index = _problem(plan, sender_rows=3, num_nodes=4, num_edges=200, dtype=torch.float64, shared=False)
    slots[0] = torch.cat([slots[0], torch.randn(3, plan.irreps_in1.dim, dtype=torch.float64)])
    slots[3] = torch.cat([slots[3], torch.randn(2, plan.irreps_out.dim, dtype=torch.float64)])
    cotangents = [torch.randn(t.shape, dtype=torch.float64) for t in slots[:3]]
    expected = _expected_double(plan, slots, cotangents, edge_index, 6)
    actual = _double_backward(plan, slots, cotangents, edge_index, 6, 6, False)
    for slot in range(3):
        _assert_close(actual[slot], expected[slot], GRAD_TOL[torch.float64], SLOTS[slot])
    assert torch.count_nonzero(actual[0][3:]) == 0


def test_double_backward_is_bitwise_deterministic_across_thread_counts():
    plan = _plans("mul_ir")["uvu_fast_mul16"]
    slots, edge_index = _problem(plan, sender_rows=40, num_nodes=40, num_edges=3000, dtype=torch.float32,
                                 shared=False)
    cotangents = [torch.randn(t.shape) for t in slots[:3]]
    _assert_same_for_any_thread_count(
        lambda: _double_backward(plan, slots, cotangents, edge_index, 40, 40, False), SLOTS[:3])


def test_double_backward_fake_impl_and_flops():
    plan = _plans("mul_ir")["uvu_fast"]
    slots, edge_index = _problem(plan, sender_rows=5, num_nodes=5, num_edges=20, dtype=torch.float64, shared=False)
    cotangents = [torch.randn_like(t) for t in slots[:3]]
    tables = kernel_tables(plan, torch.device("cpu"))
    sizes = [5, plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel, 0, plan.irreps_out.dim]
    # Called only where no graph is built: no autograd rule to test.
    torch.library.opcheck(
        torch.ops.eqscale.tp_conv_double_backward.default,
        (*slots, *cotangents, edge_index, 5, tables.paths, tables.cg_index, tables.cg_value, tables.layout, sizes,
         True, plan.flops(1)),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        _double_backward(plan, slots, cotangents, edge_index, 5, 5, False)
    assert counter.get_total_flops() == 6 * plan.flops(20)


def test_double_backward_bad_input():
    plan = _plans("mul_ir")["uvu_fast"]
    slots, edge_index = _problem(plan, sender_rows=5, num_nodes=5, num_edges=8, dtype=torch.float32, shared=False)
    cotangents = [torch.randn_like(t) for t in slots[:3]]
    with pytest.raises(RuntimeError, match=r"cot_edge_attrs must have shape edge_attrs.shape"):
        _double_backward(plan, slots, [cotangents[0], cotangents[1][:-1], cotangents[2]], edge_index, 5, 5, False)
    with pytest.raises(RuntimeError, match=r"cot_edge_weights must have dtype"):
        _double_backward(plan, slots, [*cotangents[:2], cotangents[2].double()], edge_index, 5, 5, False)
    with pytest.raises(RuntimeError, match=r"cot_edge_weights must be contiguous \(or one row expanded"):
        _double_backward(plan, slots, [*cotangents[:2], cotangents[2][:, :1].expand(cotangents[2].shape)],
                         edge_index, 5, 5, False)
    with pytest.raises(RuntimeError, match=r"cot_node_feats must be contiguous"):
        wide = torch.randn(slots[0].shape[1], slots[0].shape[0]).t()
        _double_backward(plan, slots, [wide, *cotangents[1:]], edge_index, 5, 5, False)
