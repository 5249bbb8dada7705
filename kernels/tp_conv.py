"""Triton kernels of the fused tensor-product convolution (``eqscale.ops.tp_conv``).

One kernel, :func:`tp_conv_contract_kernel`, evaluates the 4-linear form

    F(x, Y, W, G) = sum_e sum_paths sum_{CG nonzeros (i, j, k, c)}
                    c x[sender_e](u, i) Y_e(v, j) W_e(path; u, v, w) G[receiver_e](w, k)

with one slot left open (``OPEN``: 0 node features, 1 edge attributes, 2 weights, 3 output) and
writes the gradient of ``F`` with respect to that slot. Per edge, path and ``v``, ``F`` pairs a
CG side ``P(u, n) = c_n x(u, i_n) Y(v, j_n)`` with a channel side ``Q(u, n) = sum_w W(u, v, w)
G(w, k_n)`` over channels ``u`` and nonzeros ``n``; each open slot contracts the other three
(``uvu``: ``w = u``; ``uuu``: ``v = w = u``, so ``Y`` is read per channel).

Design:

- **Runtime tables, not specialisation.** The kernel reads the path table and the CG nonzeros of
  :mod:`eqscale.ops.tp_conv._tables` at run time and branches on each path's mode. The operator
  receives the plan only as device tensors (its schema is the C++ one), so specialising would
  need a device-to-host copy that ``torch.compile`` cannot trace; and one compiled kernel per
  (open slot, layout, accumulation, dtype) then serves every plan.
- **Channels on the vector axis, nonzeros in blocks.** Tiles are ``(BLOCK_C, BLOCK_N)``
  (channels x CG nonzeros, gathered straight from memory) and ``(BLOCK_C, BLOCK_D)`` (channels x
  components of the open slot), masked. Nonzeros are processed ``BLOCK_N`` at a time and land in
  their component column through a one-hot sum (registers cannot be indexed at run time). Block
  sizes come from the operator's static sizes and are capped; larger multiplicities, degrees or
  nonzero counts run as loops over tiles, so every plan is handled.
- **Grid ``(rows, paths)``.** Paths writing the same region of the open slot (e.g. the same
  output irreps entry) form a group; the program of the group's first path (``group[p] == p``)
  sums all of them in registers and writes the region once, so paths never race and per-edge
  slots need no atomics. The other programs do nothing.
- **Rows** (``SEGMENTS``): 0, one edge per program (per-edge slots 1 and 2; node slots 0 and 3
  with atomic adds at the edge's sender or receiver); 1, one node per program walking its
  segment of the edges sorted by that node (deterministic node slots, no atomics); 2, a chunk of
  consecutive edges per program (weights shared over edges: atomic adds into the one weight
  vector, or one partial sum per chunk that the launcher reduces deterministically).
- No ``E x dim_out`` intermediate: each edge is gathered, contracted and accumulated in place.

Standard ``tl`` operations only, so the kernel compiles for CUDA and runs in Triton's
interpreter on CPU tensors (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Columns of the path table; must match eqscale.ops.tp_conv._tables (checked by the tests).
PATH_MODE = tl.constexpr(0)
PATH_HAS_WEIGHT = tl.constexpr(1)
PATH_IN1_OFFSET = tl.constexpr(2)
PATH_IN1_MUL = tl.constexpr(3)
PATH_IN1_DIM = tl.constexpr(4)
PATH_IN2_OFFSET = tl.constexpr(5)
PATH_IN2_MUL = tl.constexpr(6)
PATH_IN2_DIM = tl.constexpr(7)
PATH_OUT_OFFSET = tl.constexpr(8)
PATH_OUT_MUL = tl.constexpr(9)
PATH_OUT_DIM = tl.constexpr(10)
PATH_WEIGHT_OFFSET = tl.constexpr(11)
PATH_CG_START = tl.constexpr(12)
PATH_CG_COUNT = tl.constexpr(13)
NUM_PATH_FIELDS = tl.constexpr(14)

MODE_UVW, MODE_UVU, MODE_UUU = 0, 1, 2
SEGMENTS_EDGE, SEGMENTS_CSR, SEGMENTS_CHUNK = 0, 1, 2

# tl.cdiv is itself a jit function, which Triton's interpreter re-patches on every call: the
# kernels spell out (a + B - 1) // B instead.
MAX_BLOCK_C = 16
"""Cap on channel lanes per tile; larger multiplicities loop over tiles. uvw contracts
``(BLOCK_C, BLOCK_C, BLOCK_N)`` products in registers: at 16 the fp64 kernels fit sm_80's
register file with almost no spills (ptxas -v), at 32 they spill heavily."""
MAX_BLOCK_D = 16
"""Cap on irrep components per tile (degree <= 7 fits one tile)."""
BLOCK_N = 16
"""CG nonzeros per step."""


def block_sizes(sizes: list[int]) -> tuple[int, int, int]:
    """``(BLOCK_C, BLOCK_D, BLOCK_N)`` for the operator's ``sizes``.

    ``sizes`` is ``[sender_rows, dim_in1, dim_in2, weight_numel, weights_shared, dim_out]``
    (see :mod:`eqscale.ops.tp_conv.cpu`). A multiplicity or irrep dimension is at most the
    dimension of its irreps, so the largest of ``dim_in1, dim_in2, dim_out`` bounds both
    without reading the path table (a device-to-host copy).
    """
    bound = max(int(sizes[1]), int(sizes[2]), int(sizes[5]), 1)
    power = triton.next_power_of_2(bound)
    # Module globals read at call time, so tests can shrink the tiles to exercise the loops.
    return min(power, MAX_BLOCK_C), min(power, MAX_BLOCK_D), BLOCK_N


def grid(num_rows: int, num_paths: int) -> tuple[int, int]:
    """Launch grid: one program per (row, path)."""
    return (num_rows, num_paths)


@triton.jit
def _path_fields(paths_ptr, q, LAYOUT: tl.constexpr):
    """Path ``q``'s table row, with each entry's strides ``(per channel, per component)``."""
    row = paths_ptr + q * NUM_PATH_FIELDS
    mul1 = tl.load(row + PATH_IN1_MUL)
    dim1 = tl.load(row + PATH_IN1_DIM)
    mul2 = tl.load(row + PATH_IN2_MUL)
    dim2 = tl.load(row + PATH_IN2_DIM)
    mul_out = tl.load(row + PATH_OUT_MUL)
    dim_out = tl.load(row + PATH_OUT_DIM)
    if LAYOUT == 0:  # mul_ir: (u, i) at u * dim + i
        strides = (dim1, 1, dim2, 1, dim_out, 1)
    else:  # ir_mul: (u, i) at i * mul + u
        strides = (1, mul1, 1, mul2, 1, mul_out)
    cg_start = tl.load(row + PATH_CG_START)
    return (
        tl.load(row + PATH_MODE), tl.load(row + PATH_HAS_WEIGHT),
        tl.load(row + PATH_IN1_OFFSET), mul1, dim1, strides[0], strides[1],
        tl.load(row + PATH_IN2_OFFSET), mul2, dim2, strides[2], strides[3],
        tl.load(row + PATH_OUT_OFFSET), mul_out, dim_out, strides[4], strides[5],
        tl.load(row + PATH_WEIGHT_OFFSET), cg_start, cg_start + tl.load(row + PATH_CG_COUNT),
    )


@triton.jit
def _channel_side(w_row, g_row, k, mask_n, mode, has_weight, weight_offset, mul1, mul2, off_out,
                  mul_out, cs_out, ds_out, v, u, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """The channel side ``Q[a, n]`` of one edge for channels ``u`` and nonzeros ``k``.

    ``Q[a, n] = sum_w W(u[a], v, w) G(w, k_n)`` (uvw), ``W(u[a], v) G(u[a], k_n)`` (uvu) or
    ``W(u[a]) G(u[a], k_n)`` (uuu), with ``W = 1`` for a path without weights.
    """
    mask_u = u < mul1
    if mode == 0:
        q = tl.zeros((BLOCK_C, BLOCK_N), g_row.dtype.element_ty)
        for w_block in range((mul_out + BLOCK_C - 1) // BLOCK_C):
            w = w_block * BLOCK_C + tl.arange(0, BLOCK_C)
            mask_w = w < mul_out
            weights_uw = tl.load(
                w_row + weight_offset + (u[:, None] * mul2 + v) * mul_out + w[None, :],
                mask=mask_u[:, None] & mask_w[None, :], other=0.0)
            g_w = tl.load(g_row + off_out + w[:, None] * cs_out + k[None, :] * ds_out,
                          mask=mask_w[:, None] & mask_n[None, :], other=0.0)
            q += tl.sum(weights_uw[:, :, None] * g_w[None, :, :], axis=1)
    else:
        # Masked weights read as 1, which is W for a path without weights. (One comparison:
        # Triton's interpreter mishandles `tensor_mask & scalar_mask`.)
        weights = tl.load(w_row + weight_offset + tl.where(mode == 1, u * mul2 + v, u),
                          mask=u < tl.where(has_weight != 0, mul1, 0), other=1.0)
        g = tl.load(g_row + off_out + u[:, None] * cs_out + k[None, :] * ds_out,
                    mask=mask_u[:, None] & mask_n[None, :], other=0.0)
        q = weights[:, None] * g
    return q


@triton.jit
def _scatter_columns(values, index, columns):
    """``out[a, b] = sum_n values[a, n] [index_n == columns_b]``.

    A one-hot scatter, since registers cannot be indexed at run time.
    """
    hits = index[None, :, None] == columns[None, None, :]
    return tl.sum(tl.where(hits, values[:, :, None], 0.0), axis=1)


@triton.jit
def _path_tile(acc, chan_start, comp, start, end, perm_ptr, x_ptr, y_ptr, w_ptr, g_ptr,
               edge_index_ptr, num_edges, dim_in1, dim_in2, dim_out_row, weight_stride,
               paths_ptr, cg_index_ptr, cg_value_ptr, q,
               OPEN: tl.constexpr, LAYOUT: tl.constexpr, SEGMENTS: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Adds path ``q`` over the edges ``[start, end)`` to the tile ``acc`` of slot 0, 1 or 3.

    The tile holds channels ``chan_start + [0, BLOCK_C)`` and components ``comp`` of the open
    slot's irreps entry. Edges are the inner loop: the one-hot scatter into components is
    linear, so it runs once per block of nonzeros, on the sum over edges.
    """
    (mode, has_weight, off1, mul1, dim1, cs1, ds1, off2, mul2, dim2, cs2, ds2,
     off_out, mul_out, dim_out, cs_out, ds_out, weight_offset, cg_start, cg_end) = _path_fields(
        paths_ptr, q, LAYOUT)
    dtype = acc.dtype
    lanes = tl.arange(0, BLOCK_C)
    chan = chan_start + lanes
    # v runs over Y's channels, except in uuu where Y is read at the lane's own channel u.
    v_start = 0
    v_end = tl.where(mode == 2, 1, mul2)
    if OPEN == 3:
        sum_u = mode == 0  # uvw: the tile's channels are w; every u contributes
    elif OPEN == 0:
        sum_u = mode < 0  # never: the tile's channels are u
    else:
        sum_u = mode != 2  # uvw, uvu: row v of the tile sums over every u
        v_start = tl.where(mode == 2, 0, chan_start)
        v_end = tl.where(mode == 2, 1, tl.minimum(chan_start + BLOCK_C, mul2))
    num_u_blocks = tl.where(sum_u, (mul1 + BLOCK_C - 1) // BLOCK_C, 1)
    for v in range(v_start, v_end):
        for n0 in range(cg_start, cg_end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            mask_n = n < cg_end
            i = tl.load(cg_index_ptr + 3 * n, mask=mask_n, other=0)
            j = tl.load(cg_index_ptr + 3 * n + 1, mask=mask_n, other=0)
            k = tl.load(cg_index_ptr + 3 * n + 2, mask=mask_n, other=0)
            # Products of this block of nonzeros, summed over edges (and u where it is summed).
            summed = tl.zeros((BLOCK_C, BLOCK_N), dtype)
            for position in range(start, end):
                if SEGMENTS == 1:
                    e = tl.load(perm_ptr + position)
                else:
                    e = position
                x_row = x_ptr + tl.load(edge_index_ptr + e).to(tl.int64) * dim_in1
                y_row = y_ptr + e * dim_in2
                w_row = w_ptr + e * weight_stride
                g_row = g_ptr + tl.load(edge_index_ptr + num_edges + e).to(tl.int64) * dim_out_row
                for u_block in range(num_u_blocks):
                    u = tl.where(sum_u, u_block * BLOCK_C + lanes, chan)
                    mask = (u < mul1)[:, None] & mask_n[None, :]
                    y_offsets = off2 + tl.where(mode == 2, u, v)[:, None] * cs2 + j[None, :] * ds2
                    x_offsets = off1 + u[:, None] * cs1 + i[None, :] * ds1
                    if OPEN == 3:
                        xy = (tl.load(x_row + x_offsets, mask=mask, other=0.0)
                              * tl.load(y_row + y_offsets, mask=mask, other=0.0))
                        if mode == 0:
                            # (A name of its own: both branches of a runtime `if` must give a
                            # variable they share one type.)
                            weights_uw = tl.load(
                                w_row + weight_offset + (u[:, None] * mul2 + v) * mul_out
                                + chan[None, :],
                                mask=(u < mul1)[:, None] & (chan < mul_out)[None, :], other=0.0)
                            summed += tl.sum(weights_uw[:, :, None] * xy[:, None, :], axis=0)
                        else:
                            # Masked weights read as 1: W of a path without weights. (One
                            # comparison: the interpreter mishandles `tensor_mask & scalar`.)
                            weights = tl.load(
                                w_row + weight_offset + tl.where(mode == 1, u * mul2 + v, u),
                                mask=u < tl.where(has_weight != 0, mul1, 0), other=1.0)
                            summed += weights[:, None] * xy
                    else:
                        q_side = _channel_side(w_row, g_row, k, mask_n, mode, has_weight,
                                               weight_offset, mul1, mul2, off_out, mul_out, cs_out,
                                               ds_out, v, u, BLOCK_C, BLOCK_N)
                        if OPEN == 0:
                            summed += tl.load(y_row + y_offsets, mask=mask, other=0.0) * q_side
                        else:
                            summed += tl.load(x_row + x_offsets, mask=mask, other=0.0) * q_side
            c = tl.load(cg_value_ptr + n, mask=mask_n, other=0.0).to(dtype)
            summed = summed * c[None, :]
            if OPEN == 3:
                acc += _scatter_columns(summed, k, comp)
            elif OPEN == 0:
                acc += _scatter_columns(summed, i, comp)
            else:
                if mode == 2:
                    acc += _scatter_columns(summed, j, comp)
                else:
                    row = _scatter_columns(tl.sum(summed, axis=0)[None, :], j, comp)
                    acc += tl.where(chan[:, None] == v, row, 0.0)
    return acc


@triton.jit
def _weight_tile(acc, u, w, v, start, end, perm_ptr, x_ptr, y_ptr, w_ptr, g_ptr, edge_index_ptr,
                 num_edges, dim_in1, dim_in2, dim_out_row, cg_index_ptr, cg_value_ptr, mode, off1,
                 mul1, cs1, ds1, off2, cs2, ds2, off_out, mul_out, cs_out, ds_out, cg_start,
                 cg_end, SEGMENTS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Adds the weight gradient of one path and ``v`` over edges ``[start, end)`` to ``acc``.

    The tile is ``(u, w)`` for uvw; for uvu and uuu, column 0 holds ``(u,)``.
    """
    lanes = tl.arange(0, BLOCK_C)
    y_channel = tl.where(mode == 2, u, v)
    g_channel = tl.where(mode == 0, w, u)
    for n0 in range(cg_start, cg_end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask_n = n < cg_end
        i = tl.load(cg_index_ptr + 3 * n, mask=mask_n, other=0)
        j = tl.load(cg_index_ptr + 3 * n + 1, mask=mask_n, other=0)
        k = tl.load(cg_index_ptr + 3 * n + 2, mask=mask_n, other=0)
        c = tl.load(cg_value_ptr + n, mask=mask_n, other=0.0).to(acc.dtype)
        mask = (u < mul1)[:, None] & mask_n[None, :]
        x_offsets = off1 + u[:, None] * cs1 + i[None, :] * ds1
        y_offsets = off2 + y_channel[:, None] * cs2 + j[None, :] * ds2
        g_offsets = off_out + g_channel[:, None] * cs_out + k[None, :] * ds_out
        g_mask = (g_channel < mul_out)[:, None] & mask_n[None, :]
        for position in range(start, end):
            if SEGMENTS == 1:
                e = tl.load(perm_ptr + position)
            else:
                e = position
            x_row = x_ptr + tl.load(edge_index_ptr + e).to(tl.int64) * dim_in1
            g_row = g_ptr + tl.load(edge_index_ptr + num_edges + e).to(tl.int64) * dim_out_row
            product = (tl.load(x_row + x_offsets, mask=mask, other=0.0)
                       * tl.load(y_ptr + e * dim_in2 + y_offsets, mask=mask, other=0.0)
                       * c[None, :])
            g = tl.load(g_row + g_offsets, mask=g_mask, other=0.0)
            if mode == 0:
                acc += tl.sum(product[:, None, :] * g[None, :, :], axis=2)
            else:
                acc += tl.where(lanes[None, :] == 0, tl.sum(product * g, axis=1)[:, None], 0.0)
    return acc


@triton.jit
def _write(out_row, offsets, acc, mask, ATOMIC: tl.constexpr):
    if ATOMIC:
        tl.atomic_add(out_row + offsets, acc, mask=mask)
    else:
        tl.store(out_row + offsets, acc, mask=mask)


@triton.jit
def _weight_slot(out_row, p, start, end, perm_ptr, x_ptr, y_ptr, w_ptr, g_ptr, edge_index_ptr,
                 num_edges, dim_in1, dim_in2, dim_out, paths_ptr, cg_index_ptr, cg_value_ptr,
                 LAYOUT: tl.constexpr, SEGMENTS: tl.constexpr, ATOMIC: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Slot 2: the weights of path ``p`` over edges ``[start, end)``, tile by tile."""
    (_, _, off1, _, _, cs1, ds1, off2, _, _, cs2, ds2,
     off_out, _, _, cs_out, ds_out, _, cg_start, cg_end) = _path_fields(paths_ptr, p, LAYOUT)
    # What the stored addresses depend on is loaded here, not through _path_fields: torch's
    # mutation analysis (torch.compile) follows an address back through calls and would take
    # paths_ptr for an output.
    path = paths_ptr + p * NUM_PATH_FIELDS
    mode = tl.load(path + PATH_MODE)
    mul1 = tl.load(path + PATH_IN1_MUL)
    mul2 = tl.load(path + PATH_IN2_MUL)
    mul_out = tl.load(path + PATH_OUT_MUL)
    weight_offset = tl.load(path + PATH_WEIGHT_OFFSET)
    lanes = tl.arange(0, BLOCK_C)
    num_w_blocks = tl.where(mode == 0, (mul_out + BLOCK_C - 1) // BLOCK_C, 1)
    for v in range(tl.where(mode == 2, 1, mul2)):
        for u_block in range((mul1 + BLOCK_C - 1) // BLOCK_C):
            u = u_block * BLOCK_C + lanes
            for w_block in range(num_w_blocks):
                w = w_block * BLOCK_C + lanes
                acc = tl.zeros((BLOCK_C, BLOCK_C), out_row.dtype.element_ty)
                acc = _weight_tile(acc, u, w, v, start, end, perm_ptr, x_ptr, y_ptr, w_ptr, g_ptr,
                                   edge_index_ptr, num_edges, dim_in1, dim_in2, dim_out,
                                   cg_index_ptr, cg_value_ptr, mode, off1, mul1, cs1, ds1, off2,
                                   cs2, ds2, off_out, mul_out, cs_out, ds_out, cg_start, cg_end,
                                   SEGMENTS, BLOCK_C, BLOCK_N)
                # Weight layouts: uvw (u, v, w), uvu (u, v), uuu (u,).
                offsets = tl.where(
                    mode == 0,
                    weight_offset + (u[:, None] * mul2 + v) * mul_out + w[None, :],
                    weight_offset + tl.where(mode == 1, u * mul2 + v, u)[:, None] + 0 * w[None, :])
                mask = (u < mul1)[:, None] & tl.where(mode == 0, w < mul_out, lanes == 0)[None, :]
                _write(out_row, offsets, acc, mask, ATOMIC)


@triton.jit
def _entry_slot(out_row, p, num_paths, group_ptr, start, end, perm_ptr, x_ptr, y_ptr, w_ptr, g_ptr,
                edge_index_ptr, num_edges, dim_in1, dim_in2, dim_out, weight_stride, paths_ptr,
                cg_index_ptr, cg_value_ptr, OPEN: tl.constexpr, LAYOUT: tl.constexpr,
                SEGMENTS: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Slots 0, 1, 3: the irreps entry of path ``p``'s group over edges ``[start, end)``."""
    if OPEN == 3:
        field = PATH_OUT_OFFSET
    elif OPEN == 0:
        field = PATH_IN1_OFFSET
    else:
        field = PATH_IN2_OFFSET
    # Offset, multiplicity and dimension are consecutive columns of the path table.
    row = paths_ptr + p * NUM_PATH_FIELDS + field
    offset = tl.load(row)
    mul = tl.load(row + 1)
    dim = tl.load(row + 2)
    for c_block in range((mul + BLOCK_C - 1) // BLOCK_C):
        for d_block in range((dim + BLOCK_D - 1) // BLOCK_D):
            chan = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
            comp = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
            acc = tl.zeros((BLOCK_C, BLOCK_D), out_row.dtype.element_ty)
            for q in range(p, num_paths):
                if tl.load(group_ptr + q) == p:
                    acc = _path_tile(acc, c_block * BLOCK_C, comp, start, end, perm_ptr, x_ptr,
                                     y_ptr, w_ptr, g_ptr, edge_index_ptr, num_edges, dim_in1,
                                     dim_in2, dim_out, weight_stride, paths_ptr, cg_index_ptr,
                                     cg_value_ptr, q, OPEN, LAYOUT, SEGMENTS, BLOCK_C, BLOCK_D,
                                     BLOCK_N)
            if LAYOUT == 0:
                offsets = offset + chan[:, None] * dim + comp[None, :]
            else:
                offsets = offset + comp[None, :] * mul + chan[:, None]
            mask = (chan < mul)[:, None] & (comp < dim)[None, :]
            _write(out_row, offsets, acc, mask, ATOMIC)


@triton.jit
def tp_conv_contract_kernel(
    x_ptr, y_ptr, w_ptr, g_ptr, out_ptr, edge_index_ptr, perm_ptr, segment_ptr,
    paths_ptr, cg_index_ptr, cg_value_ptr, group_ptr,
    num_edges, num_paths, dim_in1, dim_in2, dim_out, weight_stride, out_stride, chunk,
    OPEN: tl.constexpr, LAYOUT: tl.constexpr, SEGMENTS: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Gradient of the 4-linear form with respect to slot ``OPEN``, for one (row, path group).

    Args:
        x_ptr: node features ``(sender_rows, dim_in1)``. The open slot's pointer is never read
            (pass any tensor of the same dtype); the four slots are contiguous.
        y_ptr: edge attributes ``(E, dim_in2)``.
        w_ptr: weights ``(E, weight_numel)``, or ``(weight_numel,)`` shared.
        g_ptr: gradient of the output ``(num_nodes, dim_out)``.
        out_ptr: the result, rows of ``out_stride`` elements, zero-initialised by the launcher
            (regions no path writes must stay zero).
        edge_index_ptr: ``(2, E)`` contiguous int32/int64, senders then receivers.
        perm_ptr: with ``SEGMENTS == 1``, the edges sorted by the program's node.
        segment_ptr: with ``SEGMENTS == 1``, the ``(rows + 1,)`` segment starts in ``perm``.
        paths_ptr: ``(P, 14)`` int64 path table (:mod:`eqscale.ops.tp_conv._tables`).
        cg_index_ptr: ``(NNZ, 3)`` int64 ``(i, j, k)`` of the CG nonzeros.
        cg_value_ptr: ``(NNZ,)`` float64 CG values times the path coefficient.
        group_ptr: ``(P,)`` int64, the first path writing the same region of the open slot (the
            path itself for slot 2, -1 for paths that contribute nothing).
        num_edges: ``E``.
        num_paths: ``P``.
        dim_in1: row length of x.
        dim_in2: row length of Y.
        dim_out: row length of G.
        weight_stride: elements between the weights of consecutive edges (0 when shared).
        out_stride: elements between rows of ``out`` (0 sends every row to row 0).
        chunk: edges per program with ``SEGMENTS == 2``.
        OPEN: the open slot: 0, 1, 2 or 3.
        LAYOUT: 0 ``mul_ir``, 1 ``ir_mul``.
        SEGMENTS: 0 one edge, 1 a CSR segment, 2 a chunk of edges per program.
        ATOMIC: add into ``out`` atomically (with ``SEGMENTS == 0`` at the edge's receiver for
            slot 3 or its sender for slot 0) instead of storing.
        BLOCK_C: channel lanes per tile (a power of two; see :func:`block_sizes`).
        BLOCK_D: irrep components per tile.
        BLOCK_N: CG nonzeros per step.
    """
    row = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1).to(tl.int64)
    # Only a group's first path works (this also skips paths that contribute nothing).
    if tl.load(group_ptr + p) == p:
        if SEGMENTS == 0:
            start = row
            end = row + 1
        elif SEGMENTS == 1:
            start = tl.load(segment_ptr + row)
            end = tl.load(segment_ptr + row + 1)
        else:
            start = row * chunk
            end = tl.minimum(start + chunk, num_edges)
        target = row
        if ATOMIC and SEGMENTS == 0:
            # Node slots without sorting: this edge's receiver (slot 3) or sender (slot 0).
            if OPEN == 3:
                target = tl.load(edge_index_ptr + num_edges + row).to(tl.int64)
            else:
                target = tl.load(edge_index_ptr + row).to(tl.int64)
        out_row = out_ptr + target * out_stride
        if OPEN == 2:
            _weight_slot(out_row, p, start, end, perm_ptr, x_ptr, y_ptr, w_ptr, g_ptr,
                         edge_index_ptr, num_edges, dim_in1, dim_in2, dim_out, paths_ptr,
                         cg_index_ptr, cg_value_ptr, LAYOUT, SEGMENTS, ATOMIC, BLOCK_C, BLOCK_N)
        else:
            _entry_slot(out_row, p, num_paths, group_ptr, start, end, perm_ptr, x_ptr, y_ptr,
                        w_ptr, g_ptr, edge_index_ptr, num_edges, dim_in1, dim_in2, dim_out,
                        weight_stride, paths_ptr, cg_index_ptr, cg_value_ptr, OPEN, LAYOUT,
                        SEGMENTS, ATOMIC, BLOCK_C, BLOCK_D, BLOCK_N)


# --- launch helpers (torch ops with static shapes, so torch.compile can trace them) -----------
# (Tensors are selected with select/unsqueeze/sort rather than subscripts: tracing with fake CUDA
# tensors on a CPU-only torch, as tests/ops/test_tp_conv_triton_compile.py does, rejects those.)

# The open slot's offset column in the path table.
_TARGET_COLUMN = {0: int(PATH_IN1_OFFSET), 1: int(PATH_IN2_OFFSET), 2: int(PATH_WEIGHT_OFFSET),
                  3: int(PATH_OUT_OFFSET)}


def path_groups(paths: torch.Tensor, open_slot: int) -> torch.Tensor:
    """``group[p]``: the first path writing the same region of the open slot as path ``p``.

    Paths with equal offsets of the open slot's irreps entry share a region (slot 2: every path
    with weights owns its slice; paths without weights get -1 and are skipped).

    Args:
        paths: ``(P, 14)`` int64 path table.
        open_slot: 0, 1, 2 or 3.

    Returns:
        ``(P,)`` int64 on the device of ``paths``.
    """
    if open_slot == 2:
        index = torch.arange(paths.shape[0], device=paths.device)
        return torch.where(paths.select(1, int(PATH_HAS_WEIGHT)) != 0, index, -1)
    key = paths.select(1, _TARGET_COLUMN[open_slot])
    same = key.unsqueeze(1) == key.unsqueeze(0)
    # argmax returns the first maximal entry: the first path with the same key.
    return same.to(torch.int32).argmax(dim=1).to(torch.int64)


def csr(keys: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges sorted by ``keys`` (stable) and the ``(num_rows + 1,)`` segment starts.

    ``searchsorted`` rather than ``bincount`` keeps every shape static (bincount's length
    depends on the data), which fake tensors and ``torch.compile`` need.

    Args:
        keys: ``(E,)`` node of each edge (its receiver, or its sender).
        num_rows: number of nodes.

    Returns:
        ``(perm, starts)``: int64 ``(E,)`` and ``(num_rows + 1,)``.
    """
    sorted_keys, perm = torch.sort(keys.to(torch.int64), stable=True)
    starts = torch.searchsorted(sorted_keys, torch.arange(num_rows + 1, device=keys.device))
    return perm, starts


def chunk_size(num_edges: int) -> int:
    """Edges per program for shared weights: at most ~1024 partial sums, at least 64 edges each."""
    return max(64, (num_edges + 1023) // 1024)
