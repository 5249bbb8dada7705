"""Direct tests of ``eqscale::tp_conv_contract_triton`` against autograd through the reference.

Every open slot of the 4-linear form is the gradient of the reference convolution with respect
to that slot (slot 3, the forward, is the reference itself). On machines without a GPU the
kernels run in Triton's interpreter (set up by tests/conftest.py), which is slow: graphs and
plans here are tiny.
"""

import pytest
import torch

import eqscale
from eqscale._kernels import import_kernels
from eqscale.o3 import plan_tensor_product
from eqscale.ops.tp_conv import reference
from eqscale.ops.tp_conv._tables import kernel_tables
from eqscale.testing import assert_close, check_gradients

# The conftest fixture skips these tests where Triton cannot run (or fails them where CI needs it).
pytestmark = [
    pytest.mark.triton,
    pytest.mark.usefixtures("fused_backend"),
    pytest.mark.parametrize("fused_backend", ["triton"], indirect=True),
]

# One plan with every mode: uvw with two v channels and mul_out != mul1, uvu with and without
# weights, uuu; paths share irreps entries of x, Y and the output, so path groups are exercised.
MIXED = dict(
    irreps_in1="2x0e+2x1o",
    irreps_in2="2x0e+1x1o",
    irreps_out="2x0e+2x1o+3x1o",
    instructions=[
        (0, 0, 0, "uuu", True),
        (1, 1, 0, "uvu", True),
        (0, 1, 1, "uvu", False),
        (1, 0, 2, "uvw", True),
    ],
)
# Degree 4: more CG nonzeros per path than one block of the kernel.
HIGH_DEGREE = dict(
    irreps_in1="1x2e+1x4e",
    irreps_in2="1x0e+1x2e",
    irreps_out="1x4e",
    instructions=[(1, 1, 0, "uvu", True), (0, 1, 0, "uvu", True)],
)


def _op():
    return torch.ops.eqscale.tp_conv_contract_triton


def _plan(spec, layout="mul_ir"):
    return plan_tensor_product(spec["irreps_in1"], spec["irreps_in2"], spec["irreps_out"],
                               spec["instructions"], layout=layout)


def _graph(num_nodes, num_edges, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_nodes, (2, num_edges), generator=generator)


def _slots(plan, num_nodes, edge_index, dtype, shared, seed=0):
    """Random ``[x, Y, W, G]`` for the graph."""
    generator = torch.Generator().manual_seed(seed)
    num_edges = edge_index.shape[1]
    weight_shape = (plan.weight_numel,) if shared else (num_edges, plan.weight_numel)
    shapes = [(num_nodes, plan.irreps_in1.dim), (num_edges, plan.irreps_in2.dim), weight_shape,
              (num_nodes, plan.irreps_out.dim)]
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


def _expected(plan, slots, edge_index, num_nodes):
    """``[dF/dx, dF/dY, dF/dW, out]``: autograd through the reference convolution."""
    x, y, w, g = (t.detach().clone().requires_grad_(True) for t in slots)
    out = reference.tp_conv(x, y, w, edge_index, num_nodes, plan)
    grads = torch.autograd.grad(out, [x, y, w], g, allow_unused=True)
    grads = [torch.zeros_like(t) if grad is None else grad
             for grad, t in zip(grads, (x, y, w), strict=True)]
    return [*grads, out.detach()]


def _contract(plan, slots, open_slot, edge_index, num_nodes, deterministic):
    tables = kernel_tables(plan, slots[0].device)
    arguments = [None if slot == open_slot else t for slot, t in enumerate(slots)]
    shared = slots[2].dim() == 1
    sizes = [slots[0].shape[0], plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel,
             int(shared), plan.irreps_out.dim]
    return _op()(*arguments, edge_index, num_nodes, open_slot, tables.paths, tables.cg_index,
                 tables.cg_value, tables.layout, sizes, deterministic, plan.flops(1))


def _check_all_slots(plan, num_nodes, edge_index, dtype, shared, deterministic, slots=range(4),
                     seed=0):
    inputs = _slots(plan, num_nodes, edge_index, dtype, shared, seed)
    expected = _expected(plan, inputs, edge_index, num_nodes)
    for slot in slots:
        got = _contract(plan, inputs, slot, edge_index, num_nodes, deterministic)
        assert got.shape == expected[slot].shape and got.dtype == dtype
        assert_close(got, expected[slot], "value",
                     message=f"slot {slot} shared={shared} deterministic={deterministic}")


def test_path_table_columns_match_the_kernel():
    from eqscale.ops.tp_conv import _tables

    kernels = import_kernels("tp_conv")
    for name in ("PATH_MODE", "PATH_HAS_WEIGHT", "PATH_IN1_OFFSET", "PATH_IN1_MUL", "PATH_IN1_DIM",
                 "PATH_IN2_OFFSET", "PATH_IN2_MUL", "PATH_IN2_DIM", "PATH_OUT_OFFSET",
                 "PATH_OUT_MUL", "PATH_OUT_DIM", "PATH_WEIGHT_OFFSET", "PATH_CG_START",
                 "PATH_CG_COUNT", "NUM_PATH_FIELDS"):
        assert int(getattr(kernels, name)) == getattr(_tables, name), name
    assert (kernels.MODE_UVW, kernels.MODE_UVU, kernels.MODE_UUU) == tuple(_tables.MODES.values())


