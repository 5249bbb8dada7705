"""Binds the Triton tensor-product convolution (``kernels/tp_conv.py``) as an operator.

``torch.ops.eqscale.tp_conv_contract_triton`` has the argument list of the C++
``eqscale::tp_conv_contract`` (:mod:`eqscale.ops.tp_conv.cpu`)::

    tp_conv_contract_triton(Tensor? node_feats, Tensor? edge_attrs, Tensor? edge_weights,
                            Tensor? grad_out, Tensor edge_index, int num_nodes, int open_slot,
                            Tensor paths, Tensor cg_index, Tensor cg_value, int layout, int[] sizes,
                            bool deterministic, int flops_per_edge) -> Tensor

and evaluates the 4-linear form of :mod:`eqscale.ops.tp_conv` with slot ``open_slot`` left open
(its tensor is None), returning the gradient with respect to that slot.

Accumulation: node-level results (slot 3, the output, at receivers; slot 0, node features, at
senders) use atomic adds per edge by default; with ``deterministic=True`` the edges are sorted
by that node (stable ``argsort`` plus ``searchsorted`` segment starts, built here with torch ops)
and one program per node sums its segment with no atomics. Per-edge results (slots 1 and 2) are
written directly. Weights shared over edges (``sizes[4] == 1``) are summed over chunks of edges
atomically, or, when deterministic, into one partial row per chunk reduced by ``torch.sum``.

The operator is a ``triton_op`` (:func:`eqscale._kernels.kernel_operator`), so ``torch.compile``
sees the kernel on a GPU, and an opaque ``custom_op`` in Triton's interpreter; the body only
validates, allocates and launches, so it doubles as the fake implementation. Autograd and the
FLOP formula are registered in :mod:`eqscale.ops.tp_conv`.
"""

from __future__ import annotations

import torch
from torch.library import wrap_triton

from eqscale import backends
from eqscale._kernels import import_kernels, kernel_operator, should_launch

OP_NAME = "tp_conv_contract_triton"

_SLOT_NAMES = ("node_feats", "edge_attrs", "edge_weights", "grad_out")
_DTYPES = (torch.float32, torch.float64)
_INDEX_DTYPES = (torch.int32, torch.int64)
_NUM_PATH_FIELDS = 14

_kernels = import_kernels("tp_conv")
# A bare module-level name: triton_op finds the kernels an operator launches by reading its source
# for wrap_triton(<name>) and hashes them into AOTAutograd's cache key.
_contract_kernel = _kernels.tp_conv_contract_kernel


def _check(slots: list[torch.Tensor | None], edge_index: torch.Tensor, num_nodes: int,
           open_slot: int, sizes: list[int], paths: torch.Tensor) -> torch.Tensor:
    """Validates the arguments; returns the first given slot (the dtype and device reference)."""
    if open_slot not in (0, 1, 2, 3):
        raise ValueError(f"open_slot must be 0, 1, 2 or 3, got {open_slot}")
    if len(sizes) != 6:
        raise ValueError(
            "sizes must be [sender_rows, dim_in1, dim_in2, weight_numel, weights_shared, dim_out], "
            f"got {sizes}"
        )
    for slot, tensor in enumerate(slots):
        # Absent weights are allowed when the plan has none.
        absent_weights = slot == 2 and tensor is None and sizes[3] == 0
        if (tensor is None) != (slot == open_slot) and not absent_weights:
            expected = "None" if slot == open_slot else "a tensor"
            raise ValueError(f"{_SLOT_NAMES[slot]} must be {expected} with open_slot={open_slot}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype not in _INDEX_DTYPES:
        raise ValueError(
            "edge_index must be a (2, E) int32 or int64 tensor, "
            f"got {tuple(edge_index.shape)} {edge_index.dtype}"
        )
    if paths.dim() != 2 or paths.shape[1] != _NUM_PATH_FIELDS or paths.dtype != torch.int64:
        raise ValueError(
            f"paths must be an int64 (P, {_NUM_PATH_FIELDS}) table, got {tuple(paths.shape)}"
        )
    reference = next(t for t in slots if t is not None)
    name = _SLOT_NAMES[slots.index(reference)]
    if reference.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {reference.dtype}")
    device = reference.device
    if not (device.type == "cuda" or (device.type == "cpu" and backends.triton_interpreted())):
        raise ValueError(
            f"{name} is on {device}: the Triton kernels need CUDA tensors, or CPU tensors with "
            "TRITON_INTERPRET=1 set before Triton is imported"
        )
    num_edges = edge_index.shape[1]
    for slot, (tensor, shape) in enumerate(
        zip(slots, _slot_shapes(sizes, num_edges, num_nodes), strict=True)
    ):
        if tensor is None:
            continue
        if tensor.dtype != reference.dtype or tensor.device != device:
            raise TypeError(
                f"{_SLOT_NAMES[slot]} must be {reference.dtype} on {device} like {name}, "
                f"got {tensor.dtype} on {tensor.device}"
            )
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{_SLOT_NAMES[slot]} must have shape {shape}, got {tuple(tensor.shape)}"
            )
    if edge_index.device != device:
        raise ValueError(f"edge_index must be on {device}, got {edge_index.device}")
    return reference


def _slot_shapes(sizes: list[int], num_edges: int, num_nodes: int) -> list[tuple[int, ...]]:
    sender_rows, dim_in1, dim_in2, weight_numel, shared, dim_out = sizes
    return [
        (sender_rows, dim_in1),
        (num_edges, dim_in2),
        (weight_numel,) if shared else (num_edges, weight_numel),
        (num_nodes, dim_out),
    ]


