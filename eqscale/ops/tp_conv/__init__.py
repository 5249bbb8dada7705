"""Fused tensor-product convolution: gather at senders, tensor product, scatter at receivers.

``out[i] = sum over edges e = (j -> i) of TP(node_feats[j], edge_attrs[e]; edge_weights[e])``
for any :class:`~eqscale.o3.TensorProductPlan` (modes ``uvu``, ``uvw``, ``uuu``; layouts
``mul_ir`` and ``ir_mul``), without the ``E x dim_out`` message tensor of the unfused version.

How the derivatives are built: the convolution is the 4-linear form

    F(x, Y, W, G) = sum_e sum_paths c C_ijk x[sender_e]_ui Y_e,vj W_e,uvw G[receiver_e]_wk

and every fused backend provides one operator, ``contract``, that evaluates ``F`` with one slot
left open (0: node features, 1: edge attributes, 2: weights, 3: output), i.e. the gradient of
``F`` with respect to that slot. The forward pass opens slot 3. The derivative of ``contract(open
= s)`` with respect to input slot ``t``, given the cotangent ``h`` of slot ``s``, is ``contract(open
= t)`` with ``h`` placed in slot ``s``: the same operator with other arguments. Backward, double
backward (forces) and any higher order follow from this one rule, on every backend.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from eqscale import backends
from eqscale.o3._tensor_product import TensorProductPlan
from eqscale.ops._edge_index import check_edge_range
from eqscale.ops.tp_conv import cpu as _cpu
from eqscale.ops.tp_conv import reference as _reference
from eqscale.ops.tp_conv._tables import kernel_tables

__all__ = ["tp_conv"]

NODE_FEATS, EDGE_ATTRS, EDGE_WEIGHTS, OUTPUT = range(4)
_FUSED_DTYPES = (torch.float32, torch.float64)


def tp_conv(
    node_feats: torch.Tensor,
    edge_attrs: torch.Tensor,
    edge_weights: torch.Tensor | None,
    edge_index: torch.Tensor,
    num_nodes: int,
    *,
    plan: TensorProductPlan,
    deterministic: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Tensor-product convolution ``index_add(TP(node_feats[senders], edge_attrs, edge_weights))``.

    Args:
        node_feats: ``(N, irreps_in1.dim)`` node features, in ``plan.layout``.
        edge_attrs: ``(E, irreps_in2.dim)`` edge attributes (usually spherical harmonics).
        edge_weights: ``(E, weight_numel)`` per-edge weights (from a radial MLP),
            ``(weight_numel,)`` shared weights, or None when the plan has no weights.
        edge_index: ``(2, E)`` int64, row 0 the senders ``j``, row 1 the receivers ``i``.
        num_nodes: number of receiver rows of the output.
        plan: from :func:`eqscale.o3.plan_tensor_product`.
        deterministic: on Triton, sum by receiver-sorted segments instead of atomics (the C++
            backend is always deterministic).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``; None follows
            :mod:`eqscale.backends`.

    Returns:
        ``(num_nodes, irreps_out.dim)`` in ``plan.layout``.

    Example:
        >>> import torch, eqscale
        >>> plan = eqscale.o3.plan_tensor_product("8x0e+8x1o", "0e+1o", "8x0e+8x1o", mode="uvu")
        >>> x, sh = torch.randn(4, 32), torch.randn(6, 4)
        >>> edge_index = torch.tensor([[0, 1, 2, 3, 0, 2], [1, 0, 3, 2, 2, 0]])
        >>> weights = torch.randn(6, plan.weight_numel)
        >>> eqscale.ops.tp_conv(x, sh, weights, edge_index, 4, plan=plan).shape
        torch.Size([4, 32])
    """
    _validate(node_feats, edge_attrs, edge_weights, edge_index, num_nodes, plan)
    chosen = backends.resolve(node_feats.device, backend)
    if chosen != "cpu":
        # The C++ operator checks every index in a serial pass of its own. A torch reduction here
        # would wake OpenMP's team, whose spinning workers then compete with the kernel's threads:
        # skipping it made the cpu forward 8-30% faster at L = 1-3 (2 threads).
        check_edge_range(edge_index, node_feats.shape[0], num_nodes)
    if chosen == "reference":
        return _reference.tp_conv(node_feats, edge_attrs, edge_weights, edge_index, num_nodes, plan)
    if node_feats.dtype not in _FUSED_DTYPES:
        raise TypeError(
            f"node_feats must be float32 or float64 for the {chosen!r} backend, got {node_feats.dtype}"
        )
    tables = kernel_tables(plan, node_feats.device)
    shared = edge_weights is not None and edge_weights.dim() == 1
    sizes = [
        node_feats.shape[0], plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel, int(shared),
        plan.irreps_out.dim,
    ]
    return _contract_op(chosen)(
        node_feats.contiguous(),
        edge_attrs.contiguous(),
        edge_weights.contiguous() if edge_weights is not None else None,
        None,
        edge_index.contiguous(),
        num_nodes,
        OUTPUT,
        tables.paths,
        tables.cg_index,
        tables.cg_value,
        tables.layout,
        sizes,
        deterministic,
        plan.flops(1),
    )


