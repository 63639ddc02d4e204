"""Backbones by name, with context blocks placed by plugin specs.

>>> model = build_backbone("resnet50", num_classes=1000)            # torchvision-compatible
>>> feats = build_backbone("resnet50", output_stride=8)             # dilated feature extractor
>>> model = build_backbone("resnet50", num_classes=10, plugins=[
...     {"block": "gc", "options": {"ratio": 1 / 16}, "stages": [2, 3, 4], "position": "after_conv3"}])

With ``num_classes`` the model returns logits; without it, a list of feature maps
(``model.out_channels``, ``model.feature_strides``): ResNet/SKNet/LR-Net stage outputs at
strides 4, 8, 16, 32 (less with ``output_stride``), HRNet's four branches at 4, 8, 16, 32.
Plugin specs are documented in :mod:`ctxlit.backbones.plugins`; weights from local files
in :func:`load_weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ctxlit.errors import ConfigError

from . import hrnet, resnet
from .hrnet import HRNet
from .plugins import ALL_POSITIONS, Placement, PluginInfo, PluginSpec, apply_plugins, describe_plugins, study_plugins
from .resnet import BasicBlock, Bottleneck, ResNet
from .weights import LoadReport, load_weights

__all__ = [
    "ALL_POSITIONS",
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "HRNet",
    "LoadReport",
    "Placement",
    "PluginInfo",
    "PluginSpec",
    "ResNet",
    "apply_plugins",
    "backbone_options",
    "build_backbone",
    "describe_plugins",
    "list_backbones",
    "study_plugins",
    "load_weights",
]


def _named(fn: Callable[..., nn.Module], *args: Any, doc: str) -> Callable[..., nn.Module]:
    def builder(**kwargs: Any) -> nn.Module:
        return fn(*args, **kwargs)

    builder.__doc__ = doc
    return builder


#: backbone name -> builder(**options) -> model
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet10": _named(resnet.resnet, 10, doc="ResNet-10: BasicBlock [1,1,1,1]; small CPU network for the synthetic benchmark."),
    "resnet18": _named(resnet.resnet, 18, doc="ResNet-18 (torchvision-compatible)."),
    "resnet34": _named(resnet.resnet, 34, doc="ResNet-34 (torchvision-compatible)."),
    "resnet50": _named(resnet.resnet, 50, doc="ResNet-50 (torchvision-compatible, v1.5)."),
    "resnet101": _named(resnet.resnet, 101, doc="ResNet-101 (torchvision-compatible, v1.5)."),
    "resnet152": _named(resnet.resnet, 152, doc="ResNet-152 (torchvision-compatible, v1.5)."),
    "resnet18_112": _named(resnet.resnet18_112, doc="The seed food model: ResNet-18 with a deep 3-conv stem, 112 px input."),
    "sknet26": _named(resnet.sknet, 26, doc="SKNet-26: ResNeXt-26 32x4d with SK convolutions."),
    "sknet50": _named(resnet.sknet, 50, doc="SKNet-50 (Li et al. 2019): ResNeXt-50 32x4d with SK convolutions, 27.5M params."),
    "sknet101": _named(resnet.sknet, 101, doc="SKNet-101: ResNeXt-101 32x4d with SK convolutions, 48.9M params."),
    "lrnet26": _named(resnet.lrnet, 26, doc="LR-Net-26 (Hu et al. 2019): 7x7 local relation layers, m=8."),
    "lrnet50": _named(resnet.lrnet, 50, doc="LR-Net-50 (Hu et al. 2019): 7x7 local relation layers, m=8."),
    "hrnet_w18_small": _named(hrnet.hrnet, "w18_small", doc="HRNet-W18-small v1 (classifier 13.2M params)."),
    "hrnet_w18_small_v2": _named(hrnet.hrnet, "w18_small_v2", doc="HRNet-W18-small v2 (classifier 15.6M params)."),
    "hrnet_w18": _named(hrnet.hrnet, "w18", doc="HRNet-W18 (classifier HRNet-W18-C 21.3M; HRNetV2-W18 features)."),
    "hrnet_w32": _named(hrnet.hrnet, "w32", doc="HRNet-W32 (classifier 41.2M)."),
    "hrnet_w48": _named(hrnet.hrnet, "w48", doc="HRNet-W48 (classifier 77.5M)."),
}


def list_backbones() -> list[str]:
    """The registered backbone names."""
    return list(BACKBONES)


_RESNET_OPTIONS = (
    "width",
    "stem",
    "output_stride",
    "zero_init_residual",
    "groups",
    "width_per_group",
    "mid_channels",
    "in_channels",
    "norm_layer",
)
_EXTRA_OPTIONS = {"sknet": ("sk_options",), "lrnet": ("lr_options",)}


def backbone_options(name: str) -> list[str]:
    """The options ``build_backbone(name, ...)`` accepts besides ``num_classes`` and ``plugins``."""
    _check_name(name)
    if name.startswith("hrnet"):
        return list(hrnet.HRNET_OPTIONS)
    family = next((f for f in _EXTRA_OPTIONS if name.startswith(f)), None)
    return [*_RESNET_OPTIONS, *(_EXTRA_OPTIONS.get(family, ()))]


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; available backbones: {', '.join(BACKBONES)}")


def build_backbone(name: str, *, num_classes: int | None = None, plugins: Any = None, **options: Any) -> nn.Module:
    """Build backbone ``name``.

    Args:
        name: one of :func:`list_backbones`.
        num_classes: an int gives a classifier returning logits; ``None`` a feature extractor
            returning a list of feature maps (see ``out_channels`` / ``feature_strides``).
        plugins: a list of plugin specs (dicts or :class:`PluginSpec`), see
            :mod:`ctxlit.backbones.plugins`.
        options: backbone options (:func:`backbone_options` lists them; ResNet: ``width``,
            ``stem``, ``output_stride``, ``zero_init_residual``, ...). Unknown options and
            values outside what an option allows raise ``ValueError`` naming both.
    """
    _check_name(name)
    allowed = backbone_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"backbone {name!r} has no option(s) {', '.join(unknown)}; allowed options: {', '.join(allowed)}")
    return BACKBONES[name](num_classes=num_classes, plugins=plugins, **options)

