"""Selective Kernel convolution (``sk``), a spatial operator replacing a 3x3 conv.

Paper: "Selective Kernel Networks", Xiang Li, Wenhai Wang, Xiaolin Hu, Jian Yang, 2019
(CVPR 2019), arXiv:1903.06586.

Shapes for ``x`` of ``(N, C_in, H, W)``, output ``(N, C, H', W')`` with ``C = out_channels``,
``H' = (H - 1) // stride + 1``::

    split   U_m = ReLU(BN(conv3x3_m(x)))   (N, C, H', W')  m = 1..M, dilation m, groups G
    fuse    U   = sum_m U_m                (N, C, H', W')
            s   = mean_HW(U)               (N, C)
            z   = ReLU(BN(W_z s))          (N, d)     d = max(C / r, L), W_z: C -> d (no bias)
    select  a   = softmax_m(A_m z)         (N, M, C)  A_m: d -> C per branch (no bias)
            V   = sum_m a_m * U_m          (N, C, H', W')

Defaults as in the paper's SKNet-50: M=2 (3x3 with dilation 1 and 2, i.e. a 5x5 receptive
field), G=32, r=16, L=32. Both ``in_channels`` and ``out_channels`` must be divisible by G.
The branch softmax is computed in float32. Read-out: the branch weights ``a`` as ``(N, M, C)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ctxlit.blocks._common import RecordsAttention, check_positive_options
from ctxlit.errors import ConfigError


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class SelectiveKernelConv(RecordsAttention, nn.Module):
    """Selective Kernel convolution: M dilated grouped 3x3 branches mixed by channel attention.

    Args:
        in_channels, out_channels (default: in_channels), stride: as for the 3x3 conv it replaces.
        branches: M, branch m has dilation m (paper: 2).
        groups: G of the grouped 3x3 convs (paper: 32).
        reduction: r in d = max(C / r, L) (paper: 16).
        min_dim: L in d = max(C / r, L) (paper: 32).
    """

    spatial_operator = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        *,
        branches: int = 2,
        groups: int = 32,
        reduction: int = 16,
        min_dim: int = 32,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        check_positive_options(
            "SelectiveKernelConv", stride=stride, branches=branches, groups=groups, reduction=reduction, min_dim=min_dim
        )
        for option, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value % groups:
                raise ConfigError(
                    f"SelectiveKernelConv: {option}={value} must be divisible by groups={groups}"
                )
        dim = max(out_channels // reduction, min_dim)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.branches, self.groups, self.reduction, self.min_dim, self.dim = branches, groups, reduction, min_dim, dim
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    in_channels, out_channels, 3, stride=stride, padding=m, dilation=m, groups=groups, bias=False
                ),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
            for m in range(1, branches + 1)
        )
        self.squeeze = nn.Sequential(
            nn.Conv2d(out_channels, dim, kernel_size=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
        )
        self.select = nn.Conv2d(dim, branches * out_channels, kernel_size=1, bias=False)  # A, B, ... stacked
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The grouped 3x3 convs (C / G = 2 channels per group at C=64) cost about a full 3x3
        # conv each in NCHW on CPU and half that in channels_last, so they run channels_last
        # there; the output goes back to the input's layout.
        inner = x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x
        feats = [conv(inner) for conv in self.convs]  # M x (N, C, H', W')
        # s = mean_HW(sum_m U_m), without materialising the sum (or a stack) of the branches
        summary = sum(f.mean(dim=(2, 3), keepdim=True) for f in feats)  # (N, C, 1, 1)
        logits = self.select(self.squeeze(summary)).reshape(x.shape[0], self.branches, self.out_channels)
        weights = logits.float().softmax(dim=1)
        if self._attention_sink is not None:
            self._record(weights)
        weights = weights.to(feats[0].dtype)[..., None, None].unbind(1)  # M x (N, C, 1, 1)
        out = feats[0] * weights[0]
        for f, w in zip(feats[1:], weights[1:]):
            out = torch.addcmul(out, f, w)
        return out.contiguous(memory_format=_memory_format(x))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, branches={self.branches}, "
            f"groups={self.groups}, reduction={self.reduction}, min_dim={self.min_dim}"
        )
