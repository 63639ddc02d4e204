"""Squeeze-and-Excitation block (``se``).

Paper: "Squeeze-and-Excitation Networks", Jie Hu, Li Shen, Samuel Albanie, Gang Sun, Enhua Wu,
2018 (CVPR 2018), arXiv:1709.01507.

Shapes for ``x`` of ``(N, C, H, W)``::

    s = mean_HW(x)                     (N, C, 1, 1)   squeeze (global average pooling)
    e = sigmoid(W2 ReLU(W1 s))         (N, C, 1, 1)   W1: FC C -> C/r, W2: FC C/r -> C (with bias)
    y = x * e                          (N, C, H, W)   excite (channel-wise scaling)

The FCs are 1x1 convolutions on the pooled map (same parameters as ``nn.Linear``), default init.
Read-out: the gates ``e`` as ``(N, C)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ctxlit.blocks._common import RecordsAttention, reduced_width


class SqueezeExcite(RecordsAttention, nn.Module):
    """Squeeze-and-Excitation: channel gates from globally pooled features.

    Args:
        channels: input and output channels C.
        reduction: r, hidden width ``C // r`` (paper: 16).
    """

    spatial_operator = False

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        hidden = reduced_width("SqueezeExcite", "reduction", channels, reduction)
        self.channels, self.reduction, self.hidden = channels, reduction, hidden
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        if self._attention_sink is not None:
            self._record(gates.flatten(1))
        return x * gates

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}"
