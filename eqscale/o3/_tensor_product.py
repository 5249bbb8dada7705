"""Tensor-product path planning: paths, normalisation, weight layout and exact FLOP counts.

A plan is the contract between the user-facing layers and the fused kernels: the kernels read the
instructions (CG nonzeros, normalisation constant, weight slice) and
:func:`tensor_product_reference` is the readable dense-CG spec they must match. Numerics,
instruction order, weight layout and normalisation follow ``e3nn.o3.TensorProduct`` exactly (e3nn
itself is a test-only dependency).

Each instruction ``(i_in1, i_in2, i_out, mode)`` computes, for a sample ``z``::

    uvw:  out[z, w, k] += c * sum_{u,v,i,j} W[(z,) u, v, w] C[i, j, k] x1[z, u, i] x2[z, v, j]
    uvu:  out[z, u, k] += c * sum_{v,i,j}   W[(z,) u, v]    C[i, j, k] x1[z, u, i] x2[z, v, j]
    uuu:  out[z, u, k] += c * sum_{i,j}     W[(z,) u]       C[i, j, k] x1[z, u, i] x2[z, u, j]

with ``C = wigner_3j(l1, l2, l_out)`` (unit Frobenius norm, e3nn's basis), ``c`` the e3nn
normalisation coefficient (:attr:`Instruction.coefficient`) and ``W`` the slice
``weights[..., weight_offset : weight_offset + weight_numel]`` reshaped to ``path_shape``
(``W = 1`` for instructions without weights).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from eqscale.o3._clebsch_gordan import CGEntry, cg_nonzeros, wigner_3j
from eqscale.o3._irreps import Irrep, Irreps

__all__ = [
    "Instruction",
    "TensorProductPlan",
    "plan_tensor_product",
    "tensor_product_reference",
    "uvu_irreps_out",
]

CONNECTION_MODES = ("uvw", "uvu", "uuu")
IRREP_NORMALIZATIONS = ("component", "norm", "none")
PATH_NORMALIZATIONS = ("element", "path", "none")
LAYOUTS = ("mul_ir", "ir_mul")


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One tensor-product path ``irreps_in1[i_in1] x irreps_in2[i_in2] -> irreps_out[i_out]``.

    The first six fields are what a user gives (as in e3nn's instruction tuples); the others are
    filled in by :func:`plan_tensor_product` (values given by the user for them are ignored).

    Attributes:
        i_in1: Index of the entry of ``irreps_in1``.
        i_in2: Index of the entry of ``irreps_in2``.
        i_out: Index of the entry of ``irreps_out``.
        connection_mode: ``"uvw"`` (fully connected), ``"uvu"`` (channelwise, ``mul_out ==
            mul1``, summed over ``v``) or ``"uuu"`` (elementwise, all three multiplicities equal).
        has_weight: Whether the path is multiplied by learned weights (required for ``"uvw"``).
        path_weight: Extra fixed factor given by the user; like e3nn it enters under the square
            root of :attr:`coefficient`.
        path_shape: Shape of this path's weights, as in e3nn: ``uvw -> (mul1, mul2, mul_out)``,
            ``uvu -> (mul1, mul2)``, ``uuu -> (mul1,)``. Defined even when ``has_weight`` is False.
        coefficient: The constant multiplying the path, e3nn's ``sqrt(alpha)`` (what e3nn stores
            in ``TensorProduct.instructions[k].path_weight``).
        weight_offset: Start of this path's weights in the flat weight vector.
        weight_numel: Number of weights of this path (``prod(path_shape)`` or 0 without weights).
        cg_nonzeros: The nonzero entries ``CGEntry(i, j, k, value)`` of ``wigner_3j(l1, l2,
            l_out)`` (unit Frobenius norm, *not* multiplied by :attr:`coefficient`), row-major
            order (from :func:`eqscale.o3.cg_nonzeros`).

    Example:
        >>> plan = plan_tensor_product("2x1o", "1x1o", "2x0e+2x1e", mode="uvu")
        >>> ins = plan.instructions[0]
        >>> ins.path_shape, ins.weight_offset, len(ins.cg_nonzeros)
        ((2, 1), 0, 3)
    """

    i_in1: int
    i_in2: int
    i_out: int
    connection_mode: str
    has_weight: bool
    path_weight: float = 1.0
    path_shape: tuple[int, ...] = ()
    coefficient: float = 1.0
    weight_offset: int = 0
    weight_numel: int = 0
    cg_nonzeros: tuple[CGEntry, ...] = dataclasses.field(default=(), repr=False)

    @property
    def cg_nnz(self) -> int:
        """Number of nonzero CG coefficients of this path."""
        return len(self.cg_nonzeros)