@kernel_operator("eqscale::tp_conv_contract_triton")
def tp_conv_contract_triton(
    node_feats: torch.Tensor | None,
    edge_attrs: torch.Tensor | None,
    edge_weights: torch.Tensor | None,
    grad_out: torch.Tensor | None,
    edge_index: torch.Tensor,
    num_nodes: int,
    open_slot: int,
    paths: torch.Tensor,
    cg_index: torch.Tensor,
    cg_value: torch.Tensor,
    layout: int,
    sizes: list[int],
    deterministic: bool,
    flops_per_edge: int,
) -> torch.Tensor:
    """Gradient of the convolution's 4-linear form with respect to slot ``open_slot``.

    Args:
        node_feats: ``(sender_rows, dim_in1)``, or None when ``open_slot == 0``.
        edge_attrs: ``(E, dim_in2)``, or None when ``open_slot == 1``.
        edge_weights: ``(E, weight_numel)`` or shared ``(weight_numel,)``; None when
            ``open_slot == 2`` (or the plan has no weights).
        grad_out: ``(num_nodes, dim_out)``, or None when ``open_slot == 3`` (the forward pass).
        edge_index: ``(2, E)`` int64/int32: senders, then receivers.
        num_nodes: rows of the output (receivers).
        open_slot: 0 node features, 1 edge attributes, 2 weights, 3 output.
        paths: ``(P, 14)`` int64 path table of :func:`eqscale.ops.tp_conv._tables.kernel_tables`.
        cg_index: ``(NNZ, 3)`` int64 ``(i, j, k)`` of the CG nonzeros, path after path.
        cg_value: ``(NNZ,)`` float64 CG values times each path's coefficient.
        layout: 0 ``mul_ir``, 1 ``ir_mul``.
        sizes: ``[sender_rows, dim_in1, dim_in2, weight_numel, weights_shared, dim_out]``.
        deterministic: sum node-level results by sorted segments (and shared weights by a
            two-stage reduction) instead of atomics: bitwise reproducible.
        flops_per_edge: FLOPs of one edge (read by the FLOP formula only).

    Returns:
        ``(sender_rows, dim_in1)``, ``(E, dim_in2)``, ``(E, weight_numel)`` (or
        ``(weight_numel,)`` when shared) or ``(num_nodes, dim_out)`` for open slot 0, 1, 2, 3.

    Example:
        >>> import torch, eqscale
        >>> from eqscale.ops.tp_conv._tables import kernel_tables
        >>> plan = eqscale.o3.plan_tensor_product("2x0e", "0e", "2x0e", mode="uvu")
        >>> t = kernel_tables(plan, torch.device("cuda"))
        >>> x, y = torch.randn(3, 2, device="cuda"), torch.randn(4, 1, device="cuda")
        >>> w = torch.randn(4, 2, device="cuda")
        >>> ei = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 0]], device="cuda")
        >>> torch.ops.eqscale.tp_conv_contract_triton(
        ...     x, y, w, None, ei, 3, 3, t.paths, t.cg_index, t.cg_value, t.layout,
        ...     [3, 2, 1, 2, 0, 2], False, plan.flops(1)).shape
        torch.Size([3, 2])
    """
    slots = [node_feats, edge_attrs, edge_weights, grad_out]
    reference = _check(slots, edge_index, num_nodes, open_slot, sizes, paths)
    sender_rows, dim_in1, dim_in2, weight_numel, shared, dim_out = sizes
    num_edges = edge_index.shape[1]
    num_paths = paths.shape[0]
    out = reference.new_zeros(_slot_shapes(sizes, num_edges, num_nodes)[open_slot])
    if num_edges == 0 or num_paths == 0 or out.numel() == 0:
        return out
    if not should_launch(num_edges, *slots, edge_index):
        return out

    edge_index = edge_index.contiguous()
    # The kernel never reads the open slot, nor weights of paths without weights: an input of
    # the same dtype stands in for them (not `out`, which would alias the kernel's output).
    x, y, w, g = (t.contiguous() if t is not None else reference for t in slots)
    group = _kernels.path_groups(paths, open_slot)
    perm = segments = edge_index  # read only with SEGMENTS_CSR
    chunk, atomic, target = 1, False, out
    out_stride = out.shape[1] if out.dim() == 2 else 0
    if open_slot in (0, 3):
        if deterministic:
            rows = sender_rows if open_slot == 0 else num_nodes
            perm, segments = _kernels.csr(edge_index.select(0, 0 if open_slot == 0 else 1), rows)
            segmenting = _kernels.SEGMENTS_CSR
        else:
            rows, segmenting, atomic = num_edges, _kernels.SEGMENTS_EDGE, True
    elif open_slot == 2 and shared:
        chunk = _kernels.chunk_size(num_edges)
        rows = (num_edges + chunk - 1) // chunk
        segmenting = _kernels.SEGMENTS_CHUNK
        if deterministic:
            # One partial sum per chunk, summed in a fixed order below.
            target = reference.new_zeros((rows, weight_numel))
            out_stride = weight_numel
        else:
            atomic = True  # out_stride 0: every chunk adds into the one weight vector
    else:
        rows, segmenting = num_edges, _kernels.SEGMENTS_EDGE

    block_c, block_d, block_n = _kernels.block_sizes(sizes)
    wrap_triton(_contract_kernel)[_kernels.grid(rows, num_paths)](
        x, y, w, g, target, edge_index, perm, segments, paths, cg_index, cg_value, group,
        num_edges, num_paths, dim_in1, dim_in2, dim_out, 0 if shared else weight_numel,
        out_stride, chunk,
        OPEN=open_slot, LAYOUT=layout, SEGMENTS=segmenting, ATOMIC=atomic,
        BLOCK_C=block_c, BLOCK_D=block_d, BLOCK_N=block_n,
    )
    return target.sum(dim=0) if target is not out else out
