"""Strip Pooling Module (``spm``) and Mixed Pooling Module (``mpm``).

Paper: "Strip Pooling: Rethinking Spatial Pooling for Scene Parsing", Qibin Hou, Li Zhang,
Ming-Ming Cheng, Jiashi Feng, 2020 (CVPR 2020), arXiv:2003.13328.

Strip Pooling Module (``StripPooling``), ``x`` of ``(N, C, H, W)``::

    y_h = BN(conv3x1(mean_W x))        (N, C, H, 1)   vertical strip, 1-D conv over H
    y_w = BN(conv1x3(mean_H x))        (N, C, 1, W)   horizontal strip, 1-D conv over W
    y   = ReLU(y_h + y_w)              (N, C, H, W)   broadcast = expand both strips
    out = x * sigmoid(conv1x1(y))      (N, C, H, W)   gates the input

Mixed Pooling Module (``MixedPooling``, the SPNet head block), ``Ci = C / reduction``::

    a, b = CBR1x1(x), CBR1x1(x)                                     (N, Ci, H, W) each
    short-range: a' = CBR3x3(ReLU(CB3x3(a) + up(CB3x3(pool_p1(a))) + up(CB3x3(pool_p2(a)))))
                 pool_p = adaptive average pool to p x p (p1=20, p2=12)
    long-range:  b' = CBR3x3(ReLU(up(CB1x3(mean_H b)) + up(CB3x1(mean_W b))))
    out = ReLU(x + CB1x1(concat[a', b']))                           (N, C, H, W)

(CB = conv + BN, CBR = conv + BN + ReLU, ``up`` = bilinear, align_corners=True as in SPNet.)
Known trap: the fixed 20/12 adaptive pools do not export to ONNX when H, W are not multiples
of the pool sizes; pick ``pool1``/``pool2`` that divide your feature size if you need ONNX.
Neither block is the identity at start (the paper does not zero-initialise them).

Read-out: ``StripPooling`` records its gates ``sigmoid(conv1x1(y))`` as ``(N, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctxlit.blocks._common import RecordsAttention, check_positive_options, reduced_width, reset_submodules
from ctxlit.utils.layers import conv_norm_act


def _upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(t, size=size, mode="bilinear", align_corners=True)


class StripPooling(RecordsAttention, nn.Module):
    """Strip Pooling Module: gates from horizontal and vertical strip averages."""

    spatial_operator = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.strip_h = conv_norm_act(channels, channels, (3, 1), act=False)
        self.strip_w = conv_norm_act(channels, channels, (1, 3), act=False)
        self.fuse = nn.Conv2d(channels, channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_submodules(self)  # PyTorch defaults, as in SPNet (no zero-initialised layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y_h = self.strip_h(x.mean(dim=3, keepdim=True))
        y_w = self.strip_w(x.mean(dim=2, keepdim=True))
        gates = torch.sigmoid(self.fuse(torch.relu(y_h + y_w)))
        if self._attention_sink is not None:
            self._record(gates)
        return x * gates


class MixedPooling(nn.Module):
    """Mixed Pooling Module: short-range pyramid pooling + long-range strip pooling, residual.

    Args:
        channels: input and output channels C.
        reduction: inner width ``C // reduction`` per branch (SPNet: 4).
        pool1, pool2: output sizes of the two adaptive average pools (SPNet: 20, 12).
    """

    spatial_operator = False

    def __init__(self, channels: int, *, reduction: int = 4, pool1: int = 20, pool2: int = 12) -> None:
        super().__init__()
        check_positive_options("MixedPooling", pool1=pool1, pool2=pool2)
        inter = reduced_width("MixedPooling", "reduction", channels, reduction)
        self.channels, self.inter, self.reduction, self.pool1, self.pool2 = channels, inter, reduction, pool1, pool2
        self.reduce_short = conv_norm_act(channels, inter, (1, 1))
        self.reduce_long = conv_norm_act(channels, inter, (1, 1))
        self.local = conv_norm_act(inter, inter, (3, 3), act=False)
        self.pyramid1 = conv_norm_act(inter, inter, (3, 3), act=False)
        self.pyramid2 = conv_norm_act(inter, inter, (3, 3), act=False)
        self.strip_w = conv_norm_act(inter, inter, (1, 3), act=False)  # on the 1 x W strip (mean over H)
        self.strip_h = conv_norm_act(inter, inter, (3, 1), act=False)  # on the H x 1 strip (mean over W)
        self.fuse_short = conv_norm_act(inter, inter, (3, 3))
        self.fuse_long = conv_norm_act(inter, inter, (3, 3))
        self.project = conv_norm_act(2 * inter, channels, (1, 1), act=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_submodules(self)  # PyTorch defaults, as in SPNet (no zero-initialised layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        a, b = self.reduce_short(x), self.reduce_long(x)
        short = (
            self.local(a)
            + _upsample(self.pyramid1(F.adaptive_avg_pool2d(a, self.pool1)), size)
            + _upsample(self.pyramid2(F.adaptive_avg_pool2d(a, self.pool2)), size)
        )
        long = self.strip_w(b.mean(dim=2, keepdim=True)) + self.strip_h(b.mean(dim=3, keepdim=True))
        a = self.fuse_short(torch.relu(short))
        b = self.fuse_long(torch.relu(long))  # broadcasting (N,Ci,1,W) + (N,Ci,H,1) == upsampling both
        return torch.relu(x + self.project(torch.cat([a, b], dim=1)))

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}, pool1={self.pool1}, pool2={self.pool2}"
