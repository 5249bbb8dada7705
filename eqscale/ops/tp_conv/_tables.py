"""A plan flattened into the integer and float tables that the fused kernels read.

``paths`` (int64, ``(P, NUM_PATH_FIELDS)``), one row per instruction with a nonzero CG, columns
named by the ``PATH_*`` constants below; ``cg_index`` (int64, ``(NNZ, 3)``): the ``(i, j, k)`` of
every CG nonzero, path after path; ``cg_value`` (float64, ``(NNZ,)``): the value times the path's
normalisation coefficient. Offsets are into rows of the node/edge/weight tensors, in elements.

In the ``mul_ir`` layout, component ``(u, i)`` of an irreps entry at ``offset`` is at
``offset + u * dim + i``; in ``ir_mul`` at ``offset + i * mul + u``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from eqscale.o3._tensor_product import TensorProductPlan

MODES = {"uvw": 0, "uvu": 1, "uuu": 2}
LAYOUTS = {"mul_ir": 0, "ir_mul": 1}

(
    PATH_MODE,
    PATH_HAS_WEIGHT,
    PATH_IN1_OFFSET,
    PATH_IN1_MUL,
    PATH_IN1_DIM,
    PATH_IN2_OFFSET,
    PATH_IN2_MUL,
    PATH_IN2_DIM,
    PATH_OUT_OFFSET,
    PATH_OUT_MUL,
    PATH_OUT_DIM,
    PATH_WEIGHT_OFFSET,
    PATH_CG_START,
    PATH_CG_COUNT,
) = range(14)
NUM_PATH_FIELDS = 14


class KernelTables(NamedTuple):
    """The tables of one plan on one device."""

    paths: torch.Tensor
    cg_index: torch.Tensor
    cg_value: torch.Tensor
    layout: int


@functools.cache
def _host_tables(plan: TensorProductPlan) -> KernelTables:
    offsets1 = [piece.start for piece in plan.irreps_in1.slices()]
    offsets2 = [piece.start for piece in plan.irreps_in2.slices()]
    offsets_out = [piece.start for piece in plan.irreps_out.slices()]
    rows, indices, values = [], [], []
    for ins in plan.instructions:
        mul1, ir1 = plan.irreps_in1[ins.i_in1]
        mul2, ir2 = plan.irreps_in2[ins.i_in2]
        mul_out, ir_out = plan.irreps_out[ins.i_out]
        if not ins.cg_nonzeros or 0 in (mul1, mul2, mul_out):
            continue
        rows.append([
            MODES[ins.connection_mode], int(ins.has_weight),
            offsets1[ins.i_in1], mul1, ir1.dim,
            offsets2[ins.i_in2], mul2, ir2.dim,
            offsets_out[ins.i_out], mul_out, ir_out.dim,
            ins.weight_offset, len(indices), ins.cg_nnz,
        ])
        for entry in ins.cg_nonzeros:
            indices.append([entry.i, entry.j, entry.k])
            values.append(entry.value * ins.coefficient)
    return KernelTables(
        paths=torch.tensor(rows, dtype=torch.int64).reshape(-1, NUM_PATH_FIELDS),
        cg_index=torch.tensor(indices, dtype=torch.int64).reshape(-1, 3),
        cg_value=torch.tensor(values, dtype=torch.float64),
        layout=LAYOUTS[plan.layout],
    )


@functools.cache
def kernel_tables(plan: TensorProductPlan, device: torch.device) -> KernelTables:
    """The tables of ``plan`` on ``device`` (cached per plan and device)."""
    host = _host_tables(plan)
    return KernelTables(host.paths.to(device), host.cg_index.to(device), host.cg_value.to(device), host.layout)
