"""Binds the C++ SO(2)-convolution rotations (``csrc/cpu/so2_conv.cpp``).

Schema (``csrc/ops.cpp``)::

    so2_rotate_contract(Tensor? node, Tensor? wigner, Tensor? edge, Tensor index, int num_nodes,
                        int open_slot, int lmax, int mmax) -> Tensor

evaluates the trilinear form of :mod:`eqscale.ops.so2_conv` with slot ``open_slot`` left open
(its tensor is None): 0 node features ``(num_nodes, (L+1)^2, C)``, scattered by ``index``;
1 packed Wigner-D ``(E, sum_l (2l+1)^2)``; 2 m-major edge features ``(E, K, C)``, gathered by
``index``.
"""

from __future__ import annotations

from eqscale import _extension

OP_NAME = "so2_rotate_contract"


def load() -> bool:
    """Loads ``eqscale._C``; whether it provides the SO(2)-convolution rotations."""
    module = _extension.load()
    if module is None:
        return False
    import torch  # noqa: PLC0415

    return hasattr(torch.ops.eqscale, OP_NAME)
