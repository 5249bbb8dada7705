"""Binds the C++ tensor-product convolution (``csrc/cpu/tp_conv.cpp``).

Schema (``csrc/ops.cpp``)::

    tp_conv_contract(Tensor? node_feats, Tensor? edge_attrs, Tensor? edge_weights, Tensor? grad_out,
                     Tensor edge_index, int num_nodes, int open_slot, Tensor paths, Tensor cg_index,
                     Tensor cg_value, int layout, int[] sizes, bool deterministic, int flops_per_edge)
        -> Tensor

evaluates the 4-linear form of :mod:`eqscale.ops.tp_conv` with slot ``open_slot`` left open (its
tensor is None). ``sizes = [sender_rows, dim_in1, dim_in2, weight_numel, weights_shared,
dim_out]``; the tables are those of :mod:`eqscale.ops.tp_conv._tables`. ::

    tp_conv_backward(Tensor node_feats, Tensor edge_attrs, Tensor? edge_weights, Tensor grad_out,
                     Tensor edge_index, int num_nodes, int wanted, Tensor paths, Tensor cg_index,
                     Tensor cg_value, int layout, int[] sizes, bool deterministic, int flops_per_edge)
        -> (Tensor, Tensor, Tensor)

returns the open slots 0, 1 and 2 at once (bit mask ``wanted``: 1, 2, 4; the others are empty
``(0,)`` tensors), sharing the work between them. ::

    tp_conv_double_backward(Tensor node_feats, Tensor edge_attrs, Tensor edge_weights, Tensor grad_out,
                            Tensor cot_node_feats, Tensor cot_edge_attrs, Tensor cot_edge_weights,
                            Tensor edge_index, int num_nodes, Tensor paths, Tensor cg_index,
                            Tensor cg_value, int layout, int[] sizes, bool deterministic,
                            int flops_per_edge) -> (Tensor, Tensor, Tensor)

is the backward of ``tp_conv_backward`` (wanted = 7) given the cotangents of all three of its
outputs: the gradients with respect to slots 0, 1 and 2, each the sum of the two terms that reach
it from the cotangents in the other two slots, in one sweep over the edges.
"""

from __future__ import annotations

from eqscale import _extension

OP_NAME = "tp_conv_contract"
BACKWARD_OP_NAME = "tp_conv_backward"
DOUBLE_BACKWARD_OP_NAME = "tp_conv_double_backward"


def load() -> bool:
    """Loads ``eqscale._C``; whether it provides the tensor-product convolution."""
    module = _extension.load()
    if module is None:
        return False
    import torch  # noqa: PLC0415

    return hasattr(torch.ops.eqscale, OP_NAME)