@dataclasses.dataclass(frozen=True)
class TensorProductPlan:
    """A planned tensor product: irreps, instructions with derived data, weight layout, FLOPs.

    Build it with :func:`plan_tensor_product`. Immutable and hashable, so kernels can cache on it.

    Attributes:
        irreps_in1: Irreps of the first input (node features in a convolution).
        irreps_in2: Irreps of the second input (edge attributes, e.g. spherical harmonics).
        irreps_out: Irreps of the output.
        instructions: The paths in execution and weight order.
        weight_numel: Length of the flat weight vector.
        irrep_normalization: ``"component"``, ``"norm"`` or ``"none"``.
        path_normalization: ``"element"``, ``"path"`` or ``"none"``.
        layout: ``"mul_ir"`` (e3nn) or ``"ir_mul"`` (cuequivariance) layout of x1, x2 and output.

    Example:
        >>> plan = plan_tensor_product("8x0e+8x1o", "0e+1o", "8x0e+8x1o+8x1e", mode="uvu")
        >>> len(plan.instructions), plan.weight_numel
        (5, 40)
    """

    irreps_in1: Irreps
    irreps_in2: Irreps
    irreps_out: Irreps
    instructions: tuple[Instruction, ...]
    weight_numel: int
    irrep_normalization: str = "component"
    path_normalization: str = "element"
    layout: str = "mul_ir"

    def __hash__(self) -> int:
        return self._field_hash

    @functools.cached_property
    def _field_hash(self) -> int:
        # Kernels look their tables up by plan on every call; hashing every CG entry each time cost
        # about 30 us per call at L = 3 (the dataclass hash is not cached).
        return hash(tuple(getattr(self, field.name) for field in dataclasses.fields(self)))

    def __getstate__(self) -> dict[str, Any]:
        # The cached values stay behind: a string's hash differs from one process to the next.
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @functools.cached_property
    def _flops_per_edge(self) -> int:
        return sum(self.path_flops(ins) for ins in self.instructions)

    def _instruction(self, instruction: int | Instruction) -> Instruction:
        if isinstance(instruction, Instruction):
            return instruction
        if isinstance(instruction, bool) or not isinstance(instruction, int):
            raise TypeError(
                f"instruction must be an int index or an Instruction, got {instruction!r}"
            )
        if not -len(self.instructions) <= instruction < len(self.instructions):
            raise ValueError(
                f"instruction index {instruction} out of range for "
                f"{len(self.instructions)} instructions"
            )
        return self.instructions[instruction]

    def ls(self, instruction: int | Instruction) -> tuple[int, int, int]:
        """The degrees ``(l1, l2, l_out)`` of a path.

        Example:
            >>> plan_tensor_product("1o", "2e", "3o", mode="uvw").ls(0)
            (1, 2, 3)
        """
        ins = self._instruction(instruction)
        return (
            self.irreps_in1[ins.i_in1].ir.l,
            self.irreps_in2[ins.i_in2].ir.l,
            self.irreps_out[ins.i_out].ir.l,
        )

    def dense_cg(
        self,
        instruction: int | Instruction,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Dense CG tensor ``wigner_3j(l1, l2, l_out)`` of a path (without its coefficient).

        Args:
            instruction: Index into :attr:`instructions`, or an :class:`Instruction` of this plan.
            dtype: Floating dtype of the result.
            device: Device of the result.

        Returns:
            Tensor of shape ``(2 l1 + 1, 2 l2 + 1, 2 l_out + 1)`` with unit Frobenius norm.

        Example:
            >>> plan_tensor_product("1o", "1o", "0e", mode="uvw").dense_cg(0).shape
            torch.Size([3, 3, 1])
        """
        return wigner_3j(*self.ls(instruction), dtype=dtype, device=device)

    def path_flops(self, instruction: int | Instruction) -> int:
        """Useful FLOPs of one path for one sample (see :meth:`flops` for the convention).

        Example:
            >>> plan_tensor_product("4x0e", "1x0e", "4x0e", mode="uvu").path_flops(0)
            18
        """
        ins = self._instruction(instruction)
        mul1 = self.irreps_in1[ins.i_in1].mul
        mul2 = self.irreps_in2[ins.i_in2].mul
        mul_out = self.irreps_out[ins.i_out].mul
        dim_out = self.irreps_out[ins.i_out].ir.dim
        if 0 in (mul1, mul2, mul_out):
            return 0
        nnz = ins.cg_nnz
        # Structural nonzeros (i, k) of y[v] = C . x2[v] (the CG summed over j).
        nnz_ik = len({(i, k) for i, _, k, _ in ins.cg_nonzeros})
        if ins.connection_mode == "uvw":
            products = mul2 * nnz + mul1 * mul2 * nnz_ik + mul1 * mul2 * mul_out * dim_out
        elif ins.connection_mode == "uvu":
            products = (
                mul2 * nnz + mul1 * mul2 * nnz_ik + (mul1 * mul2 * dim_out if ins.has_weight else 0)
            )
        else:  # uuu
            products = mul1 * nnz + mul1 * nnz_ik + (mul1 * dim_out if ins.has_weight else 0)
        return 2 * products

    def flops(self, num_edges: int, shared_weights: bool = False) -> int:
        """Exact useful FLOPs of the forward contraction over ``num_edges`` samples.

        FLOPs are ``2 x`` the number of scalar multiplications of the factorisation below, each of
        which is accumulated (a multiply-add). The normalisation coefficient is folded into the CG
        (a constant) and not counted; neither are zero-multiplicity paths. Per sample and per path,
        with ``nnz`` the number of nonzero CG entries ``C[i, j, k]``, ``nnz_ik`` the number of
        pairs ``(i, k)`` with some ``C[i, j, k] != 0``, ``d_out = 2 l_out + 1``:

        1. ``y[v, i, k] = sum_j C[i, j, k] x2[v, j]``: ``mul2 * nnz`` (x2, the low-multiplicity
           edge operand, meets the CG first; counted per instruction, no reuse across
           instructions).
        2. ``t[u, v, k] = sum_i x1[u, i] y[v, i, k]``: ``mul1 * mul2 * nnz_ik``.
        3. Weights on the output side:

           - ``uvw``: ``out[w, k] += sum_{u,v} W[u, v, w] t[u, v, k]``: ``mul1 * mul2 * mul_out *
             d_out``.
           - ``uvu``: ``out[u, k] += sum_v W[u, v] t[u, v, k]``: ``mul1 * mul2 * d_out``; without
             weights the ``v`` sum is part of step 2 and step 3 is free.
           - ``uuu`` (``v = u``): steps 1-2 cost ``mul * nnz + mul * nnz_ik``; weights
             ``mul * d_out``.

        So e.g. ``uvu`` with weights: ``2 * (mul2 * nnz + mul1 * mul2 * (nnz_ik + d_out))``.

        Args:
            num_edges: Number of samples (edges of a convolution).
            shared_weights: Whether the weights are shared across samples. In this factorisation
                every weight is applied to per-sample data, so sharing saves memory traffic but no
                arithmetic: the count is the same. Accepted so FLOP formulas of ops can pass it on.

        Returns:
            Total FLOPs as an int.

        Example:
            >>> plan = plan_tensor_product("4x0e", "1x0e", "4x0e", mode="uvu")
            >>> plan.flops(10)  # 2 * (1 * 1 + 4 * 1 * (1 + 1)) per edge
            180
        """
        if isinstance(num_edges, bool) or not isinstance(num_edges, int) or num_edges < 0:
            raise ValueError(f"num_edges must be a non-negative int, got {num_edges!r}")
        if not isinstance(shared_weights, bool):
            raise TypeError(f"shared_weights must be a bool, got {shared_weights!r}")
        return num_edges * self._flops_per_edge

    def __repr__(self) -> str:
        lines = [
            f"TensorProductPlan({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | "
            f"{len(self.instructions)} paths | {self.weight_numel} weights | "
            f"{self.irrep_normalization}/{self.path_normalization} | {self.layout})"
        ]
        for index, ins in enumerate(self.instructions):
            a, b, c = (
                self.irreps_in1[ins.i_in1],
                self.irreps_in2[ins.i_in2],
                self.irreps_out[ins.i_out],
            )
            weights = (
                f"w[{ins.weight_offset}:{ins.weight_offset + ins.weight_numel}]"
                if ins.has_weight
                else "no w"
            )
            lines.append(
                f"  {index}: {ins.i_in1}:{a} x {ins.i_in2}:{b} -> {ins.i_out}:{c} "
                f"{ins.connection_mode} "
                f"shape={ins.path_shape} {weights} c={ins.coefficient:.6g} nnz={ins.cg_nnz}"
            )
        return "\n".join(lines)


def _as_irreps(value: Any, name: str) -> Irreps:
    try:
        return Irreps(value)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name}: {error}") from None


def _check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _e3nn_sort_key(ir: Irrep) -> tuple[int, int]:
    # e3nn sorts irreps as (l, p) tuples: "0o" before "0e". Irreps.sort() uses (l, -p), so it
    # would not reproduce MACE/NequIP output orders.
    return (ir.l, ir.p)


def _parse_filter(filter_ir_out: Iterable[Any] | None) -> set[Irrep] | None:
    if filter_ir_out is None:
        return None
    if isinstance(filter_ir_out, str):
        return {term.ir for term in _as_irreps(filter_ir_out, "filter_ir_out")}
    try:
        return {term.ir for term in _as_irreps(list(filter_ir_out), "filter_ir_out")}
    except (TypeError, ValueError):
        return {Irrep(ir) for ir in filter_ir_out}


def uvu_irreps_out(
    irreps_in1: Any,
    irreps_in2: Any,
    filter_ir_out: Iterable[Any] | None = None,
    *,
    sort: bool = False,
) -> tuple[Irreps, list[tuple[int, int, int, str, bool]]]:
    """Output irreps and instructions of a channelwise (``uvu``) convolution, as in MACE/NequIP.

    One output entry ``mul1 x ir_out`` per allowed path, looping ``i1``, ``i2``, then ``ir_out``
    by increasing ``l``. With ``sort=True`` the output entries are stably sorted in e3nn's irrep
    order (``l``, then odd before even), instruction ``i_out`` indices are remapped and the
    instructions reordered by ``i_out`` (exactly MACE's ``tp_out_irreps_with_instructions``; this
    also reorders the weights). Merging equal output irreps (``simplify``) is not offered: it
    would break ``mul_out == mul1``; follow the product by a linear layer instead.

    Args:
        irreps_in1: Irreps of the first input (string, eqscale or cuequivariance Irreps).
        irreps_in2: Irreps of the second input.
        filter_ir_out: Keep only these output irreps (e.g. ``["0e", "1o"]`` or ``"0e+1o"``).
        sort: Sort the output entries as described above.

    Returns:
        ``(irreps_out, instructions)`` with e3nn-style tuples ``(i1, i2, i_out, "uvu", True)``.

    Example:
        >>> irreps_out, instructions = uvu_irreps_out("8x0e+8x1o", "0e+1o")
        >>> irreps_out
        8x0e+8x1o+8x1o+8x0e+8x1e+8x2e
        >>> uvu_irreps_out("8x0e+8x1o", "0e+1o", ["0e", "1o"], sort=True)[0]
        8x0e+8x0e+8x1o+8x1o
    """
    irreps_in1 = _as_irreps(irreps_in1, "irreps_in1")
    irreps_in2 = _as_irreps(irreps_in2, "irreps_in2")
    allowed = _parse_filter(filter_ir_out)
    terms: list[tuple[int, Irrep]] = []
    instructions: list[tuple[int, int, int, str, bool]] = []
    for i1, (mul1, ir1) in enumerate(irreps_in1):
        for i2, (_, ir2) in enumerate(irreps_in2):
            for ir_out in ir1 * ir2:
                if allowed is not None and ir_out not in allowed:
                    continue
                instructions.append((i1, i2, len(terms), "uvu", True))
                terms.append((mul1, ir_out))
    if sort:
        order = sorted(
            range(len(terms)), key=lambda index: (_e3nn_sort_key(terms[index][1]), index)
        )
        new_index = {old: new for new, old in enumerate(order)}
        terms = [terms[old] for old in order]
        instructions = sorted(
            ((i1, i2, new_index[i_out], mode, w) for i1, i2, i_out, mode, w in instructions),
            key=lambda ins: ins[2],
        )
    return Irreps(terms), instructions


def _normalize_instruction(raw: Any, index: int) -> tuple[int, int, int, str, bool, float]:
    name = f"instructions[{index}]"
    if isinstance(raw, Instruction):
        fields = (
            raw.i_in1,
            raw.i_in2,
            raw.i_out,
            raw.connection_mode,
            raw.has_weight,
            raw.path_weight,
        )
    elif isinstance(raw, (tuple, list)):
        if len(raw) not in (5, 6):
            raise ValueError(
                f"{name} must be "
                "(i_in1, i_in2, i_out, connection_mode, has_weight[, path_weight]), "
                f"got {raw!r}"
            )
        fields = tuple(raw) + ((1.0,) if len(raw) == 5 else ())
    else:
        raise TypeError(f"{name} must be a tuple or an Instruction, got {type(raw).__name__}")
    i1, i2, i_out, mode, has_weight, path_weight = fields
    for label, value in (("i_in1", i1), ("i_in2", i2), ("i_out", i_out)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: {label} must be an int, got {value!r}")
    if mode not in CONNECTION_MODES:
        raise ValueError(f"{name}: connection_mode must be one of {CONNECTION_MODES}, got {mode!r}")
    if not isinstance(has_weight, (bool, np.bool_)):
        raise TypeError(f"{name}: has_weight must be a bool, got {has_weight!r}")
    if isinstance(path_weight, bool) or not isinstance(path_weight, (int, float, np.floating)):
        raise TypeError(f"{name}: path_weight must be a float, got {path_weight!r}")
    if not path_weight >= 0:
        raise ValueError(
            f"{name}: path_weight must be >= 0 (e3nn takes its square root), got {path_weight}"
        )
    return int(i1), int(i2), int(i_out), mode, bool(has_weight), float(path_weight)


def _variances(value: Sequence[float] | None, irreps: Irreps, name: str) -> list[float]:
    if value is None:
        return [1.0] * len(irreps)
    values = [float(v) for v in value]
    if len(values) != len(irreps):
        raise ValueError(
            f"{name} must have one entry per irreps entry ({len(irreps)}), got {len(values)}"
        )
    return values


def plan_tensor_product(
    irreps_in1: Any,
    irreps_in2: Any,
    irreps_out: Any,
    instructions: Sequence[Any] | None = None,
    *,
    mode: str = "uvu",
    filter_ir_out: Iterable[Any] | None = None,
    irrep_normalization: str = "component",
    path_normalization: str = "element",
    layout: str = "mul_ir",
    in1_var: Sequence[float] | None = None,
    in2_var: Sequence[float] | None = None,
    out_var: Sequence[float] | None = None,
) -> TensorProductPlan:
    """Plans a tensor product exactly like ``e3nn.o3.TensorProduct`` with the same arguments.

    Args:
        irreps_in1: Irreps of the first input (e3nn string, eqscale or cuequivariance Irreps).
        irreps_in2: Irreps of the second input.
        irreps_out: Irreps of the output.
        instructions: e3nn-style tuples ``(i1, i2, i_out, mode, has_weight[, path_weight])`` or
            :class:`Instruction` objects. ``None``: every allowed path (parity and triangle rule)
            to every entry of ``irreps_out``, looping ``i1``, ``i2``, ``i_out`` (e3nn's order),
            all in ``mode`` with weights.
        mode: Connection mode of the generated instructions (``"uvw"``, ``"uvu"``, ``"uuu"``);
            only used when ``instructions`` is None.
        filter_ir_out: Only with ``instructions=None``: keep paths whose output irrep is listed.
        irrep_normalization: ``"component"``, ``"norm"`` or ``"none"`` (as in e3nn).
        path_normalization: ``"element"``, ``"path"`` or ``"none"`` (as in e3nn).
        layout: ``"mul_ir"`` (e3nn) or ``"ir_mul"`` (cuequivariance) layout of the data.
        in1_var: Variance of each entry of ``irreps_in1`` (default 1), as in e3nn.
        in2_var: Variance of each entry of ``irreps_in2`` (default 1).
        out_var: Target variance of each entry of ``irreps_out`` (default 1).

    Returns:
        The :class:`TensorProductPlan`.

    Raises:
        ValueError: For an out-of-range index, a path forbidden by parity or the triangle rule, a
            multiplicity mismatch (``uvu``: ``mul_out == mul1``; ``uuu``: all equal), ``uvw``
            without weights, or an unknown mode, normalisation or layout.
        TypeError: For arguments of the wrong type.

    Example:
        >>> plan = plan_tensor_product("4x0e+4x1o", "0e+1o", "4x0e+4x1o", mode="uvw")
        >>> [(i.i_in1, i.i_in2, i.i_out) for i in plan.instructions]
        [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]
        >>> plan.weight_numel
        64
    """
    irreps_in1 = _as_irreps(irreps_in1, "irreps_in1")
    irreps_in2 = _as_irreps(irreps_in2, "irreps_in2")
    irreps_out = _as_irreps(irreps_out, "irreps_out")
    _check_choice(mode, "mode", CONNECTION_MODES)
    _check_choice(irrep_normalization, "irrep_normalization", IRREP_NORMALIZATIONS)
    _check_choice(path_normalization, "path_normalization", PATH_NORMALIZATIONS)
    _check_choice(layout, "layout", LAYOUTS)

    if instructions is None:
        allowed = _parse_filter(filter_ir_out)
        raw = []
        for i1, (mul1, ir1) in enumerate(irreps_in1):
            for i2, (_, ir2) in enumerate(irreps_in2):
                for i_out, (mul_out, ir_out) in enumerate(irreps_out):
                    if ir_out not in ir1 * ir2 or (allowed is not None and ir_out not in allowed):
                        continue
                    if mode == "uvu" and mul_out != mul1:
                        raise ValueError(
                            "mode='uvu' needs irreps_out entries with the multiplicity of "
                            f"irreps_in1: path {i1}:{mul1}x{ir1} x {i2}:{ir2} -> "
                            f"{i_out}:{mul_out}x{ir_out} has mul_out={mul_out} != mul1={mul1}; "
                            "build irreps_out with uvu_irreps_out()"
                        )
                    raw.append((i1, i2, i_out, mode, True, 1.0))
    else:
        if filter_ir_out is not None:
            raise ValueError("filter_ir_out only applies when instructions is None")
        if isinstance(instructions, (str, bytes)) or not isinstance(instructions, Iterable):
            raise TypeError(
                f"instructions must be a sequence of tuples, got {type(instructions).__name__}"
            )
        raw = [_normalize_instruction(ins, index) for index, ins in enumerate(instructions)]

    for index, (i1, i2, i_out, ins_mode, has_weight, _) in enumerate(raw):
        name = f"instructions[{index}]"
        for label, value, irreps in (
            ("i_in1", i1, irreps_in1),
            ("i_in2", i2, irreps_in2),
            ("i_out", i_out, irreps_out),
        ):
            if not 0 <= value < len(irreps):
                raise ValueError(
                    f"{name}: {label}={value} out of range for {len(irreps)} entries ({irreps})"
                )
        (mul1, ir1), (mul2, ir2), (mul_out, ir_out) = (
            irreps_in1[i1],
            irreps_in2[i2],
            irreps_out[i_out],
        )
        if ir_out.p != ir1.p * ir2.p:
            raise ValueError(
                f"{name}: forbidden path {ir1} x {ir2} -> {ir_out} "
                f"(parity {ir1.p * ir2.p:+d} needed)"
            )
        if not abs(ir1.l - ir2.l) <= ir_out.l <= ir1.l + ir2.l:
            raise ValueError(
                f"{name}: forbidden path {ir1} x {ir2} -> {ir_out} "
                "(triangle rule |l1-l2| <= l <= l1+l2)"
            )
        if ins_mode == "uvw" and not has_weight:
            raise ValueError(f"{name}: connection_mode 'uvw' requires has_weight=True (as in e3nn)")
        if ins_mode == "uvu" and mul_out != mul1:
            raise ValueError(
                f"{name}: 'uvu' needs mul_out == mul1, got {mul1}x{ir1} -> {mul_out}x{ir_out}"
            )
        if ins_mode == "uuu" and not mul1 == mul2 == mul_out:
            raise ValueError(
                f"{name}: 'uuu' needs mul1 == mul2 == mul_out, got {mul1}, {mul2}, {mul_out}"
            )

    var1 = _variances(in1_var, irreps_in1, "in1_var")
    var2 = _variances(in2_var, irreps_in2, "in2_var")
    var_out = _variances(out_var, irreps_out, "out_var")

    def num_elements(i1: int, i2: int, ins_mode: str) -> int:
        # e3nn's fan-in of one output component through this path.
        return {
            "uvw": irreps_in1[i1].mul * irreps_in2[i2].mul,
            "uvu": irreps_in2[i2].mul,
            "uuu": 1,
        }[ins_mode]

    planned = []
    offset = 0
    for i1, i2, i_out, ins_mode, has_weight, path_weight in raw:
        (mul1, ir1), (mul2, ir2), (mul_out, ir_out) = (
            irreps_in1[i1],
            irreps_in2[i2],
            irreps_out[i_out],
        )
        alpha = {"component": ir_out.dim, "norm": ir1.dim * ir2.dim, "none": 1}[irrep_normalization]
        if path_normalization == "element":
            x = sum(
                var1[a] * var2[b] * num_elements(a, b, m) for a, b, o, m, _, _ in raw if o == i_out
            )
        elif path_normalization == "path":
            x = (
                var1[i1]
                * var2[i2]
                * num_elements(i1, i2, ins_mode)
                * sum(1 for r in raw if r[2] == i_out)
            )
        else:
            x = 1
        if x > 0.0:  # e3nn leaves alpha alone for empty fan-in
            alpha /= x
        alpha *= var_out[i_out] * path_weight
        if alpha < 0:
            raise ValueError(
                f"negative normalisation for path {(i1, i2, i_out)}: check in1_var/in2_var/out_var"
            )
        path_shape = {"uvw": (mul1, mul2, mul_out), "uvu": (mul1, mul2), "uuu": (mul1,)}[ins_mode]
        numel = math.prod(path_shape) if has_weight else 0
        planned.append(
            Instruction(
                i_in1=i1,
                i_in2=i2,
                i_out=i_out,
                connection_mode=ins_mode,
                has_weight=has_weight,
                path_weight=path_weight,
                path_shape=path_shape,
                coefficient=math.sqrt(alpha),
                weight_offset=offset,
                weight_numel=numel,
                cg_nonzeros=cg_nonzeros(ir1.l, ir2.l, ir_out.l),
            )
        )
        offset += numel

    return TensorProductPlan(
        irreps_in1=irreps_in1,
        irreps_in2=irreps_in2,
        irreps_out=irreps_out,
        instructions=tuple(planned),
        weight_numel=offset,
        irrep_normalization=irrep_normalization,
        path_normalization=path_normalization,
        layout=layout,
    )


def _split(x: torch.Tensor, irreps: Irreps, layout: str) -> list[torch.Tensor]:
    """Views of each entry as ``(Z, mul, 2l+1)`` whatever the layout."""
    blocks = []
    for (mul, ir), piece in zip(irreps, irreps.slices(), strict=True):
        block = x[:, piece]
        if layout == "mul_ir":
            blocks.append(block.reshape(x.shape[0], mul, ir.dim))
        else:
            blocks.append(block.reshape(x.shape[0], ir.dim, mul).transpose(1, 2))
    return blocks


def _check_input(x: Any, name: str, dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (Z, {dim}), got {tuple(x.shape)}")
    return x


def tensor_product_reference(
    plan: TensorProductPlan,
    x1: torch.Tensor,
    x2: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Readable dense-CG evaluation of a plan: the spec every fused kernel matches.

    Equals ``e3nn.o3.TensorProduct(irreps_in1, irreps_in2, irreps_out, instructions,
    irrep_normalization=..., path_normalization=..., shared_weights=..., internal_weights=False)``
    applied to the same inputs and flat weights (in the plan's layout).

    Args:
        plan: The plan from :func:`plan_tensor_product`.
        x1: ``(Z, irreps_in1.dim)`` in ``plan.layout``.
        x2: ``(Z, irreps_in2.dim)`` in ``plan.layout``.
        weights: ``(weight_numel,)`` shared across samples or ``(Z, weight_numel)`` per sample;
            may be None when ``plan.weight_numel == 0``.

    Returns:
        ``(Z, irreps_out.dim)`` in ``plan.layout``, dtype and device of ``x1``.

    Example:
        >>> plan = plan_tensor_product("2x1o", "1o", "2x0e", mode="uvu")
        >>> x1, x2 = torch.randn(5, 6), torch.randn(5, 3)
        >>> tensor_product_reference(plan, x1, x2, torch.ones(5, plan.weight_numel)).shape
        torch.Size([5, 2])
    """
    if not isinstance(plan, TensorProductPlan):
        raise TypeError(f"plan must be a TensorProductPlan, got {type(plan).__name__}")
    x1 = _check_input(x1, "x1", plan.irreps_in1.dim)
    x2 = _check_input(x2, "x2", plan.irreps_in2.dim)
    if x2.shape[0] != x1.shape[0]:
        raise ValueError(
            f"x1 and x2 must have the same number of rows, got {x1.shape[0]} and {x2.shape[0]}"
        )
    if x2.dtype != x1.dtype or x2.device != x1.device:
        raise TypeError(
            f"x2 must match x1's dtype/device ({x1.dtype}, {x1.device}), "
            f"got {x2.dtype}, {x2.device}"
        )
    num = x1.shape[0]
    if weights is None:
        if plan.weight_numel > 0:
            raise ValueError(f"weights are required: plan has weight_numel={plan.weight_numel}")
        weights = x1.new_zeros(0)
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.dtype != x1.dtype or weights.device != x1.device:
        raise TypeError(
            f"weights must match x1's dtype/device ({x1.dtype}, {x1.device}), "
            f"got {weights.dtype}, {weights.device}"
        )
    if weights.dim() == 1 and weights.shape[0] == plan.weight_numel:
        shared = True
    elif weights.dim() == 2 and tuple(weights.shape) == (num, plan.weight_numel):
        shared = False
    else:
        raise ValueError(
            f"weights must have shape ({plan.weight_numel},) or ({num}, {plan.weight_numel}), "
            f"got {tuple(weights.shape)}"
        )

    in1 = _split(x1, plan.irreps_in1, plan.layout)
    in2 = _split(x2, plan.irreps_in2, plan.layout)
    out = [x1.new_zeros(num, mul, ir.dim) for mul, ir in plan.irreps_out]
    z = "" if shared else "z"  # einsum batch index of the weights
    for ins in plan.instructions:
        if 0 in ins.path_shape or plan.irreps_out[ins.i_out].mul == 0:
            continue
        cg = plan.dense_cg(ins, dtype=x1.dtype, device=x1.device) * ins.coefficient
        a, b = in1[ins.i_in1], in2[ins.i_in2]
        if ins.has_weight:
            w = weights[..., ins.weight_offset : ins.weight_offset + ins.weight_numel]
            w = w.reshape(((num,) if not shared else ()) + ins.path_shape)
        if ins.connection_mode == "uuu":
            t = torch.einsum("ijk,zui,zuj->zuk", cg, a, b)
            result = t * w[..., None] if ins.has_weight else t
        else:
            # t[z, u, v, k]: the CG product of every channel pair, before weights.
            t = torch.einsum("ijk,zui,zvj->zuvk", cg, a, b)
            if ins.connection_mode == "uvw":
                result = torch.einsum(f"{z}uvw,zuvk->zwk", w, t)
            elif ins.has_weight:  # uvu
                result = torch.einsum(f"{z}uv,zuvk->zuk", w, t)
            else:  # uvu without weights still sums over v, as in e3nn
                result = t.sum(dim=2)
        out[ins.i_out] = out[ins.i_out] + result

    if plan.layout == "ir_mul":
        out = [block.transpose(1, 2) for block in out]
    return (
        # Explicit widths: reshape(num, -1) is ambiguous when there are no samples.
        torch.cat([block.reshape(num, block.shape[1] * block.shape[2]) for block in out], dim=1)
        if out
        else x1.new_zeros(num, 0)
    )
