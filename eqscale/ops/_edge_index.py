"""The range check of ``edge_index`` shared by the convolutions' Python entry points."""

from __future__ import annotations

import torch


def check_edge_range(edge_index: torch.Tensor, sender_rows: int, num_nodes: int) -> None:
    """Raises unless senders are in ``[0, sender_rows)`` and receivers in ``[0, num_nodes)``.

    Out-of-range indices would read or write outside the tensors inside a fused kernel. Skipped
    while compiling (it reads values) and for an empty graph.

    Args:
        edge_index: ``(2, E)`` integer tensor, senders then receivers.
        sender_rows: rows of the sender features.
        num_nodes: rows of the receiver output.

    Raises:
        ValueError: an index is out of range (the message gives each row's range).

    Example:
        >>> check_edge_range(torch.tensor([[0, 1], [1, 0]]), 2, 2)
        >>> check_edge_range(torch.tensor([[0, 2], [1, 0]]), 2, 2)
        Traceback (most recent call last):
        ...
        ValueError: edge_index out of range: senders must be in [0, 2) ... got senders in [0, 2] ...
    """
    if not edge_index.shape[1] or torch.compiler.is_compiling():
        return
    senders_max, receivers_max = edge_index.max(dim=1).values.tolist()
    if int(edge_index.min()) < 0 or senders_max >= sender_rows or receivers_max >= num_nodes:
        raise ValueError(
            f"edge_index out of range: senders must be in [0, {sender_rows}) and receivers in "
            f"[0, {num_nodes}), got senders in [{int(edge_index[0].min())}, {senders_max}] and receivers "
            f"in [{int(edge_index[1].min())}, {receivers_max}]"
        )
