"""Reference tensor-product convolution: the spec every fused backend must match.

``out[i] = sum over edges e = (j -> i) of TP(node_feats[j], edge_attrs[e]; edge_weights[e])``,
written the way users write it with e3nn: gather, tensor product, ``index_add``. It materialises
the ``E x dim_out`` messages that the fused backends avoid.
"""

from __future__ import annotations

import torch

from eqscale.o3._tensor_product import TensorProductPlan, tensor_product_reference


def tp_conv(
    node_feats: torch.Tensor,
    edge_attrs: torch.Tensor,
    edge_weights: torch.Tensor | None,
    edge_index: torch.Tensor,
    num_nodes: int,
    plan: TensorProductPlan,
) -> torch.Tensor:
    """Gather at senders, tensor product per edge, sum at receivers (differentiable by autograd).

    Args:
        node_feats: ``(N_in, irreps_in1.dim)``.
        edge_attrs: ``(E, irreps_in2.dim)``.
        edge_weights: ``(E, weight_numel)``, ``(weight_numel,)`` shared, or None without weights.
        edge_index: ``(2, E)``: row 0 senders, row 1 receivers.
        num_nodes: number of output rows.
        plan: the tensor-product plan.

    Returns:
        ``(num_nodes, irreps_out.dim)``.
    """
    senders, receivers = edge_index[0], edge_index[1]
    messages = tensor_product_reference(plan, node_feats[senders], edge_attrs, edge_weights)
    out = node_feats.new_zeros(num_nodes, plan.irreps_out.dim)
    return out.index_add(0, receivers, messages)
