"""Binds the Triton SO(2)-convolution rotations (``kernels/so2_conv.py``) as an operator.

``torch.ops.eqscale.so2_rotate_contract_triton`` has the argument list of the C++
``eqscale::so2_rotate_contract`` (:mod:`eqscale.ops.so2_conv.cpu`) and evaluates the trilinear
form of :mod:`eqscale.ops.so2_conv` with slot ``open_slot`` left open. The node slot is summed by
segments of the edges sorted by ``index`` (no atomics: deterministic). The operator is a
``triton_op`` (:func:`eqscale._kernels.kernel_operator`), so ``torch.compile`` sees the kernels on
a GPU, and an opaque ``custom_op`` in Triton's interpreter; the body only validates, allocates and
launches, so it doubles as the fake implementation. Autograd and the FLOP formula are registered in
:mod:`eqscale.ops.so2_conv`.
"""

from __future__ import annotations

import torch
import triton
from torch.library import wrap_triton

from eqscale import backends
from eqscale._kernels import import_kernels, kernel_operator, should_launch
from eqscale.ops.so2_conv._layout import num_coefficients, num_m_coefficients, wigner_numel

OP_NAME = "so2_rotate_contract_triton"

_NAMES = ("node", "wigner", "edge")

_kernels = import_kernels("so2_conv")
# Bare module-level names: triton_op finds the kernels an operator launches by reading its source
# for wrap_triton(<name>) and hashes them into AOTAutograd's cache key.
_rotate_in_kernel = _kernels.rotate_in_kernel
_rotate_out_kernel = _kernels.rotate_out_kernel
_wigner_grad_kernel = _kernels.wigner_grad_kernel


def _check(slots, index: torch.Tensor, num_nodes: int, open_slot: int, lmax: int, mmax: int) -> torch.Tensor:
    if open_slot not in (0, 1, 2):
        raise ValueError(f"open_slot must be 0, 1 or 2, got {open_slot}")
    if not 0 <= mmax <= lmax:
        raise ValueError(f"need 0 <= mmax <= lmax, got lmax={lmax}, mmax={mmax}")
    for slot, tensor in enumerate(slots):
        if (tensor is None) != (slot == open_slot):
            raise ValueError(
                f"{_NAMES[slot]} must be {'None' if slot == open_slot else 'a tensor'} with open_slot={open_slot}"
            )
    if index.dim() != 1 or index.dtype != torch.int64:
        raise ValueError(f"index must be a 1D int64 tensor, got {tuple(index.shape)} {index.dtype}")
    reference = next(t for t in slots if t is not None)
    device = reference.device
    if not (device.type == "cuda" or (device.type == "cpu" and backends.triton_interpreted())):
        raise ValueError(
            f"{_NAMES[slots.index(reference)]} is on {device}: the Triton kernels need CUDA tensors, or CPU "
            "tensors with TRITON_INTERPRET=1 set before Triton is imported"
        )
    for name, tensor in zip(_NAMES, slots, strict=True):
        if tensor is not None and (tensor.dtype != reference.dtype or tensor.device != device):
            raise TypeError(f"{name} must be {reference.dtype} on {device}, got {tensor.dtype} on {tensor.device}")
    return reference


@kernel_operator("eqscale::so2_rotate_contract_triton")
def so2_rotate_contract_triton(
    node: torch.Tensor | None,
    wigner: torch.Tensor | None,
    edge: torch.Tensor | None,
    index: torch.Tensor,
    num_nodes: int,
    open_slot: int,
    lmax: int,
    mmax: int,
) -> torch.Tensor:
    """Gradient of the rotations' trilinear form with respect to slot ``open_slot``.

    Args:
        node: ``(rows, (L+1)^2, C)`` node features, or None when ``open_slot == 0``.
        wigner: ``(E, sum_l (2l+1)^2)`` packed Wigner-D, or None when ``open_slot == 1``.
        edge: ``(E, num_m_coefficients(L, mmax), C)`` m-major edge features, or None when
            ``open_slot == 2``.
        index: ``(E,)`` int64 node row of each edge.
        num_nodes: rows of the node output (``open_slot == 0``).
        open_slot: 0 node, 1 Wigner-D, 2 edge.
        lmax: degree ``L``.
        mmax: highest ``|m|`` kept.

    Returns:
        The open slot's tensor.
    """
    slots = [node, wigner, edge]
    reference = _check(slots, index, num_nodes, open_slot, lmax, mmax)
    channels = (node if node is not None else edge).shape[-1]
    num_edges, num_m, coefficients, numel = (
        index.shape[0],
        num_m_coefficients(lmax, mmax),
        num_coefficients(lmax),
        wigner_numel(lmax),
    )
    shape = {0: (num_nodes, coefficients, channels), 1: (num_edges, numel), 2: (num_edges, num_m, channels)}[open_slot]
    out = reference.new_empty(shape)
    if out.numel() == 0:
        return out
    if num_edges == 0:
        return out.zero_()
    if not should_launch(num_edges, node, wigner, edge, index):
        return out
    rows, positions, entries, degrees, degree_positions = _kernels.tables(lmax, mmax, reference.device)
    block_d, block_c = _kernels.block_d(lmax), _kernels.block_c(channels)
    channel_blocks = triton.cdiv(channels, block_c)
    index = index.contiguous()
    if open_slot == 2:
        wrap_triton(_rotate_in_kernel)[(num_edges, channel_blocks)](
            node.contiguous(),
            wigner.contiguous(),
            out,
            index,
            rows,
            num_m,
            coefficients,
            numel,
            channels,
            BLOCK_D=block_d,
            BLOCK_C=block_c,
        )
    elif open_slot == 0:
        perm, starts = _kernels.csr(index, num_nodes)
        wrap_triton(_rotate_out_kernel)[(num_nodes, coefficients, channel_blocks)](
            edge.contiguous(),
            wigner.contiguous(),
            out,
            perm,
            starts,
            positions,
            entries,
            num_m,
            coefficients,
            numel,
            channels,
            BLOCK_D=block_d,
            BLOCK_C=block_c,
        )
    else:
        wrap_triton(_wigner_grad_kernel)[(num_edges, lmax + 1)](
            node.contiguous(),
            edge.contiguous(),
            out,
            index,
            degrees,
            degree_positions,
            num_m,
            coefficients,
            numel,
            channels,
            BLOCK_D=block_d,
            BLOCK_C=min(block_c, 16),
        )
    return out