def _validate(node_feats, edge_attrs, edge_weights, edge_index, num_nodes, plan) -> None:
    if not isinstance(plan, TensorProductPlan):
        raise TypeError(f"plan must be a TensorProductPlan (eqscale.o3.plan_tensor_product), got {type(plan).__name__}")
    for name, value in (("node_feats", node_feats), ("edge_attrs", edge_attrs), ("edge_index", edge_index)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not node_feats.is_floating_point():
        raise TypeError(f"node_feats must be floating point, got {node_feats.dtype}")
    if node_feats.dim() != 2 or node_feats.shape[1] != plan.irreps_in1.dim:
        raise ValueError(
            f"node_feats must have shape (N, {plan.irreps_in1.dim}) for irreps_in1={plan.irreps_in1}, "
            f"got {tuple(node_feats.shape)}"
        )
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"edge_index must be int64 (or int32), got {edge_index.dtype}")
    num_edges = edge_index.shape[1]
    if edge_attrs.dim() != 2 or tuple(edge_attrs.shape) != (num_edges, plan.irreps_in2.dim):
        raise ValueError(
            f"edge_attrs must have shape (E={num_edges}, {plan.irreps_in2.dim}) for irreps_in2={plan.irreps_in2}, "
            f"got {tuple(edge_attrs.shape)}"
        )
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"num_nodes must be a non-negative int, got {num_nodes!r}")
    _validate_weights(edge_weights, num_edges, plan)
    for name, value in (("edge_attrs", edge_attrs), ("edge_weights", edge_weights)):
        if value is not None and (value.dtype != node_feats.dtype or value.device != node_feats.device):
            raise TypeError(
                f"{name} must have node_feats' dtype and device ({node_feats.dtype}, {node_feats.device}), "
                f"got {value.dtype}, {value.device}"
            )
    if edge_index.device != node_feats.device:
        raise TypeError(f"edge_index must be on {node_feats.device}, got {edge_index.device}")


def _validate_weights(edge_weights, num_edges: int, plan: TensorProductPlan) -> None:
    if edge_weights is None:
        if plan.weight_numel:
            raise ValueError(f"edge_weights are required: the plan has weight_numel={plan.weight_numel}")
        return
    if not isinstance(edge_weights, torch.Tensor):
        raise TypeError(f"edge_weights must be a torch.Tensor or None, got {type(edge_weights).__name__}")
    shapes = [(num_edges, plan.weight_numel), (plan.weight_numel,)]
    if tuple(edge_weights.shape) not in shapes:
        raise ValueError(
            f"edge_weights must have shape (E, weight_numel)={shapes[0]} or shared (weight_numel,)={shapes[1]}, "
            f"got {tuple(edge_weights.shape)}"
        )


def _contract_op(backend: str):
    name = _cpu.OP_NAME if backend == "cpu" else _TRITON_OP_NAME
    return getattr(torch.ops.eqscale, name).default


def _triton_op_name() -> str:
    from eqscale.ops.tp_conv import triton as _triton  # noqa: PLC0415 - optional dependency

    return _triton.OP_NAME


def _open_slot_shape(slot: int, sizes: list[int], num_edges: int, num_nodes: int) -> tuple[int, ...]:
    sender_rows, dim_in1, dim_in2, weight_numel, shared, dim_out = sizes
    return {
        NODE_FEATS: (sender_rows, dim_in1),
        EDGE_ATTRS: (num_edges, dim_in2),
        EDGE_WEIGHTS: (weight_numel,) if shared else (num_edges, weight_numel),
        OUTPUT: (num_nodes, dim_out),
    }[slot]


