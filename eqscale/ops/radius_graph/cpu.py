"""Binds the C++ cell-list radius graph (``csrc/cpu/radius_graph.cpp``).

Schema (in ``csrc/ops.cpp``)::

    radius_graph(Tensor pos, Tensor batch, Tensor cell, Tensor pbc, float cutoff,
                 bool self_interaction, int max_num_neighbors, bool half)
        -> (Tensor edge_index, Tensor shifts, Tensor num_neighbors)

``pos`` is ``(N, 3)`` float32/float64 contiguous, ``batch`` ``(N,)`` sorted int64, ``cell``
``(B, 3, 3)`` float64, ``pbc`` ``(B, 3)`` bool; ``max_num_neighbors < 0`` means no limit. The
outputs are those of :func:`eqscale.ops.radius_graph.reference.radius_graph`, bit for bit.
"""

from __future__ import annotations

import torch

from eqscale import _extension

OP_NAME = "radius_graph"


def load() -> bool:
    """Loads ``eqscale._C``; whether it is available and has this operator."""
    return _extension.load() is not None and hasattr(torch.ops.eqscale, OP_NAME)
