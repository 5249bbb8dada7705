"""Triton kernels of the SO(2)-convolution rotations (``eqscale.ops.so2_conv``).

They evaluate the trilinear form

    F(X, D, Y) = sum_e sum_{l, |m| <= mmax, m', c} Y[e, pos(l, m), c] D_e,l[m, m'] X[index_e, l^2 + l + m', c]

with one slot open, one kernel per open slot:

- :func:`rotate_in_kernel` (edge slot open): one program per (edge, channel block) loops over
  the kept rows ``(l, m)``; each row is a ``(BLOCK_D,) x (BLOCK_D, BLOCK_C)`` product of a row of
  ``D_l`` and the sender's degree-``l`` block, read in place.
- :func:`rotate_out_kernel` (node slot open): one program per (node, component, channel block)
  walks the node's segment of the edges sorted by ``index`` and sums ``D_l[:, m']^T y_e`` in
  registers: deterministic, no atomics, nothing of size ``E x (L+1)^2 x C`` built.
- :func:`wigner_grad_kernel` (Wigner slot open): one program per (edge, degree) forms the
  ``(2l+1) x (2l+1)`` block of outer products summed over channels; rows with ``|m| > mmax`` get 0.

The ``(l, m)`` bookkeeping comes from small integer tables built by :func:`tables`. Standard
``tl`` operations only, so the kernels run in Triton's interpreter on CPU tensors.
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def rotate_in_kernel(
    node_ptr,
    wigner_ptr,
    out_ptr,
    index_ptr,
    row_table_ptr,
    num_m,
    num_coefficients,
    wigner_numel,
    channels,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Edge slot open: ``out[e, p] = D_e,l[m] . node[index_e, l]`` for each kept row ``p = (l, m)``."""
    edge = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < channels
    offs_k = tl.arange(0, BLOCK_D)
    node = tl.load(index_ptr + edge).to(tl.int64)
    node_base = node_ptr + node * num_coefficients * channels
    wigner_base = wigner_ptr + edge.to(tl.int64) * wigner_numel
    for p in range(num_m):
        wigner_row = tl.load(row_table_ptr + 3 * p)
        first = tl.load(row_table_ptr + 3 * p + 1)
        d = tl.load(row_table_ptr + 3 * p + 2)
        mask_k = offs_k < d
        coefficients = tl.load(wigner_base + wigner_row + offs_k, mask=mask_k, other=0.0)
        x = tl.load(
            node_base + (first + offs_k)[:, None] * channels + offs_c[None, :],
            mask=mask_k[:, None] & mask_c[None, :],
            other=0.0,
        )
        y = tl.sum(coefficients[:, None] * x, axis=0)
        tl.store(out_ptr + (edge.to(tl.int64) * num_m + p) * channels + offs_c, y, mask=mask_c)


