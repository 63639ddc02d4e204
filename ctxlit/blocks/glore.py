"""Global Reasoning unit (``glore``).

Paper: "Graph-Based Global Reasoning Networks", Yunpeng Chen, Marcus Rohrbach, Zhicheng Yan,
Shuicheng Yan, Jiashi Feng, Yannis Kalantidis, 2019 (CVPR 2019), arXiv:1811.12814.

Shapes for ``x`` of ``(N, C, H, W)``, ``L = H*W``, ``S = C'`` states (default C/2),
``K`` nodes (default C/4)::

    phi(X)   = W_s x                 (N, S, L)    state reduction, 1x1 conv C -> S
    B        = theta(X) = W_b x      (N, K, L)    node projection, 1x1 conv C -> K
    V        = phi(X) B^T            (N, S, K)    coordinate space -> interaction space
               (optionally / L, see ``normalize``)
    V'       = V + conv1d_nodes(V)   (N, S, K)    graph conv step 1: node-wise 1-D conv + identity
    V''      = conv1d_states(ReLU(V'))            graph conv step 2: state update (no bias)
    Y        = V'' B                 (N, S, L)    reverse projection with the same B
    Z        = x + BN(W_e Y)         (N, C, H, W) W_e: 1x1 conv S -> C, BN gamma = 0

BN's gamma starts at 0, so the unit starts as the identity.

``normalize=True`` divides V by L = H*W. Without it the node features are sums over all
pixels and grow with the image size, so a unit trained on 512x1024 crops sees larger inputs
at a full 1024x2048 test resolution (segmentation); with it they are averages and do not
depend on resolution. The official implementation leaves it off, so the default is off.
V and Y are accumulated in float32 so sums over many pixels stay finite under fp16/bf16.

Read-out: the projection B as ``(N, K, H, W)`` (pixel-to-node weights).
"""

from __future__ import annotations

import torch
from torch import nn

from ctxlit.blocks._common import RecordsAttention, hidden_width


class GloRe(RecordsAttention, nn.Module):
    """Global Reasoning unit: project to a graph, reason with a graph conv, project back.

    Args:
        channels: input and output channels C.
        state_ratio: states ``int(C * state_ratio)`` (paper: C' = C/2).
        node_ratio: nodes ``int(C * node_ratio)`` (paper: N = C/4).
        normalize: divide V by H*W (resolution-robust; official code: off).
    """

    spatial_operator = False

    def __init__(
        self,
        channels: int,
        *,
        state_ratio: float = 0.5,
        node_ratio: float = 0.25,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        states = hidden_width("GloRe", "state_ratio", channels, state_ratio)
        nodes = hidden_width("GloRe", "node_ratio", channels, node_ratio)
        self.channels, self.states, self.nodes = channels, states, nodes
        self.state_ratio, self.node_ratio, self.normalize = state_ratio, node_ratio, normalize
        self.reduce = nn.Conv2d(channels, states, kernel_size=1)  # phi
        self.project = nn.Conv2d(channels, nodes, kernel_size=1)  # theta -> B
        self.node_conv = nn.Conv1d(nodes, nodes, kernel_size=1)  # adjacency, over nodes
        self.state_conv = nn.Conv1d(states, states, kernel_size=1, bias=False)  # state update W_g
        self.extend = nn.Conv2d(states, channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=1e-4)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.reduce, self.project, self.node_conv, self.state_conv, self.extend, self.bn):
            module.reset_parameters()
        nn.init.zeros_(self.bn.weight)  # starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        states = self.reduce(x).reshape(n, self.states, h * w)
        proj = self.project(x).reshape(n, self.nodes, h * w)
        if self._attention_sink is not None:
            self._record(proj.reshape(n, self.nodes, h, w))
        with torch.autocast(x.device.type, enabled=False):
            v = states.float() @ proj.float().transpose(1, 2)  # (N, S, K)
            if self.normalize:
                v = v / (h * w)
            v = v.to(self.node_conv.weight.dtype)  # float32 unless the module itself was cast
            v = v + self.node_conv(v.transpose(1, 2)).transpose(1, 2)
            v = self.state_conv(torch.relu(v))
            y = (v @ proj.to(v.dtype)).reshape(n, self.states, h, w)
            # Extend and BN in float32 too: without ``normalize`` y grows with H*W and passes
            # fp16's 65504 at full Cityscapes resolution, and BN turns inf into NaN.
            out = self.bn(self.extend(y))
        return x + out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}, states={self.states}, nodes={self.nodes}, normalize={self.normalize}"
