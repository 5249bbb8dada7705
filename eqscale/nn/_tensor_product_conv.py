"""``TensorProductConv``: the message-passing step of NequIP/MACE-style models as one module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from eqscale.o3._irreps import Irreps
from eqscale.o3._tensor_product import TensorProductPlan, plan_tensor_product, uvu_irreps_out
from eqscale.ops.tp_conv import tp_conv


class TensorProductConv(torch.nn.Module):
    """Fused ``index_add(TP(node_feats[senders], edge_attrs, edge_weights), receivers)``.

    Arguments mean what they mean in ``e3nn.o3.TensorProduct``. With ``instructions=None`` every
    allowed channelwise (``uvu``) path from ``irreps_in x irreps_sh`` into an entry of
    ``irreps_out`` is used (``irreps_out`` entries must then have the multiplicity of the matching
    ``irreps_in`` entry; :func:`eqscale.o3.uvu_irreps_out` builds such irreps).

    Args:
        irreps_in: irreps of the node features.
        irreps_sh: irreps of the edge attributes (spherical harmonics).
        irreps_out: irreps of the output.
        instructions: e3nn-style ``(i_in, i_sh, i_out, mode, has_weight[, path_weight])`` tuples.
        shared_weights: one weight vector for all edges instead of per-edge weights.
        internal_weights: hold the (shared) weights as a parameter; defaults to ``shared_weights``.
        irrep_normalization: ``"component"``, ``"norm"`` or ``"none"`` (e3nn's).
        path_normalization: ``"element"``, ``"path"`` or ``"none"`` (e3nn's).
        layout: ``"mul_ir"`` (e3nn) or ``"ir_mul"`` (cuequivariance).
        deterministic: Triton sums by receiver-sorted segments instead of atomics.
        backend: force a backend; None follows :mod:`eqscale.backends`.

    Example:
        >>> import torch
        >>> conv = TensorProductConv("8x0e+8x1o", "0e+1o", "8x0e+8x1o")
        >>> x, sh = torch.randn(5, 32), torch.randn(7, 4)
        >>> edge_index = torch.randint(0, 5, (2, 7))
        >>> conv(x, sh, torch.randn(7, conv.weight_numel), edge_index, 5).shape
        torch.Size([5, 32])
    """

    def __init__(
        self,
        irreps_in: Any,
        irreps_sh: Any,
        irreps_out: Any,
        instructions: Sequence[Any] | None = None,
        shared_weights: bool = False,
        internal_weights: bool | None = None,
        irrep_normalization: str = "component",
        path_normalization: str = "element",
        layout: str = "mul_ir",
        deterministic: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        plan = plan_tensor_product(
            irreps_in, irreps_sh, irreps_out, instructions, mode="uvu",
            irrep_normalization=irrep_normalization, path_normalization=path_normalization, layout=layout,
        )
        self._setup(plan, shared_weights, internal_weights, deterministic, backend)

    def _setup(
        self, plan: TensorProductPlan, shared_weights: bool, internal_weights: bool | None,
        deterministic: bool, backend: str | None,
    ) -> None:
        internal_weights = shared_weights if internal_weights is None else internal_weights
        if internal_weights and not shared_weights:
            raise ValueError("internal_weights=True requires shared_weights=True")
        self.plan = plan
        self.irreps_in, self.irreps_sh, self.irreps_out = plan.irreps_in1, plan.irreps_in2, plan.irreps_out
        self.weight_numel = plan.weight_numel
        self.shared_weights = shared_weights
        self.internal_weights = internal_weights
        self.deterministic = deterministic
        self.backend = backend
        if internal_weights:
            self.weight = torch.nn.Parameter(torch.randn(plan.weight_numel))
        else:
            self.register_parameter("weight", None)

    @classmethod
    def from_plan(
        cls, plan: TensorProductPlan, shared_weights: bool = False, internal_weights: bool | None = None,
        deterministic: bool = False, backend: str | None = None,
    ) -> TensorProductConv:
        """A module executing an existing plan (any mode: ``uvu``, ``uvw``, ``uuu``)."""
        module = cls.__new__(cls)
        torch.nn.Module.__init__(module)
        module._setup(plan, shared_weights, internal_weights, deterministic, backend)
        return module

    @classmethod
    def from_e3nn(cls, tp: Any, deterministic: bool = False, backend: str | None = None) -> TensorProductConv:
        """The convolution whose output equals ``index_add(tp(x[senders], sh, w), receivers)``.

        Args:
            tp: an ``e3nn.o3.TensorProduct`` (or ``FullyConnectedTensorProduct`` etc.).
            deterministic: as in the constructor.
            backend: as in the constructor.

        Example:
            >>> from e3nn import o3
            >>> tp = o3.TensorProduct("4x0e+4x1o", "0e+1o", "4x0e+4x1o",
            ...     [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True), (1, 0, 1, "uvu", True)],
            ...     shared_weights=False, internal_weights=False)
            >>> TensorProductConv.from_e3nn(tp).weight_numel == tp.weight_numel
            True
        """
        # e3nn stores each path's final constant (its sqrt(alpha)) in path_weight; with both
        # normalisations "none" our coefficient is sqrt(path_weight), so pass its square.
        instructions = [
            (ins.i_in1, ins.i_in2, ins.i_out, ins.connection_mode, ins.has_weight, ins.path_weight**2)
            for ins in tp.instructions
        ]
        plan = plan_tensor_product(
            Irreps(str(tp.irreps_in1)), Irreps(str(tp.irreps_in2)), Irreps(str(tp.irreps_out)), instructions,
            irrep_normalization="none", path_normalization="none",
        )
        module = cls.from_plan(plan, tp.shared_weights, tp.internal_weights, deterministic, backend)
        if tp.internal_weights:
            module.weight = torch.nn.Parameter(tp.weight.detach().clone().reshape(-1))
        return module

    @classmethod
    def from_cuequivariance(cls, tp: Any, deterministic: bool = False, backend: str | None = None) -> TensorProductConv:
        """The convolution equal to ``cuequivariance_torch.ChannelWiseTensorProduct`` + ``index_add``.

        cuequivariance builds the same channelwise paths as :func:`eqscale.o3.uvu_irreps_out`
        (loop over ``i1``, ``i2``, output irreps), then stably sorts the outputs in its irrep
        order, carrying the weight segments along; the plan reproduces that order.

        Args:
            tp: a ``cuequivariance_torch.ChannelWiseTensorProduct`` (``mul_ir`` or ``ir_mul``).
            deterministic: as in the constructor.
            backend: as in the constructor.
        """
        import cuequivariance as cue  # noqa: PLC0415 - optional dependency

        layout = "mul_ir" if str(tp.transpose_in1.source) == "(mul,irrep)" else "ir_mul"
        allowed = {ir for _, ir in Irreps(tp.irreps_out)}
        unsorted, instructions = uvu_irreps_out(tp.irreps_in1, tp.irreps_in2, sorted(allowed))
        _, permutation, _ = cue.Irreps("O3", [(mul, str(ir)) for mul, ir in unsorted]).sort()
        instructions = sorted(
            ((i1, i2, permutation[i_out], mode, weighted) for i1, i2, i_out, mode, weighted in instructions),
            key=lambda instruction: instruction[2],
        )
        plan = plan_tensor_product(tp.irreps_in1, tp.irreps_in2, tp.irreps_out, instructions, layout=layout)
        if plan.weight_numel != tp.weight_numel:
            raise ValueError(
                f"cannot reproduce {type(tp).__name__}: weight_numel {plan.weight_numel} != {tp.weight_numel}"
            )
        module = cls.from_plan(plan, tp.shared_weights, tp.internal_weights, deterministic, backend)
        if tp.internal_weights:
            module.weight = torch.nn.Parameter(tp.weight.detach().clone().reshape(-1))
        return module

    def forward(
        self,
        node_feats: torch.Tensor,
        edge_attrs: torch.Tensor,
        edge_weights: torch.Tensor | None,
        edge_index: torch.Tensor,
        num_nodes: int,
    ) -> torch.Tensor:
        """``(num_nodes, irreps_out.dim)`` messages summed at receivers.

        Args:
            node_feats: ``(N, irreps_in.dim)``.
            edge_attrs: ``(E, irreps_sh.dim)``.
            edge_weights: ``(E, weight_numel)``, or ``(weight_numel,)``/None with shared weights
                (None uses the internal weights).
            edge_index: ``(2, E)`` senders, receivers.
            num_nodes: number of output rows.
        """
        if edge_weights is None and self.weight is not None:
            edge_weights = self.weight
        return tp_conv(
            node_feats, edge_attrs, edge_weights, edge_index, num_nodes,
            plan=self.plan, deterministic=self.deterministic, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}, paths={len(self.plan.instructions)}, "
            f"weight_numel={self.weight_numel}, shared_weights={self.shared_weights}, layout={self.plan.layout!r}"
        )