@triton.jit
def rotate_out_kernel(
    edge_ptr,
    wigner_ptr,
    out_ptr,
    perm_ptr,
    starts_ptr,
    position_table_ptr,
    entry_table_ptr,
    num_m,
    num_coefficients,
    wigner_numel,
    channels,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Node slot open: ``out[n, (l, m')] = sum over n's edges of sum_m D_e,l[m, m'] y_e[(l, m)]``."""
    node = tl.program_id(0)
    q = tl.program_id(1)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < channels
    offs_j = tl.arange(0, BLOCK_D)
    # Rows m of D_l that reach component q = (l, m'): their edge-layout positions and D entries.
    positions = tl.load(position_table_ptr + q * BLOCK_D + offs_j)
    entries = tl.load(entry_table_ptr + q * BLOCK_D + offs_j)
    mask_j = positions >= 0
    start = tl.load(starts_ptr + node)
    end = tl.load(starts_ptr + node + 1)
    acc = tl.zeros((BLOCK_C,), dtype=out_ptr.dtype.element_ty)
    for k in range(start, end):
        edge = tl.load(perm_ptr + k).to(tl.int64)
        coefficients = tl.load(wigner_ptr + edge * wigner_numel + entries, mask=mask_j, other=0.0)
        y = tl.load(
            edge_ptr + (edge * num_m + positions)[:, None] * channels + offs_c[None, :],
            mask=mask_j[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc += tl.sum(coefficients[:, None] * y, axis=0)
    tl.store(out_ptr + (node.to(tl.int64) * num_coefficients + q) * channels + offs_c, acc, mask=mask_c)


@triton.jit
def wigner_grad_kernel(
    node_ptr,
    edge_ptr,
    out_ptr,
    index_ptr,
    degree_table_ptr,
    position_table_ptr,
    num_m,
    num_coefficients,
    wigner_numel,
    channels,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Wigner slot open: ``out[e, l][m, m'] = sum_c y_e[(l, m), c] node[index_e, (l, m'), c]``."""
    edge = tl.program_id(0).to(tl.int64)
    l = tl.program_id(1)
    offset = tl.load(degree_table_ptr + 2 * l)
    d = 2 * l + 1
    first = tl.load(degree_table_ptr + 2 * l + 1)  # l^2
    offs = tl.arange(0, BLOCK_D)
    mask_d = offs < d
    positions = tl.load(position_table_ptr + l * BLOCK_D + offs)  # -1 for |m| > mmax
    mask_m = positions >= 0
    node = tl.load(index_ptr + edge).to(tl.int64)
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=out_ptr.dtype.element_ty)
    for c0 in range(0, channels, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < channels
        y = tl.load(
            edge_ptr + (edge * num_m + positions)[:, None] * channels + offs_c[None, :],
            mask=mask_m[:, None] & mask_c[None, :],
            other=0.0,
        )
        x = tl.load(
            node_ptr + (node * num_coefficients + first + offs)[:, None] * channels + offs_c[None, :],
            mask=mask_d[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc += tl.sum(y[:, None, :] * x[None, :, :], axis=2)
    tl.store(
        out_ptr + edge * wigner_numel + offset + offs[:, None] * d + offs[None, :],
        acc,
        mask=mask_d[:, None] & mask_d[None, :],
    )


def block_d(lmax: int) -> int:
    """Tile width over the ``2l + 1`` components of a degree."""
    return triton.next_power_of_2(2 * lmax + 1)


def block_c(channels: int) -> int:
    """Tile width over channels (capped; larger counts run over several programs or blocks)."""
    return min(64, triton.next_power_of_2(max(channels, 1)))


def _table_lists(lmax: int, mmax: int) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    width = block_d(lmax)
    offsets = [0]
    for l in range(lmax + 1):
        offsets.append(offsets[-1] + (2 * l + 1) ** 2)
    order = [(l, 0) for l in range(lmax + 1)]
    for m in range(1, mmax + 1):
        order += [(l, m) for l in range(m, lmax + 1)] + [(l, -m) for l in range(m, lmax + 1)]
    position = {key: p for p, key in enumerate(order)}
    rows = []  # per position: wigner row start, first component of the degree, 2l + 1
    for l, m in order:
        rows += [offsets[l] + (m + l) * (2 * l + 1), l * l, 2 * l + 1]
    positions, entries = [], []  # per component (l, m'): kept rows m
    for l in range(lmax + 1):
        top = min(l, mmax)
        for mp in range(-l, l + 1):
            ms = list(range(-top, top + 1))
            positions += [position[(l, m)] for m in ms] + [-1] * (width - len(ms))
            entries += [offsets[l] + (m + l) * (2 * l + 1) + (mp + l) for m in ms] + [0] * (width - len(ms))
    degrees, degree_positions = [], []
    for l in range(lmax + 1):
        degrees += [offsets[l], l * l]
        kept = [position[(l, m)] if abs(m) <= mmax else -1 for m in range(-l, l + 1)]
        degree_positions += kept + [-1] * (width - len(kept))
    return rows, positions, entries, degrees, degree_positions


def _build_tables(lmax: int, mmax: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(t, dtype=torch.int64, device=device) for t in _table_lists(lmax, mmax))


_cached_tables = functools.cache(_build_tables)


def tables(lmax: int, mmax: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``(rows, positions, entries, degrees, degree_positions)`` int64 tables for the kernels."""
    # While tracing (dynamo, or the operator's fake pass under AOTAutograd) the tables are built
    # inside the trace: a cached real tensor cannot be handed to a traced kernel, and a fake one
    # left in the cache would break every later eager call.
    if torch.compiler.is_compiling() or torch._guards.detect_fake_mode() is not None:
        return _build_tables(lmax, mmax, device)
    return _cached_tables(lmax, mmax, device)


def csr(keys: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges sorted by ``keys`` (stable) and the ``(num_rows + 1,)`` segment starts (static shapes)."""
    sorted_keys, perm = torch.sort(keys.to(torch.int64), stable=True)
    starts = torch.searchsorted(sorted_keys, torch.arange(num_rows + 1, device=keys.device))
    return perm, starts