def _open_each(contract, fused_backward, slots: list, targets: list[int], edge_index: torch.Tensor,
               num_nodes: int, tail: list) -> list[torch.Tensor | None]:
    """``contract(open = t)`` for each slot t in ``targets``, the other slots taken from ``slots``.

    Where two or more of the targets are among slots 0-2 and the backend has a fused backward, that
    one call gives them together: it evaluates the same 4-linear form with all four slots given, so
    it serves whichever slot holds a cotangent (the forward's in slot 3, or, in the double backward,
    a first-order gradient's in slot 0, 1 or 2). Against one ``contract`` pass per target, this
    made the cpu forward+backward+double-backward step 1.1-1.5x faster (2 threads, mul 32, L = 1-3).
    """
    grads: list[torch.Tensor | None] = [None] * 4
    wanted = sum(1 << slot for slot in targets if slot != OUTPUT)
    if fused_backward is not None and wanted.bit_count() >= 2:
        for slot, value in enumerate(fused_backward(*slots, edge_index, num_nodes, wanted, *tail)):
            if wanted >> slot & 1:
                grads[slot] = value
    for slot in targets:
        if grads[slot] is None:
            arguments = list(slots)
            arguments[slot] = None
            grads[slot] = contract(*arguments, edge_index, num_nodes, slot, *tail)
    return grads


def _register(op_name: str, *, with_fake: bool, backward_op_name: str | None = None) -> None:
    """Fake impl, the autograd rule of the module docstring and the FLOP formula of one backend.

    ``backward_op_name``: the backend's fused backward (slots 0-2 at once), used for the backward of
    the forward when at least two of those slots need gradients.
    """
    qualified = f"eqscale::{op_name}"
    op = getattr(torch.ops.eqscale, op_name).default
    fused_backward = getattr(torch.ops.eqscale, backward_op_name).default if backward_op_name else None

    if with_fake:

        @torch.library.register_fake(qualified)
        def _fake(x, y, w, g, edge_index, num_nodes, open_slot, paths, cg_index, cg_value, layout, sizes,
                  deterministic, flops_per_edge):
            reference = next(t for t in (x, y, w, g) if t is not None)
            return reference.new_empty(_open_slot_shape(open_slot, sizes, edge_index.shape[1], num_nodes))

    def setup_context(ctx, inputs, output):
        x, y, w, g, edge_index, *rest = inputs
        ctx.save_for_backward(x, y, w, g, edge_index)
        ctx.rest = rest  # num_nodes, open_slot, paths, cg_index, cg_value, layout, sizes, deterministic, flops

    def backward(ctx, grad):
        slots = list(ctx.saved_tensors[:4])
        edge_index = ctx.saved_tensors[4]
        num_nodes, open_slot, *tail = ctx.rest
        slots[open_slot] = grad.contiguous()
        targets = [slot for slot in range(4) if slot != open_slot and ctx.needs_input_grad[slot]]
        grads = _open_each(op, fused_backward, slots, targets, edge_index, num_nodes, tail)
        return (*grads,) + (None,) * 10

    torch.library.register_autograd(qualified, backward, setup_context=setup_context)

    @register_flop_formula(getattr(torch.ops.eqscale, op_name))
    def _flops(x_shape, y_shape, w_shape, g_shape, edge_index_shape, *args, **kwargs) -> int:
        # Every open slot contracts the same 4-linear form: counted as one evaluation of it.
        return args[-1] * edge_index_shape[1]


