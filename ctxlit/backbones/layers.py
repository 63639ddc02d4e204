"""What the backbones share: torchvision's conv helpers, the norm layers a config can choose,
and the initialisation that runs before any plugin goes in."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ctxlit.errors import ConfigError
from ctxlit.utils.checks import check_choice

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=False
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Wu & He 2018), fewer when ``channels`` is not divisible by 32."""
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


#: ``norm_layer`` by name: BatchNorm (torchvision's default), GroupNorm(32) and frozen BatchNorm
#: (torchvision.ops.FrozenBatchNorm2d: fixed statistics and affine, for small-batch fine-tuning).
NORM_LAYERS: dict[str, NormLayer] = {
    "batchnorm": nn.BatchNorm2d,
    "groupnorm": group_norm,
    "frozen_batchnorm": FrozenBatchNorm2d,
}


def norm_layer_from(value: str | NormLayer | None) -> NormLayer:
    """A ``channels -> norm module`` callable from a :data:`NORM_LAYERS` name, a callable
    (torchvision's ``norm_layer``) or None (BatchNorm)."""
    if value is None:
        return nn.BatchNorm2d
    if isinstance(value, str):
        check_choice("norm_layer", value, tuple(NORM_LAYERS))
        return NORM_LAYERS[value]
    if not callable(value):
        raise ConfigError(f"norm_layer must be one of {', '.join(map(repr, NORM_LAYERS))} or a callable; got {value!r}")
    return value


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He (fan-out) initialisation of every conv, biases zero, norm layers to the identity;
    with ``zero_init_residual`` the last norm of each residual branch (``last_bn()``) is zeroed
    (Goyal et al. 2017), so each residual block starts as the identity. Backbones call it before
    plugins go in: blocks own their initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if hasattr(m, "last_bn"):
                nn.init.zeros_(m.last_bn().weight)
