"""``SO2Conv``: the eSCN convolution (Passaro & Zitnick 2023) as one module."""

from __future__ import annotations

import math

import torch

from eqscale.ops.so2_conv import num_radial, so2_conv, so2_weight_numel
from eqscale.ops.so2_conv._layout import check_int, check_mmax, m_blocks


class SO2Conv(torch.nn.Module):
    """Rotate senders into each edge frame, per-``m`` SO(2) maps, rotate back, sum at receivers.

    Node features are ``(N, (L+1)^2, C)`` in e3nn's ``l^2 + l + m`` order (see
    :mod:`eqscale.ops.so2_conv._layout`). With ``edge_features > 0`` a linear layer maps per-edge
    invariant features (e.g. a radial basis of the distance, :class:`eqscale.nn.RadialBasis`) to
    the radial multipliers of the edge-frame inputs, as eSCN's ``rad_func``.

    Args:
        lmax: degree ``L`` of the features.
        mmax: highest ``|m|`` kept in the edge frame.
        channels_in: input channels ``C_in``.
        channels_out: output channels ``C_out``.
        edge_features: size of the per-edge invariant input of the radial layer; 0: no radial
            modulation.
        backend: force a backend; None follows :mod:`eqscale.backends`.

    Example:
        >>> import torch
        >>> conv = SO2Conv(lmax=2, mmax=1, channels_in=8, channels_out=8, edge_features=4)
        >>> x, vec = torch.randn(5, 9, 8), torch.randn(7, 3)
        >>> edge_index = torch.randint(0, 5, (2, 7))
        >>> conv(x, vec, edge_index, 5, torch.randn(7, 4)).shape
        torch.Size([5, 9, 8])
    """

    def __init__(
        self,
        lmax: int,
        mmax: int,
        channels_in: int,
        channels_out: int,
        edge_features: int = 0,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.lmax = check_int(lmax, "lmax")
        self.mmax = check_mmax(mmax, lmax)
        self.channels_in = check_int(channels_in, "channels_in", 1)
        self.channels_out = check_int(channels_out, "channels_out", 1)
        self.edge_features = check_int(edge_features, "edge_features")
        self.backend = backend
        self.weight = torch.nn.Parameter(torch.empty(so2_weight_numel(lmax, mmax, channels_in, channels_out)))
        if edge_features:
            self.radial = torch.nn.Linear(edge_features, num_radial(lmax, mmax) * channels_in)
        else:
            self.register_module("radial", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit-variance outputs for unit-variance inputs: each block scaled by ``1/sqrt(fan_in)``."""
        with torch.no_grad():
            offset = 0
            for m, _, n in m_blocks(self.lmax, self.mmax):
                count = (1 if m == 0 else 2) * n * self.channels_in * n * self.channels_out
                fan_in = n * self.channels_in * (1 if m == 0 else 2)
                self.weight[offset : offset + count].normal_(0.0, 1.0 / math.sqrt(fan_in))
                offset += count

    def forward(
        self,
        node_feats: torch.Tensor,
        edge_vec: torch.Tensor,
        edge_index: torch.Tensor,
        num_nodes: int,
        edge_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(num_nodes, (L+1)^2, C_out)``.

        Args:
            node_feats: ``(N, (L+1)^2, C_in)``.
            edge_vec: ``(E, 3)`` non-zero edge vectors.
            edge_index: ``(2, E)`` senders, receivers.
            num_nodes: rows of the output.
            edge_features: ``(E, edge_features)`` invariant edge inputs of the radial layer
                (required when the module has one).
        """
        radial = None
        if self.radial is not None:
            if edge_features is None:
                raise ValueError(f"edge_features of shape (E, {self.edge_features}) are required by this SO2Conv")
            radial = self.radial(edge_features).reshape(edge_vec.shape[0], -1, self.channels_in)
        return so2_conv(
            node_feats,
            edge_vec,
            edge_index,
            num_nodes,
            self.weight,
            radial,
            lmax=self.lmax,
            mmax=self.mmax,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"lmax={self.lmax}, mmax={self.mmax}, channels_in={self.channels_in}, channels_out={self.channels_out}, "
            f"edge_features={self.edge_features}"
        )
