"""HRNet (Sun et al. 2019, arXiv 1902.09212; Wang et al. 2020, arXiv 1908.07919).

Four parallel branches at strides 4, 8, 16, 32 (widths C, 2C, 4C, 8C), repeatedly fused:
a stem of two 3x3 stride-2 convs; stage1 = Bottleneck blocks at stride 4; stages 2-4 add one
lower-resolution branch each (transition) and repeat "high-resolution modules" (BasicBlocks
per branch, then every branch receives the sum of all branches, resized: 1x1 conv + BN +
nearest upsampling from lower resolutions, chains of 3x3 stride-2 conv + BN from higher).

* Classifier (``num_classes`` given): HRNet-Wx-C head of the classification paper/official
  code: each branch -> one Bottleneck (to 128, 256, 512, 1024 channels), summed top-down
  through 3x3 stride-2 convs, 1x1 conv to 2048, global pool, linear.
* Feature extractor: the four branches (``features="branches"``, strides 4/8/16/32) or the
  HRNetV2 representation (``features="concat"``: all branches upsampled to stride 4 and
  concatenated, 15C channels), which segmentation heads consume.

Configurations follow the official ``HRNet-Image-Classification`` YAML files; module names
follow its ``cls_hrnet.py`` (``layer1``, ``transition1``, ``stage2.<m>.branches.<b>``,
``fuse_layers``, ``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier``).
Parameter counts of the classifiers (tests check them): W18-small-v1 13.2M, W18-small-v2
15.6M, W18 21.3M, W32 41.2M, W48 77.5M (HRNet classification model zoo).

Plugins: ``stages`` 1-4 (stage1 = ``layer1``); ``blocks`` index within each branch of each
module of a stage (see ``ctxlit.backbones.plugins``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlit.utils.checks import check_choice, check_positive_int
from ctxlit.utils.layers import conv_norm_act

from .plugins import apply_plugins
from .layers import init_weights
from .resnet import BasicBlock, Bottleneck

HRNET_OPTIONS = ("features", "in_channels", "zero_init_residual")
FEATURES = ("branches", "concat")

# stage -> (modules, blocks per branch, channels per branch); stage1 is a Bottleneck stack.
CONFIGS: dict[str, dict[str, Any]] = {
    "w18_small": {
        "stage1": (1, (1,), (32,)),
        "stage2": (1, (2, 2), (16, 32)),
        "stage3": (1, (2, 2, 2), (16, 32, 64)),
        "stage4": (1, (2, 2, 2, 2), (16, 32, 64, 128)),
    },
    "w18_small_v2": {
        "stage1": (1, (2,), (64,)),
        "stage2": (1, (2, 2), (18, 36)),
        "stage3": (3, (2, 2, 2), (18, 36, 72)),
        "stage4": (2, (2, 2, 2, 2), (18, 36, 72, 144)),
    },
}
for _w in (18, 32, 48):
    CONFIGS[f"w{_w}"] = {
        "stage1": (1, (4,), (64,)),
        "stage2": (1, (4, 4), (_w, 2 * _w)),
        "stage3": (4, (4, 4, 4), (_w, 2 * _w, 4 * _w)),
        "stage4": (3, (4, 4, 4, 4), (_w, 2 * _w, 4 * _w, 8 * _w)),
    }

HEAD_CHANNELS = (32, 64, 128, 256)


def _stack(block, inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel BasicBlock branches, then a full exchange (fusion) between them."""

    def __init__(self, blocks: tuple[int, ...], channels: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(_stack(BasicBlock, c, c, n) for n, c in zip(blocks, channels))
        n = len(channels)
        self.fuse_layers = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(conv_norm_act(channels[j], channels[i], 1, act=False))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = [
                        conv_norm_act(channels[j], channels[i] if k == i - j - 1 else channels[j], 3, 2, act=k != i - j - 1)
                        for k in range(i - j)
                    ]
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, fuse in enumerate(row):
                if j == i:
                    continue
                z = fuse(xs[j])
                if j > i:
                    z = F.interpolate(z, size=xs[i].shape[-2:], mode="nearest")
                y = y + z
            out.append(self.relu(y))
        return out


class HRNet(nn.Module):
    """HRNet classifier or feature extractor; see the module docstring."""

    stage_note = "stage1 (layer1) .. stage4"

    def __init__(
        self,
        config: dict[str, Any],
        *,
        num_classes: int | None = None,
        features: str = "branches",
        in_channels: int = 3,
        zero_init_residual: bool = False,
        plugins: Any = None,
        name: str = "hrnet",
    ) -> None:
        super().__init__()
        check_choice("features", features, FEATURES, owner=name)
        check_positive_int("in_channels", in_channels, owner=name)
        check_choice("zero_init_residual", zero_init_residual, (False, True), owner=name)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes, owner=name)
        self.name = name
        self.num_classes = num_classes
        self.features = features
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        _, (n1,), (c1,) = config["stage1"]
        self.layer1 = _stack(Bottleneck, 64, c1, n1)
        prev = [c1 * Bottleneck.expansion]
        for s in (2, 3, 4):
            modules, blocks, channels = config[f"stage{s}"]
            setattr(self, f"transition{s - 1}", self._transition(prev, list(channels)))
            setattr(self, f"stage{s}", nn.Sequential(*(HighResolutionModule(blocks, channels) for _ in range(modules))))
            prev = list(channels)
        self.branch_channels = prev

        if num_classes is not None:
            self._add_classification_head(prev, num_classes)
        elif features == "concat":
            self.out_channels = [sum(prev)]
            self.feature_strides = [4]
        else:
            self.out_channels = list(prev)
            self.feature_strides = [4, 8, 16, 32]

        init_weights(self, zero_init_residual)
        self.plugin_specs = apply_plugins(self, plugins, name)

    def _add_classification_head(self, branch_channels: list[int], num_classes: int) -> None:
        """HRNet-W*-C's head: each branch widened by a Bottleneck (to 128/256/512/1024), summed
        from high to low resolution through stride-2 convs, then 1x1 to 2048 and the classifier."""
        self.incre_modules = nn.ModuleList(_stack(Bottleneck, c, h, 1) for c, h in zip(branch_channels, HEAD_CHANNELS))
        head = [h * Bottleneck.expansion for h in HEAD_CHANNELS]
        self.downsamp_modules = nn.ModuleList(
            conv_norm_act(head[i], head[i + 1], 3, 2, bias=True) for i in range(len(head) - 1)
        )
        self.final_layer = conv_norm_act(head[-1], 2048, 1, bias=True)
        self.classifier = nn.Linear(2048, num_classes)
        self.num_features = 2048
        self.out_channels = [2048]
        self.feature_strides = [32]

    @staticmethod
    def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
        layers = nn.ModuleList()
        for i, c in enumerate(cur):
            if i < len(prev):
                layers.append(conv_norm_act(prev[i], c, 3) if prev[i] != c else nn.Identity())
            else:
                steps = []
                for k in range(i + 1 - len(prev)):
                    cin = prev[-1]
                    cout = c if k == i - len(prev) else cin
                    steps.append(conv_norm_act(cin, cout, 3, 2))
                layers.append(nn.Sequential(*steps))
        return layers

    def plugin_sites(self) -> dict[int, list[tuple[str, nn.Sequential]]]:
        sites = {1: [("layer1", self.layer1)]}
        for s in (2, 3, 4):
            stage = getattr(self, f"stage{s}")
            sites[s] = [
                (f"stage{s}.{m}.branches.{b}", branch)
                for m, module in enumerate(stage)
                for b, branch in enumerate(module.branches)
            ]
        return sites

    def forward_branches(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            # new branches come from the lowest-resolution branch of the previous stage
            xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{s}")(xs)
        return xs

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        xs = self.forward_branches(x)
        if self.num_classes is None:
            if self.features == "concat":
                size = xs[0].shape[-2:]
                return [torch.cat([xs[0], *(F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in xs[1:])], 1)]
            return xs
        y = self.incre_modules[0](xs[0])
        for i, down in enumerate(self.downsamp_modules):
            y = self.incre_modules[i + 1](xs[i + 1]) + down(y)
        y = self.final_layer(y)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def hrnet(variant: str, *, name: str | None = None, **kwargs: Any) -> HRNet:
    return HRNet(CONFIGS[variant], name=name or f"hrnet_{variant}", **kwargs)