# Layout changes every address; accumulation changes only node slots 0 and 3: two combinations
# cover both (the interpreter is too slow for the full product).
@pytest.mark.parametrize(("layout", "deterministic"), [("mul_ir", False), ("ir_mul", True)])
def test_every_slot_every_mode_float64(layout, deterministic):
    plan = _plan(MIXED, layout)
    edge_index = _graph(3, 3, seed=1)
    _check_all_slots(plan, 3, edge_index, torch.float64, False, deterministic)


def test_shared_weights():
    plan = _plan(MIXED)
    edge_index = _graph(3, 3, seed=2)
    # Slot 1 reads the weights exactly as slot 0 does.
    _check_all_slots(plan, 3, edge_index, torch.float64, True, False, slots=(3, 0, 2))
    # Deterministic: one partial sum per chunk of edges, reduced afterwards.
    _check_all_slots(plan, 3, edge_index, torch.float64, True, True, slots=(2,))


def test_float32():
    plan = _plan(MIXED, "ir_mul")
    edge_index = _graph(3, 3, seed=3)
    _check_all_slots(plan, 3, edge_index, torch.float32, False, False, seed=3)


def test_degree_four_spans_several_cg_blocks():
    plan = _plan(HIGH_DEGREE)
    kernels = import_kernels("tp_conv")
    assert max(ins.cg_nnz for ins in plan.instructions) > kernels.BLOCK_N
    edge_index = _graph(2, 2, seed=4)
    _check_all_slots(plan, 2, edge_index, torch.float64, False, True, slots=(3, 0))


def test_tiles_smaller_than_multiplicities_and_degrees(monkeypatch):
    """Tiny tiles run every tile loop (channels, components, CG blocks) that large plans use."""
    kernels = import_kernels("tp_conv")
    monkeypatch.setattr(kernels, "MAX_BLOCK_C", 2)
    monkeypatch.setattr(kernels, "MAX_BLOCK_D", 2)
    monkeypatch.setattr(kernels, "BLOCK_N", 4)
    plan = plan_tensor_product("3x1o", "3x0e+1x1o", "3x1o+3x1e+3x1o",
                               [(0, 0, 0, "uuu", True), (0, 1, 1, "uvu", True),
                                (0, 0, 2, "uvw", True)])
    edge_index = _graph(2, 2, seed=5)
    _check_all_slots(plan, 2, edge_index, torch.float64, False, True)


def test_no_edges():
    plan = _plan(MIXED)
    empty = torch.zeros(2, 0, dtype=torch.int64)
    for deterministic in (False, True):
        for shared in (False, True):
            inputs = _slots(plan, 3, empty, torch.float64, shared)
            expected = _expected(plan, inputs, empty, 3)
            for slot in range(4):
                got = _contract(plan, inputs, slot, empty, 3, deterministic)
                assert got.shape == expected[slot].shape and not got.any()


@pytest.mark.parametrize("deterministic", [False, True])
def test_isolated_nodes_int32_and_more_receivers_than_senders(deterministic):
    plan = _plan(MIXED)
    # 4 sender rows, 5 receivers; nodes 3 and 4 neither send nor receive: their rows of both
    # node slots must stay exactly zero.
    edge_index = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 0]])
    inputs = _slots(plan, 4, edge_index, torch.float64, False)
    inputs[3] = torch.randn(5, plan.irreps_out.dim, dtype=torch.float64)
    expected = _expected(plan, inputs, edge_index, 5)
    for slot in (0, 3):
        got = _contract(plan, inputs, slot, edge_index.int(), 5, deterministic)
        assert_close(got, expected[slot])
        assert not got[3:].any() and got[:3].any()


def test_bad_arguments():
    plan = _plan(MIXED)
    edge_index = _graph(3, 4, seed=6)
    inputs = _slots(plan, 3, edge_index, torch.float64, False)
    tables = kernel_tables(plan, torch.device("cpu"))
    sizes = [3, plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel, 0, plan.irreps_out.dim]
    common = (tables.paths, tables.cg_index, tables.cg_value, tables.layout)
    with pytest.raises(ValueError, match="grad_out must be None with open_slot=3"):
        _op()(*inputs, edge_index, 3, 3, *common, sizes, False, 0)
    with pytest.raises(ValueError, match="edge_attrs must have shape"):
        _op()(inputs[0], inputs[1][:2], inputs[2], None, edge_index, 3, 3, *common, sizes, False, 0)
    with pytest.raises(ValueError, match="open_slot must be"):
        _op()(*inputs[:3], None, edge_index, 3, 5, *common, sizes, False, 0)
    with pytest.raises(TypeError, match="edge_attrs must be torch.float64"):
        _op()(inputs[0], inputs[1].float(), inputs[2], None, edge_index, 3, 3, *common, sizes,
              False, 0)


def test_public_op_gradcheck_and_gradgradcheck():
    """The autograd rule (backward and double backward from the same operator) through the
    public op; every slot is checked against the reference above, so the graph is minimal."""
    plan = plan_tensor_product("2x1o", "0e+1o", "2x1e", [(0, 1, 0, "uvu", True)])
    edge_index = torch.tensor([[0], [1]])
    inputs = _slots(plan, 2, edge_index, torch.float64, False)[:3]
    check_gradients(
        lambda x, y, w: eqscale.ops.tp_conv(x, y, w, edge_index, 2, plan=plan, backend="triton"),
        inputs, fast_mode=True, check_undefined_grad=False)
