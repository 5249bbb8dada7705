"""Binds the C++ SO(2)-convolution rotations (``csrc/cpu/so2_conv.cpp``).

Schema (``csrc/ops.cpp``)::

    so2_rotate_contract(Tensor? node, Tensor? wigner, Tensor? edge, Tensor index, int num_nodes,
                        int open_slot, int lmax, int mmax) -> Tensor

evaluates the trilinear form of :mod:`eqscale.ops.so2_conv` with slot ``open_slot`` left open
(its tensor is None): 0 node features ``(num_nodes, (L+1)^2, C)``, scattered by ``index``;
1 packed Wigner-D ``(E, sum_l (2l+1)^2)``; 2 m-major edge features ``(E, K, C)``, gathered by
``index``.

    so2_radial_scale(Tensor edge_feats, Tensor radial, int lmax, int mmax) -> Tensor
    so2_radial_scale_backward(Tensor grad, Tensor edge_feats, Tensor radial, int lmax, int mmax,
                              bool need_edge_feats, bool need_radial) -> (Tensor, Tensor)

multiply m-major edge features ``(E, K, C)`` by radial multipliers ``(E, K_half, C)`` (the row of
``(l, |m|)`` for both ``+m`` and ``-m``), and give both gradients in one pass (a ``(0,)`` tensor for
one not asked for): the radial modulation of :mod:`eqscale.ops.so2_conv._linear`.

    empty_pooled(Tensor like, int[] size) -> Tensor

an uninitialised CPU tensor from the buffer pool of ``csrc/cpu/memory.h``, for the outputs of the
SO(2) maps' GEMMs.
"""

from __future__ import annotations

from eqscale import _extension

OP_NAME = "so2_rotate_contract"
RADIAL_OP_NAME = "so2_radial_scale"
RADIAL_BACKWARD_OP_NAME = "so2_radial_scale_backward"
EMPTY_OP_NAME = "empty_pooled"


def load() -> bool:
    """Loads ``eqscale._C``; whether it provides the SO(2)-convolution rotations."""
    module = _extension.load()
    if module is None:
        return False
    import torch  # noqa: PLC0415

    return hasattr(torch.ops.eqscale, OP_NAME)
