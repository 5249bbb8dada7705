"""SO(2) (eSCN) convolution of any degree (Passaro & Zitnick 2023).

Per-edge Wigner-D, rotation into the edge frame, per-``m`` linear maps, rotation back and scatter.

A CG tensor-product convolution with a spherical-harmonic filter costs ``O(L^6)``; in the frame
where the edge is the polar axis ``y`` the filter has only ``m = 0`` components, and the product
becomes block-diagonal in ``|m|``: for each ``m`` a complex linear map ``W1 + i W2`` between the
``(+m, -m)`` pairs of all degrees, ``O(L^3)``. Layouts (node features ``(N, (L+1)^2, C)`` in
e3nn's ``l^2 + l + m`` order, packed Wigner-D, m-major edge features, flat weights, radial
multipliers) are documented in :mod:`eqscale.ops.so2_conv._layout`; the Wigner-D convention (the
minimal rotation onto ``y``, which fixes the roll angle) in :mod:`eqscale.ops.so2_conv.reference`.

How the derivatives are built: rotating in and rotating back are the same trilinear form

    F(X, D, Y) = sum_e sum_{l, m, m', c} Y[e, (l, m), c] D_e,l[m, m'] X[index_e, (l, m'), c]

(``|m| <= mmax``), with ``index`` the senders (rotate in, ``Y`` open) or the receivers (rotate
back and scatter, ``X`` open). Every fused backend provides one operator, ``contract``, that
evaluates ``F`` with one slot open (0: node features, 1: Wigner-D, 2: edge features); the
derivative of ``contract(open = s)`` with respect to slot ``t``, given the cotangent ``h`` of slot
``s``, is ``contract(open = t)`` with ``h`` placed in slot ``s``. Backward, double backward and
any higher order follow from this one rule. The SO(2) maps in between are dense GEMMs per ``m``
(PyTorch's).
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from eqscale import backends
from eqscale.o3._spherical_harmonics import check_lmax
from eqscale.ops.so2_conv import _linear, _wigner
from eqscale.ops.so2_conv import cpu as _cpu
from eqscale.ops.so2_conv import reference as _reference
from eqscale.ops.so2_conv._layout import (
    check_edge_index,
    check_edge_vec,
    check_int,
    check_like,
    check_mmax,
    check_tensor,
    lmax_of_coefficients,
    lmax_of_wigner,
    mmax_of_edge_coefficients,
    num_coefficients,
    num_m_coefficients,
    num_radial,
    rotate_flops,
    so2_weight_numel,
    wigner_numel,
)

__all__ = [
    "edge_rotate_in",
    "edge_rotate_out_scatter",
    "num_m_coefficients",
    "num_radial",
    "so2_conv",
    "so2_weight_numel",
    "unpack_wigner",
    "wigner_d",
    "wigner_numel",
]

NODE, WIGNER, EDGE = range(3)
_FUSED_DTYPES = (torch.float32, torch.float64)
_MAX_CPU_LMAX = 64  # the C++ kernel's fixed-size row table


def wigner_d(edge_vec: torch.Tensor, lmax: int, *, backend: str | None = None) -> torch.Tensor:
    """Real Wigner-D blocks ``D_0..D_lmax`` of the rotation taking each edge onto the ``y`` axis.

    The rotation is ``R = eqscale.o3.rotation_to_axis(edge_vec, "y")``, the minimal rotation
    (about ``edge_vec x e_y``) that maps ``edge_vec / |edge_vec|`` to e3nn's polar axis ``y``: this
    is the convention for the free roll angle about ``y`` (the SO(2) convolution does not depend
    on it). ``D_l = eqscale.o3.wigner_D(l, R)``, so ``D_l @ Y_l(edge_vec)`` has only its ``m = 0``
    component. Computed by the Ivanic-Ruedenberg recursion from ``D_1 = R`` in ``O(L^3)`` per
    edge; differentiable (to any order) with respect to ``edge_vec``. The ``cpu`` backend runs
    the recursion and its first derivative in C++; the others run it in PyTorch.

    Args:
        edge_vec: ``(E, 3)`` floating tensor of non-zero vectors.
        lmax: maximum degree ``>= 0`` (``<= 64`` on the ``cpu`` backend).
        backend: as in :func:`edge_rotate_in`.

    Returns:
        ``(E, sum_l (2l+1)^2)``: the blocks one after the other, each ``(2l+1, 2l+1)`` row-major;
        :func:`unpack_wigner` splits them.

    Raises:
        ValueError: bad shape, negative ``lmax`` (or above 64 on ``cpu``), a zero-length edge
            vector or an unknown backend.
        TypeError: a non-floating ``edge_vec``, or one neither float32 nor float64 on ``cpu``.

    Example:
        >>> import torch, eqscale
        >>> D = eqscale.ops.wigner_d(torch.tensor([[0.0, 0.0, 2.0]]), lmax=1)
        >>> D.shape
        torch.Size([1, 10])
        >>> (D[:, 1:].reshape(3, 3) @ torch.tensor([0.0, 0.0, 1.0])).round(decimals=6) + 0.0
        tensor([0., 1., 0.])
    """
    edge_vec = check_edge_vec(edge_vec)
    check_lmax(lmax)
    return _wigner.wigner_d(edge_vec, lmax, _resolve(edge_vec, backend, lmax, "edge_vec"))


def unpack_wigner(wigner: torch.Tensor, lmax: int | None = None) -> list[torch.Tensor]:
    """Splits packed Wigner-D ``(E, sum_l (2l+1)^2)`` into the blocks ``[(E, 2l+1, 2l+1), ...]``.

    Example:
        >>> import torch, eqscale
        >>> from eqscale.ops.so2_conv import unpack_wigner
        >>> blocks = unpack_wigner(eqscale.ops.wigner_d(torch.randn(4, 3), 2))
        >>> [tuple(b.shape) for b in blocks]
        [(4, 1, 1), (4, 3, 3), (4, 5, 5)]
    """
    wigner = check_tensor(wigner, "wigner", 2)
    found = lmax_of_wigner(wigner.shape[1])
    if lmax is not None and lmax != found:
        raise ValueError(f"wigner has the blocks of lmax={found}, but lmax={lmax} was given")
    return _reference.unpack_wigner(wigner, found)


def edge_rotate_in(
    node_feats: torch.Tensor,
    wigner: torch.Tensor,
    edge_index: torch.Tensor,
    mmax: int,
    *,
    receivers: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Gathers sender features, rotates them into each edge's frame and keeps ``|m| <= mmax``.

    ``out[e] = D_e x[sender_e]`` restricted to ``|m| <= mmax``, in the m-major order (``m = 0``
    for all ``l``, then ``+1``, ``-1``, ``+2``, ...) that makes the SO(2) maps plain GEMMs. The
    fused backends never build the gathered ``(E, (L+1)^2, C)`` tensor.

    Args:
        node_feats: ``(N, (L+1)^2, C)`` in e3nn's ``l^2 + l + m`` order.
        wigner: ``(E, sum_l (2l+1)^2)`` from :func:`wigner_d` with the same ``L``.
        edge_index: ``(2, E)`` int64: senders, receivers.
        mmax: highest ``|m|`` kept, ``0 <= mmax <= L``.
        receivers: also rotate the receivers' features and concatenate them after the senders'
            along the channels (``2C`` output channels), as eSEN's edge-wise blocks do.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``; None follows
            :mod:`eqscale.backends`.

    Returns:
        ``(E, num_m_coefficients(L, mmax), C)`` (or ``2C`` channels with ``receivers``).

    Example:
        >>> import torch, eqscale
        >>> x, vec = torch.randn(3, 9, 8), torch.randn(4, 3)
        >>> edge_index = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 2]])
        >>> D = eqscale.ops.wigner_d(vec, lmax=2)
        >>> eqscale.ops.edge_rotate_in(x, D, edge_index, mmax=1).shape
        torch.Size([4, 7, 8])
    """
    node_feats = check_tensor(node_feats, "node_feats", 3)
    lmax = lmax_of_coefficients(node_feats.shape[1])
    mmax = check_mmax(mmax, lmax)
    _check_wigner(wigner, lmax, node_feats)
    check_edge_index(edge_index, wigner.shape[0], node_feats.shape[0], node_feats.shape[0])
    if not isinstance(receivers, bool):
        raise TypeError(f"receivers must be a bool, got {type(receivers).__name__}")
    chosen = _resolve(node_feats, backend, lmax)
    if chosen == "reference":
        return _reference.edge_rotate_in(node_feats, wigner, edge_index, mmax, receivers)
    return _fused_rotate_in(chosen, node_feats, wigner, edge_index, lmax, mmax, receivers)


