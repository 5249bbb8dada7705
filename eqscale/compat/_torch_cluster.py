"""``torch_cluster.radius_graph`` on top of :func:`eqscale.ops.radius_graph`."""

from __future__ import annotations

import torch

from eqscale.ops.radius_graph import radius_graph as _radius_graph


def radius_graph(
    x: torch.Tensor,
    r: float,
    batch: torch.Tensor | None = None,
    loop: bool = False,
    max_num_neighbors: int = 32,
    flow: str = "source_to_target",
    num_workers: int = 1,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Drop-in for ``torch_cluster.radius_graph``: edges between points closer than ``r``.

    Same signature and output convention: with ``flow="source_to_target"`` (the default),
    ``edge_index[0]`` is the neighbour (source) and ``edge_index[1]`` the centre (target); with
    ``"target_to_source"`` the rows are swapped. Edges are grouped by centre, as in torch_cluster.

    Differences, all deliberate: the edges of each centre are sorted by neighbour index; a centre
    with more than ``max_num_neighbors`` neighbours keeps the *nearest* ones (ties to the smaller
    index) rather than whichever the search found first, so the result does not depend on the
    backend or the thread count; the cutoff is strict (``distance < r``). As in torch_cluster,
    the truncation is silent; use :func:`eqscale.ops.radius_graph` with
    ``return_num_neighbors=True`` to see it. ``num_workers`` and ``batch_size`` are accepted and
    ignored (the thread count is torch's). Points may have 1, 2 or 3 coordinates.

    Args:
        x: ``(N, D)`` float points, ``D <= 3``.
        r: radius.
        batch: ``(N,)`` sorted system index, or ``None``.
        loop: include self loops ``(i, i)`` (they count towards ``max_num_neighbors``).
        max_num_neighbors: most neighbours kept per centre.
        flow: ``"source_to_target"`` or ``"target_to_source"``.
        num_workers: ignored.
        batch_size: ignored (the number of systems follows from ``batch``).

    Returns:
        ``(2, E)`` int64 ``edge_index``.

    Example:
        >>> import torch
        >>> from eqscale.compat import radius_graph
        >>> x = torch.tensor([[0.0], [1.0], [2.5]])
        >>> radius_graph(x, r=1.6)
        tensor([[1, 0, 2, 1],
                [0, 1, 1, 2]])
    """
    if flow not in ("source_to_target", "target_to_source"):
        raise ValueError(f"flow must be 'source_to_target' or 'target_to_source', got {flow!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2 or not 1 <= x.shape[1] <= 3:
        raise ValueError(f"x must have shape (N, D) with D <= 3, got {tuple(x.shape)}")
    if x.shape[1] < 3:
        x = torch.nn.functional.pad(x, (0, 3 - x.shape[1]))
    if isinstance(max_num_neighbors, bool) or not isinstance(max_num_neighbors, int):
        raise TypeError(f"max_num_neighbors must be an int, got {type(max_num_neighbors).__name__}")
    edge_index, _, _ = _radius_graph(
        x,
        r,
        batch=batch,
        self_interaction=loop,
        max_num_neighbors=max_num_neighbors,
        return_num_neighbors=True,
    )
    return edge_index if flow == "source_to_target" else edge_index.flip(0)
