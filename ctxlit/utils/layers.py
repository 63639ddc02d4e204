"""The conv -> norm -> ReLU brick that blocks, backbones and heads share."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

NormLayer = Callable[[int], nn.Module]


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int = 1,
    *,
    bias: bool = False,
    norm_layer: NormLayer = nn.BatchNorm2d,
    act: bool = True,
) -> nn.Sequential:
    """``Conv2d`` (padding ``k // 2``: the same size at stride 1) -> ``norm_layer`` -> ``ReLU``
    (left out with ``act=False``), as one ``nn.Sequential``: state-dict keys ``0.weight`` for the
    conv and ``1.*`` for the norm, as in mmcv's and the papers' code."""
    k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    layers = [
        nn.Conv2d(in_channels, out_channels, k, stride=stride, padding=(k[0] // 2, k[1] // 2), bias=bias),
        norm_layer(out_channels),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