def edge_rotate_out_scatter(
    edge_feats: torch.Tensor,
    wigner: torch.Tensor,
    edge_index: torch.Tensor,
    num_nodes: int,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Rotates m-major edge features back to the global frame and sums them at the receivers.

    ``out[i] = sum over edges e = (j -> i) of D_e^T y_e`` (components with ``|m| > mmax`` taken as
    zero), without materialising the rotated ``(E, (L+1)^2, C)`` messages in a fused backend.

    Args:
        edge_feats: ``(E, num_m_coefficients(L, mmax), C)`` in the m-major order.
        wigner: ``(E, sum_l (2l+1)^2)`` from :func:`wigner_d`; it sets ``L``.
        edge_index: ``(2, E)`` int64: senders, receivers.
        num_nodes: rows of the output.
        backend: as in :func:`edge_rotate_in`.

    Returns:
        ``(num_nodes, (L+1)^2, C)``.

    Example:
        >>> import torch, eqscale
        >>> D = eqscale.ops.wigner_d(torch.randn(4, 3), lmax=2)
        >>> y = torch.randn(4, 7, 8)  # mmax = 1
        >>> edge_index = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 2]])
        >>> eqscale.ops.edge_rotate_out_scatter(y, D, edge_index, 3).shape
        torch.Size([3, 9, 8])
    """
    edge_feats = check_tensor(edge_feats, "edge_feats", 3)
    wigner = check_tensor(wigner, "wigner", 2)
    lmax = lmax_of_wigner(wigner.shape[1])
    mmax = mmax_of_edge_coefficients(edge_feats.shape[1], lmax)
    check_like(wigner, "wigner", edge_feats, "edge_feats")
    if wigner.shape[0] != edge_feats.shape[0]:
        raise ValueError(f"wigner must have one row per edge ({edge_feats.shape[0]}), got {wigner.shape[0]}")
    num_nodes = check_int(num_nodes, "num_nodes")
    check_edge_index(edge_index, edge_feats.shape[0], torch.iinfo(torch.int64).max, num_nodes)
    chosen = _resolve(edge_feats, backend, lmax, "edge_feats")
    if chosen == "reference":
        return _reference.edge_rotate_out_scatter(edge_feats, wigner, edge_index, num_nodes)
    return _contract(chosen)(
        None,
        wigner.contiguous(),
        edge_feats.contiguous(),
        edge_index[1].long().contiguous(),
        num_nodes,
        NODE,
        lmax,
        mmax,
    )


def so2_conv(
    node_feats: torch.Tensor,
    edge_vec: torch.Tensor,
    edge_index: torch.Tensor,
    num_nodes: int,
    weights: torch.Tensor,
    radial: torch.Tensor | None,
    *,
    lmax: int,
    mmax: int,
    backend: str | None = None,
) -> torch.Tensor:
    """The eSCN convolution: rotate in, per-``m`` SO(2) maps with radial modulation, rotate back, sum.

    ``out[i] = sum over edges e = (j -> i) of D_e^T S(r_e * (D_e x_j)_{|m| <= mmax})`` where ``D_e``
    is :func:`wigner_d` of ``edge_vec[e]``, ``r_e`` the radial multipliers and ``S`` the maps
    ``[[W1, -W2], [W2, W1]]`` on each ``(+m, -m)`` pair (one real map ``W0`` on ``m = 0``).
    SO(3)-equivariant; under reflections the ``W1`` part keeps the parity of its input and the
    ``W2`` part flips it (with ``W2 = 0`` the map is O(3)-equivariant). With ``mmax = lmax`` it
    equals a channelwise CG tensor-product convolution with a spherical-harmonic filter for a
    matching choice of weights.

    Args:
        node_feats: ``(N, (L+1)^2, C_in)`` in e3nn's ``l^2 + l + m`` order.
        edge_vec: ``(E, 3)`` non-zero edge vectors ``pos[receiver] - pos[sender]``.
        edge_index: ``(2, E)`` int64: senders, receivers.
        num_nodes: rows of the output.
        weights: flat ``(so2_weight_numel(L, mmax, C_in, C_out),)``: ``W0``, then ``W1, W2`` per
            ``m`` (layout in :mod:`eqscale.ops.so2_conv._layout`); ``C_out`` is inferred.
        radial: ``(E, num_radial(L, mmax), C_in)`` per-edge multipliers of the edge-frame inputs
            (shared by ``+m`` and ``-m``), or None.
        lmax: the degree ``L`` of ``node_feats``.
        mmax: highest ``|m|`` kept in the edge frame, ``0 <= mmax <= lmax``.
        backend: as in :func:`edge_rotate_in`.

    Returns:
        ``(num_nodes, (L+1)^2, C_out)``.

    Example:
        >>> import torch, eqscale
        >>> from eqscale.ops.so2_conv import so2_conv, so2_weight_numel
        >>> x, vec = torch.randn(3, 9, 4), torch.randn(4, 3)
        >>> edge_index = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 2]])
        >>> w = torch.randn(so2_weight_numel(2, 1, 4, 4))
        >>> so2_conv(x, vec, edge_index, 3, w, None, lmax=2, mmax=1).shape
        torch.Size([3, 9, 4])
    """
    check_lmax(lmax)
    mmax = check_mmax(mmax, lmax)
    node_feats = check_tensor(node_feats, "node_feats", 3)
    if node_feats.shape[1] != num_coefficients(lmax):
        raise ValueError(
            f"node_feats must have shape (N, {num_coefficients(lmax)}, C) for lmax={lmax}, "
            f"got {tuple(node_feats.shape)}"
        )
    edge_vec = check_edge_vec(edge_vec)
    check_like(edge_vec, "edge_vec", node_feats, "node_feats")
    num_nodes = check_int(num_nodes, "num_nodes")
    check_edge_index(edge_index, edge_vec.shape[0], node_feats.shape[0], num_nodes)
    channels_out = _check_weights(weights, node_feats, lmax, mmax)
    _check_radial(radial, node_feats, edge_vec.shape[0], lmax, mmax)
    chosen = _resolve(node_feats, backend, lmax)
    if chosen == "reference":
        return _reference.so2_conv(
            node_feats, edge_vec, edge_index, num_nodes, weights, radial, lmax, mmax, channels_out
        )
    wigner = _wigner.wigner_d(edge_vec, lmax, chosen).contiguous()
    edge_feats = _fused_rotate_in(chosen, node_feats, wigner, edge_index, lmax, mmax, False)
    messages = _linear.so2_linear(edge_feats, weights, radial, lmax, mmax, channels_out)
    return _contract(chosen)(
        None, wigner, messages.contiguous(), edge_index[1].long().contiguous(), num_nodes, NODE, lmax, mmax
    )


# ----------------------------------------------------------------------------------------------
# checks


def _check_wigner(wigner: object, lmax: int, like: torch.Tensor) -> None:
    wigner = check_tensor(wigner, "wigner", 2)
    if wigner.shape[1] != wigner_numel(lmax):
        raise ValueError(
            f"wigner must have shape (E, {wigner_numel(lmax)}) for lmax={lmax} (from node_feats), "
            f"got {tuple(wigner.shape)}"
        )
    check_like(wigner, "wigner", like, "node_feats")


def _check_weights(weights: object, node_feats: torch.Tensor, lmax: int, mmax: int) -> int:
    weights = check_tensor(weights, "weights", 1)
    check_like(weights, "weights", node_feats, "node_feats")
    channels_in = node_feats.shape[2]
    per_channel = so2_weight_numel(lmax, mmax, channels_in, 1)
    if per_channel == 0 or weights.shape[0] % per_channel:
        raise ValueError(
            f"weights must have so2_weight_numel(lmax={lmax}, mmax={mmax}, C_in={channels_in}, C_out) = "
            f"{per_channel} * C_out entries, got {weights.shape[0]}"
        )
    return weights.shape[0] // per_channel


def _check_radial(radial: object, node_feats: torch.Tensor, num_edges: int, lmax: int, mmax: int) -> None:
    if radial is None:
        return
    radial = check_tensor(radial, "radial", 3)
    expected = (num_edges, num_radial(lmax, mmax), node_feats.shape[2])
    if tuple(radial.shape) != expected:
        raise ValueError(
            f"radial must have shape (E, num_radial(lmax, mmax), C_in) = {expected}, got {tuple(radial.shape)}"
        )
    check_like(radial, "radial", node_feats, "node_feats")


# ----------------------------------------------------------------------------------------------
# backends


def _resolve(tensor: torch.Tensor, backend: str | None, lmax: int, argument: str = "node_feats") -> str:
    chosen = backends.resolve(tensor.device, backend)
    available = {"reference": True, "cpu": _CPU_KERNELS, "triton": _TRITON_KERNELS}[chosen]
    if not available:
        requested = backend if backend is not None else backends.get_backend()
        if requested == "auto":
            return "reference"  # an older build without these kernels: stay correct, if slower
        raise ValueError(f"backend {chosen!r} has no SO(2) convolution kernels in this build; use 'reference'")
    if chosen == "cpu" and lmax > _MAX_CPU_LMAX:
        raise ValueError(f"lmax must be <= {_MAX_CPU_LMAX} for the 'cpu' backend, got {lmax}; use backend='reference'")
    if chosen != "reference" and tensor.dtype not in _FUSED_DTYPES:
        raise TypeError(
            f"{argument} must be float32 or float64 for the {chosen!r} backend, got {tensor.dtype}; "
            "use backend='reference' for other dtypes"
        )
    return chosen


def _fused_rotate_in(backend, node_feats, wigner, edge_index, lmax, mmax, receivers) -> torch.Tensor:
    contract = _contract(backend)
    node_feats, wigner = node_feats.contiguous(), wigner.contiguous()
    senders = contract(
        node_feats, wigner, None, edge_index[0].long().contiguous(), node_feats.shape[0], EDGE, lmax, mmax
    )
    if not receivers:
        return senders
    at_receivers = contract(
        node_feats, wigner, None, edge_index[1].long().contiguous(), node_feats.shape[0], EDGE, lmax, mmax
    )
    return torch.cat([senders, at_receivers], dim=2)


def _contract(backend: str):
    name = _cpu.OP_NAME if backend == "cpu" else _TRITON_OP_NAME
    return getattr(torch.ops.eqscale, name).default


def _triton_op_name() -> str:
    try:
        from eqscale.ops.so2_conv import triton as _triton  # noqa: PLC0415 - optional dependency
    except ImportError:
        return ""
    return _triton.OP_NAME


def _open_shape(slot: int, node, wigner, edge, index, num_nodes: int, lmax: int, mmax: int) -> tuple[int, ...]:
    channels = (node if node is not None else edge).shape[-1]
    return {
        NODE: (num_nodes, num_coefficients(lmax), channels),
        WIGNER: (index.shape[0], wigner_numel(lmax)),
        EDGE: (index.shape[0], num_m_coefficients(lmax, mmax), channels),
    }[slot]


def _register(op_name: str, *, with_fake: bool) -> None:
    """Fake impl, the autograd rule of the module docstring and the FLOP formula of one backend."""
    qualified = f"eqscale::{op_name}"
    op = getattr(torch.ops.eqscale, op_name).default

    if with_fake:

        @torch.library.register_fake(qualified)
        def _fake(node, wigner, edge, index, num_nodes, open_slot, lmax, mmax):
            reference = next(t for t in (node, wigner, edge) if t is not None)
            return reference.new_empty(_open_shape(open_slot, node, wigner, edge, index, num_nodes, lmax, mmax))

    def setup_context(ctx, inputs, output):
        node, wigner, edge, index, num_nodes, open_slot, lmax, mmax = inputs
        ctx.save_for_backward(node, wigner, edge, index)
        ctx.node_rows = node.shape[0] if node is not None else num_nodes
        ctx.rest = (num_nodes, open_slot, lmax, mmax)

    def backward(ctx, grad):
        slots = list(ctx.saved_tensors[:3])
        index = ctx.saved_tensors[3]
        num_nodes, open_slot, lmax, mmax = ctx.rest
        slots[open_slot] = grad.contiguous()
        grads = [None] * 3
        for slot in range(3):
            if slot != open_slot and ctx.needs_input_grad[slot]:
                arguments = list(slots)
                arguments[slot] = None
                grads[slot] = op(*arguments, index, ctx.node_rows, slot, lmax, mmax)
        return (*grads, None, None, None, None, None)

    torch.library.register_autograd(qualified, backward, setup_context=setup_context)

    @register_flop_formula(getattr(torch.ops.eqscale, op_name))
    def _flops(
        node_shape, wigner_shape, edge_shape, index_shape, num_nodes, open_slot, lmax, mmax, *args, **kwargs
    ) -> int:
        channels = (node_shape if node_shape is not None else edge_shape)[-1]
        return rotate_flops(index_shape[0], lmax, mmax, channels)


# Looked up once at import: torch.compile cannot trace the extension import.
_CPU_KERNELS = _cpu.load()
_TRITON_OP_NAME = _triton_op_name() if backends.triton_available() else ""
_TRITON_KERNELS = bool(_TRITON_OP_NAME)
if _CPU_KERNELS:
    _register(_cpu.OP_NAME, with_fake=True)
if _TRITON_KERNELS:
    _register(_TRITON_OP_NAME, with_fake=False)