def _register_fused_backward(op_name: str, contract_name: str, double_backward_name: str | None = None) -> None:
    """Fake impl, autograd rule and FLOP formula of a fused backward (slots 0-2 of the 4-linear form).

    ``double_backward_name``: the backend's double backward (all three cotangents into slots 0-2 in
    one call), used for the backward of the fused backward when it applies.
    """
    qualified = f"eqscale::{op_name}"
    contract = getattr(torch.ops.eqscale, contract_name).default
    fused = getattr(torch.ops.eqscale, op_name).default
    double = getattr(torch.ops.eqscale, double_backward_name).default if double_backward_name else None
    if double is not None:
        _register_double_backward(double_backward_name)

    @torch.library.register_fake(qualified)
    def _fake(x, y, w, g, edge_index, num_nodes, wanted, paths, cg_index, cg_value, layout, sizes, deterministic,
              flops_per_edge):
        return tuple(
            x.new_empty(_open_slot_shape(slot, sizes, edge_index.shape[1], num_nodes) if wanted >> slot & 1 else (0,))
            for slot in range(3)
        )

    def setup_context(ctx, inputs, output):
        x, y, w, g, edge_index, num_nodes, wanted, *rest = inputs
        ctx.save_for_backward(x, y, w, g, edge_index)
        ctx.num_nodes, ctx.wanted, ctx.rest = num_nodes, wanted, rest

    def backward(ctx, *cotangents):
        # Output s is contract(open = s); by the rule of the module docstring its cotangent h_s
        # reaches input t != s as contract(open = t) with h_s in slot s. For each source s, every
        # such t comes from one call with h_s in slot s (slots 0-2 fused into one pass).
        saved = list(ctx.saved_tensors[:4])
        edge_index = ctx.saved_tensors[4]
        grads = [None] * 4
        sources = [slot for slot in range(3) if ctx.wanted >> slot & 1 and cotangents[slot] is not None]
        needed = [slot for slot in range(4) if ctx.needs_input_grad[slot]]
        if double is not None and len(sources) == 3 and {0, 1, 2} <= set(needed) and not torch.is_grad_enabled():
            # All three cotangents reach slots 0-2 in one sweep of the edges, which reads G, W and
            # the edge rows once instead of once per cotangent. That op has no autograd rule of its
            # own: only where no graph is built through this backward. grad_out's gradient is left.
            grads[:3] = double(*saved, cotangents[0].contiguous(), *map(_rows, cotangents[1:3]), edge_index,
                               ctx.num_nodes, *ctx.rest)
            needed = [slot for slot in needed if slot == OUTPUT]
        for source in sources if needed else ():
            arguments = list(saved)
            arguments[source] = cotangents[source].contiguous()
            targets = [slot for slot in needed if slot != source]
            terms = _open_each(contract, fused, arguments, targets, edge_index, ctx.num_nodes, ctx.rest)
            for target in targets:
                if grads[target] is None:
                    grads[target] = terms[target]
                elif torch.is_grad_enabled():  # a graph is being built through this backward
                    grads[target] = grads[target] + terms[target]
                else:  # both are fresh outputs of the kernels: no new E-sized allocation
                    grads[target].add_(terms[target])
        return (*grads,) + (None,) * 10

    torch.library.register_autograd(qualified, backward, setup_context=setup_context)

    @register_flop_formula(getattr(torch.ops.eqscale, op_name))
    def _flops(x_shape, y_shape, w_shape, g_shape, edge_index_shape, num_nodes, wanted, *args, **kwargs) -> int:
        # One evaluation of the 4-linear form per gradient, as if each were its own contract.
        return wanted.bit_count() * args[-1] * edge_index_shape[1]


def _rows(cotangent: torch.Tensor) -> torch.Tensor:
    """A per-edge cotangent as the double backward takes it: contiguous, or one row expanded.

    The backward of ``g.sum()`` is a single row expanded over the edges; materialising it wrote an
    ``E x weight_numel`` tensor into fresh pages on every step (page faults were a fifth of the cpu
    forward+backward+double-backward step at L = 2).
    """
    if cotangent.dim() == 2 and cotangent.shape[0] > 0 and cotangent.stride(0) == 0:
        return cotangent[0].contiguous().expand(cotangent.shape)  # the row may itself be expanded
    return cotangent.contiguous()


def _register_double_backward(op_name: str) -> None:
    """Fake impl and FLOP formula of a double backward (no autograd rule: called without a graph)."""

    @torch.library.register_fake(f"eqscale::{op_name}")
    def _fake(x, y, w, g, hx, hy, hw, edge_index, num_nodes, paths, cg_index, cg_value, layout, sizes, deterministic,
              flops_per_edge):
        return x.new_empty(x.shape), y.new_empty(y.shape), w.new_empty(w.shape)

    @register_flop_formula(getattr(torch.ops.eqscale, op_name))
    def _flops(*args, **kwargs) -> int:
        # Two evaluations of the 4-linear form per gradient, one per cotangent that reaches it.
        edge_index_shape, flops_per_edge = args[7], args[-1]
        return 6 * flops_per_edge * edge_index_shape[1]


if _cpu.load():
    _register_fused_backward(_cpu.BACKWARD_OP_NAME, _cpu.OP_NAME, _cpu.DOUBLE_BACKWARD_OP_NAME)
    _register(_cpu.OP_NAME, with_fake=True, backward_op_name=_cpu.BACKWARD_OP_NAME)
# Resolved once at import: torch.compile would trace the import inside a cached lookup.
_TRITON_OP_NAME = _triton_op_name() if backends.triton_available() else ""
if _TRITON_OP_NAME:
    _register(_TRITON_OP_NAME, with_fake=False)
