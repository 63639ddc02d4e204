"""ResNet (He et al. 2016, arXiv 1512.03385) with plugin slots, and the models built on it.

Parameter names and shapes equal torchvision's ``resnet18``..``resnet152`` (and
``resnext50_32x4d`` with ``groups=32, width_per_group=4``), so a torchvision state dict
loads strictly into the plain classifier. Like torchvision (ResNet v1.5) the stride of a
Bottleneck sits on its 3x3 conv.

Additions: a width multiplier, three stems, dilated variants (output stride 16/8), plugin
slots (see ``ctxlit.backbones.plugins``), feature-extractor mode. SKNet and LR-Net are
this ResNet with their spatial operator put in through a plugin spec (``replace_conv2``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ctxlit.errors import ConfigError
from ctxlit.utils.checks import check_choice, check_positive_int

from .layers import NormLayer, conv1x1, conv3x3, init_weights, norm_layer_from
from .plugins import PluggableMixin, PluginSpec, apply_plugins


class BasicBlock(PluggableMixin, nn.Module):
    """Two 3x3 convs. Plugin positions: after_conv1 (after ReLU), after_conv2 (after BN,
    before the add), after_add; spatial operators may replace conv1 or conv2."""

    expansion = 1
    positions = ("after_conv1", "after_conv2", "after_add")
    replaceable = {"replace_conv1": "conv1", "replace_conv2": "conv2"}
    last_conv_position = "after_conv2"

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        first_dilation: int | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if groups != 1:
            raise ConfigError("BasicBlock supports only groups=1 (use a Bottleneck ResNet for ResNeXt)")
        first_dilation = first_dilation or dilation
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=first_dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self._sig = {"conv1": (inplanes, planes, stride), "conv2": (planes, planes, 1)}
        self._init_plugins()

    def plugin_channels(self, position: str) -> int:
        return self._sig["conv2"][1]

    def conv_signature(self, attr: str) -> tuple[int, int, int]:
        return self._sig[attr]

    def last_bn(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self._plug("after_conv1", out)
        out = self.bn2(self.conv2(out))
        out = self._plug("after_conv2", out)
        out = self.relu(out + identity)
        return self._plug("after_add", out)


class Bottleneck(PluggableMixin, nn.Module):
    """1x1 -> 3x3 (stride, groups, dilation) -> 1x1 (x4). Plugin positions: after_conv1 and
    after_conv2 (after their ReLU), after_conv3 (after bn3, before the add), after_add;
    spatial operators replace conv2."""

    expansion = 4
    positions = ("after_conv1", "after_conv2", "after_conv3", "after_add")
    replaceable = {"replace_conv2": "conv2"}
    last_conv_position = "after_conv3"

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        first_dilation: int | None = None,
        mid_channels: int | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = mid_channels or int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, first_dilation or dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.width = width
        self._init_plugins()

    def plugin_channels(self, position: str) -> int:
        if position in ("after_conv1", "after_conv2"):
            return self.width
        return self.conv3.out_channels

    def conv_signature(self, attr: str) -> tuple[int, int, int]:
        return (self.width, self.width, self.stride)

    def last_bn(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self._plug("after_conv1", out)
        out = self.relu(self.bn2(self.conv2(out)))
        out = self._plug("after_conv2", out)
        out = self.bn3(self.conv3(out))
        out = self._plug("after_conv3", out)
        out = self.relu(out + identity)
        return self._plug("after_add", out)


STEMS = ("imagenet", "deep", "cifar", "lr")
OUTPUT_STRIDES = (32, 16, 8)
#: output stride -> whether layer2, layer3, layer4 trade their stride for dilation
_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


def _check_options(block, num_classes, width, stem, output_stride, zero_init_residual, groups, width_per_group,
                   mid_channels, in_channels, stem_operator, name) -> None:
    for option, value in (("width", width), ("groups", groups), ("width_per_group", width_per_group),
                          ("in_channels", in_channels)):
        check_positive_int(option, value, owner=name)
    if num_classes is not None:
        check_positive_int("num_classes", num_classes, owner=name)
    check_choice("stem", stem, STEMS, owner=name)
    check_choice("output_stride", output_stride, OUTPUT_STRIDES, owner=name)
    check_choice("zero_init_residual", zero_init_residual, (False, True), owner=name)
    if block is BasicBlock and groups != 1:
        raise ConfigError(f"option groups={groups} needs a Bottleneck ResNet; {name} uses BasicBlock")
    if mid_channels is not None and len(mid_channels) != 4:
        raise ConfigError(f"option mid_channels must list 4 stage widths, got {mid_channels!r}")
    if stem == "lr" and stem_operator is None:
        raise ConfigError("stem='lr' needs a local relation operator (use the lrnet* backbones)")


def make_stem(stem: str, in_channels: int, width: int, norm_layer: NormLayer) -> nn.Module:
    """``conv1`` of each stem (see :class:`ResNet`); its last norm is the ResNet's ``bn1``. The
    ``lr`` stem's local relation layer is appended after initialisation (it owns its init)."""
    if stem == "imagenet":
        return nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
    if stem == "cifar":
        return conv3x3(in_channels, width)
    if stem == "lr":
        return nn.Sequential(conv1x1(in_channels, width), norm_layer(width), nn.ReLU(inplace=True))
    half = max(width // 2, 1)  # deep: three 3x3 convs
    return nn.Sequential(
        conv3x3(in_channels, half, stride=2), norm_layer(half), nn.ReLU(inplace=True),
        conv3x3(half, half), norm_layer(half), nn.ReLU(inplace=True),
        conv3x3(half, width),
    )


def stage_strides(stem: str, output_stride: int) -> list[int]:
    """Output strides of layer1..layer4: the stem's (4, or 1 for cifar), then x2 per undilated stage."""
    strides = [1 if stem == "cifar" else 4]
    for dilated in _DILATE[output_stride]:
        strides.append(strides[-1] * (1 if dilated else 2))
    return strides


class ResNet(nn.Module):
    """ResNet classifier (``num_classes`` given) or feature extractor (``num_classes=None``).

    As a feature extractor ``forward`` returns the outputs of ``layer1``..``layer4`` (a list;
    ``out_channels`` and ``feature_strides`` describe them); as a classifier, logits.

    Options:
        width: channels of the first stage (stages use width x 1, 2, 4, 8; 64 = torchvision).
        stem: ``imagenet`` (7x7 s2 conv + 3x3 s2 max-pool, torchvision's names conv1/bn1),
            ``deep`` (3x3 s2 conv width/2, 3x3 conv width/2, 3x3 conv width, each BN + ReLU,
            then the max-pool; in ``conv1`` as a Sequential whose last BN is ``bn1``, the seed
            food model's stem), ``cifar`` (3x3 s1 conv, no pool: strides become 1/2/4/8), or
            ``lr`` (LR-Net: 1x1 conv to width, BN, ReLU, 7x7 local relation layer with stride 2
            (``stem_operator``), then BN, ReLU and the max-pool).
        output_stride: 32, 16 or 8; 16 and 8 replace the stride of layer4 (and layer3) by
            dilation 2 (and 4), as in DeepLab / torchvision's replace_stride_with_dilation.
        zero_init_residual: zero the last BN of each residual branch (Goyal et al. 2017).
        groups, width_per_group: ResNeXt (Bottleneck only), e.g. 32 and 4.
        mid_channels: per-stage Bottleneck inner widths (overrides width_per_group; LR-Net).
        in_channels: input image channels.
        norm_layer: every norm of the backbone (not of inserted blocks): ``batchnorm``
            (default), ``groupnorm`` (32 groups) or ``frozen_batchnorm`` (fixed statistics, for
            fine-tuning with small batches), or a ``channels -> module`` callable as in torchvision.
    """

    stage_note = "layer1..layer4 = c2..c5"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int | None = None,
        width: int = 64,
        stem: str = "imagenet",
        output_stride: int = 32,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        mid_channels: Sequence[int] | None = None,
        in_channels: int = 3,
        norm_layer: str | NormLayer | None = None,
        stem_operator: Callable[..., nn.Module] | PluginSpec | None = None,
        plugins: Any = None,
        name: str = "resnet",
    ) -> None:
        super().__init__()
        _check_options(block, num_classes, width, stem, output_stride, zero_init_residual, groups, width_per_group,
                       mid_channels, in_channels, stem_operator, name)
        self.name = name
        self.groups, self.base_width = groups, width_per_group
        self.norm_layer = norm_layer_from(norm_layer)
        self.inplanes, self.dilation = width, 1
        self.conv1 = make_stem(stem, in_channels, width, self.norm_layer)
        self.bn1 = self.norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem != "cifar" else nn.Identity()
        mids = list(mid_channels) if mid_channels is not None else [None] * 4
        for i, dilate in enumerate((False, *_DILATE[output_stride])):
            layer = self._make_layer(block, width * 2**i, layers[i], 1 if i == 0 else 2, dilate, mids[i])
            setattr(self, f"layer{i + 1}", layer)
        self.out_channels = [width * 2**i * block.expansion for i in range(4)]
        self.feature_strides = stage_strides(stem, output_stride)
        self.num_features = self.out_channels[-1]
        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self, zero_init_residual)
        if stem == "lr":
            operator = stem_operator if isinstance(stem_operator, PluginSpec) else PluginSpec(block=stem_operator)
            self.conv1.append(operator.factory(width, out_channels=width, stride=2))
        self.plugin_specs = apply_plugins(self, plugins, name)

    def _make_layer(
        self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False, mid: int | None = None
    ) -> nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), self.norm_layer(planes * block.expansion)
            )
        extra = {"mid_channels": mid} if mid is not None else {}
        common = dict(groups=self.groups, base_width=self.base_width, norm_layer=self.norm_layer, **extra)
        layers = [block(self.inplanes, planes, stride, downsample, dilation=self.dilation,
                        first_dilation=previous_dilation, **common)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation, **common) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def plugin_sites(self) -> dict[int, list[tuple[str, nn.Sequential]]]:
        return {i: [(f"layer{i}", getattr(self, f"layer{i}"))] for i in (1, 2, 3, 4)}

    def forward_features(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        feats = self.forward_features(x)
        if self.num_classes is None:
            return feats
        return self.fc(torch.flatten(self.avgpool(feats[-1]), 1))


# --------------------------------------------------------------------------- named models

_LAYERS = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    26: (Bottleneck, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def _merge_plugins(base: list[dict[str, Any]], plugins: Any) -> list[Any]:
    if plugins is None:
        return list(base)
    if isinstance(plugins, (PluginSpec, dict)):
        plugins = [plugins]
    return [*base, *plugins]


def resnet(depth: int, *, name: str | None = None, **kwargs: Any) -> ResNet:
    block, layers = _LAYERS[depth]
    return ResNet(block, layers, name=name or f"resnet{depth}", **kwargs)


def resnet18_112(**kwargs: Any) -> ResNet:
    """The seed food model's network: ResNet-18 with the deep 3-conv stem, for 112 px input."""
    kwargs.setdefault("stem", "deep")
    return resnet(18, name="resnet18_112", **kwargs)


def sknet(depth: int, *, plugins: Any = None, sk_options: dict[str, Any] | None = None, **kwargs: Any) -> ResNet:
    """SKNet (Li et al. 2019, arXiv 1903.06586): ResNeXt 32x4d with every 3x3 conv replaced by
    an SK convolution (M=2, G=32, r=16, L=32: the ``sk`` block's defaults)."""
    kwargs.setdefault("groups", 32)
    kwargs.setdefault("width_per_group", 4)
    sk = {"block": "sk", "options": dict(sk_options or {}), "stages": "all", "blocks": "all", "position": "replace_conv2"}
    return resnet(depth, name=f"sknet{depth}", plugins=_merge_plugins([sk], plugins), **kwargs)


# LR-Net-50 bottleneck inner widths from the paper's Table 1 (Hu et al. 2019, arXiv 1904.11491;
# reproduced in seed 003): 100, 200, 400, 800 instead of ResNet's 64, 128, 256, 512. With m=8
# channels per aggregation group the width must be a multiple of 8, so res2 uses 104 (the
# paper does not say how it splits 100 channels into groups of 8). LR-Net-50 then has 23.38M
# parameters (paper: 23.3M); LR-Net-26 uses the same widths with [2, 2, 2, 2] blocks.
LRNET_MID_CHANNELS = (104, 200, 400, 800)


def lrnet(depth: int, *, plugins: Any = None, lr_options: dict[str, Any] | None = None, **kwargs: Any) -> ResNet:
    """LR-Net (Hu et al. 2019): ResNet layout with the 3x3 convs and the stem's 7x7 conv
    replaced by 7x7 local relation layers (m=8); stem 1x1 conv 64 + 7x7 LR stride 2."""
    kwargs.setdefault("mid_channels", LRNET_MID_CHANNELS)
    kwargs.setdefault("stem", "lr")
    lr = {"block": "lr", "options": dict(lr_options or {}), "stages": "all", "blocks": "all", "position": "replace_conv2"}
    if kwargs["stem"] == "lr":
        kwargs.setdefault("stem_operator", PluginSpec(block="lr", options=dict(lr_options or {})))
    return resnet(depth, name=f"lrnet{depth}", plugins=_merge_plugins([lr], plugins), **kwargs)
