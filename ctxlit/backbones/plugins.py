"""Plugin specs: put context blocks into a backbone's residual blocks without editing code.

A plugin spec says *which* block, *where* (stages, blocks within a stage) and at *which
position* inside each residual block::

    {"block": "gc", "options": {"ratio": 0.0625}, "stages": [2, 3, 4], "blocks": "all",
     "position": "after_conv3"}

Keys (anything else is an error):

``block``
    A registry name from ``ctxlit.blocks`` (``se``, ``gc``, ``nl``, ``sk``, ...) with its
    keyword ``options``, or a callable that builds the module: ``channels -> nn.Module`` for
    add-on blocks, ``(in_channels, out_channels, stride=...) -> nn.Module`` for spatial
    operators (for instance ``functools.partial(GlobalContext, ratio=0.25)``). With a
    callable, ``options`` must be empty (put them in the partial).
``stages``
    ``"all"``, one stage number or a list. ResNet stages are numbered like torchvision's
    ``layer1``..``layer4`` (= c2..c5, output strides 4, 8, 16, 32), so GCNet's "c3-c5" is
    ``[2, 3, 4]`` and "res4" (the seed's GloRe placement) is ``3``. HRNet stages are its
    ``stage1``..``stage4`` (stage1 = the Bottleneck ``layer1``).
``blocks``
    ``"all"`` (default), ``"last"``, ``"first"``, or a list of indices within the stage
    (negative indices count from the end). For HRNet the index is within each branch of each
    module of the stage (``"last"`` = the last block of every branch).
``position``
    Inside the residual branch (before the identity is added):

    ======================  ===================================================================
    ``after_conv1``         after conv1 -> BN -> ReLU
    ``after_conv2``         Bottleneck: after conv2 (3x3) -> BN -> ReLU.
                            BasicBlock: after conv2 -> BN, i.e. its last conv, before the add.
    ``after_conv3``         Bottleneck only: after conv3 -> BN, before the add (GCNet, SE).
    ``after_last_conv``     alias: ``after_conv3`` in a Bottleneck, ``after_conv2`` in a
                            BasicBlock, so one spec fits both block types.
    ``after_add``           after the add and the final ReLU: an extra unit between residual
                            blocks (GloRe, Non-local style).
    ``replace_conv2``       spatial operators (``sk``, ``lr``) only: replace the 3x3 conv
                            (Bottleneck conv2; BasicBlock conv2). The BN and ReLU after it stay.
    ``replace_conv1``       BasicBlock only: replace its first 3x3 conv (which carries the
                            stride).
    ======================  ===================================================================

    Default: ``after_last_conv`` for add-on blocks, ``replace_conv2`` for spatial operators.

Several plugins at one position run in sequence, in the order of the spec list (each reads
the previous one's output; mmcv, by contrast, feeds all of them the same input so only the
last one counts). Inserted modules live in ``<block>.plugins.<position>.<i>`` (an
``nn.ModuleDict`` of ``nn.Sequential``), so a plain torchvision checkpoint still loads with
only the plugin keys missing; a replaced conv keeps its name (``layer2.0.conv2``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from ctxlit import blocks as block_library
from ctxlit.errors import ConfigError

ADDON_POSITIONS = ("after_conv1", "after_conv2", "after_conv3", "after_last_conv", "after_add")
REPLACE_POSITIONS = ("replace_conv1", "replace_conv2")
ALL_POSITIONS = ADDON_POSITIONS + REPLACE_POSITIONS


@dataclass(frozen=True)
class PluginSpec:
    """Where to put one kind of block. See the module docstring for the meaning of each field."""

    block: str | Callable[..., nn.Module]
    options: Mapping[str, Any] = field(default_factory=dict)
    stages: str | int | Sequence[int] = "all"
    blocks: str | int | Sequence[int] = "all"
    position: str | None = None

    @classmethod
    def coerce(cls, value: PluginSpec | Mapping[str, Any]) -> PluginSpec:
        """A ``PluginSpec`` from a spec or a plain dict (as it comes from YAML/JSON)."""
        if isinstance(value, PluginSpec):
            spec = value
        elif isinstance(value, Mapping):
            allowed = [f.name for f in fields(cls)]
            unknown = sorted(set(value) - set(allowed))
            if unknown:
                raise ConfigError(
                    f"plugin spec has unknown key(s) {unknown}; allowed keys: {allowed}"
                )
            if "block" not in value:
                raise ConfigError(f"plugin spec {dict(value)} has no 'block'")
            spec = cls(**{k: value[k] for k in allowed if k in value})
        else:
            raise ConfigError(
                f"a plugin spec must be a dict or PluginSpec, got {type(value).__name__}: {value!r}"
            )
        spec._check_types()
        return spec

    def _check_types(self) -> None:
        if not (isinstance(self.block, str) or callable(self.block)):
            raise ConfigError(f"plugin 'block' must be a registry name or a callable, got {self.block!r}")
        if self.options is None or not isinstance(self.options, Mapping):
            raise ConfigError(f"plugin 'options' must be a dict, got {self.options!r}")
        if not isinstance(self.block, str) and self.options:
            raise ConfigError(
                f"plugin block {block_label(self.block)} is a callable, so 'options' must be empty "
                f"(got {dict(self.options)}); bind them in the callable, e.g. functools.partial"
            )
        if self.position is not None and self.position not in ALL_POSITIONS:
            raise ConfigError(
                f"unknown plugin position {self.position!r}; allowed: {', '.join(ALL_POSITIONS)}"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "block": block_label(self.block),
            "options": block_options(self.block, self.options),
            "stages": self.stages,
            "blocks": self.blocks,
            "position": self.position,
        }


def block_target(block: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The class (or function) a block callable builds. Unwraps ``functools.partial``,
    including the CLI's ``partial(call_without_instantiate_context, instantiator, cls, ...)``
    (jsonargparse), whose ``func`` is a wrapper and whose class is a positional argument."""
    while isinstance(block, functools.partial):
        classes = [arg for arg in block.args if inspect.isclass(arg)]
        block = classes[0] if classes and not inspect.isclass(block.func) else block.func
    return block


def block_label(block: str | Callable[..., nn.Module]) -> str:
    if isinstance(block, str):
        return block
    target = block_target(block)
    return getattr(target, "__name__", type(target).__name__)


def block_options(block: str | Callable[..., nn.Module], options: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(block, functools.partial):
        return dict(block.keywords)
    return dict(options)


# --------------------------------------------------------------------------- block kinds


def _is_spatial(block: str | Callable[..., nn.Module]) -> bool | None:
    """True for spatial operators, False for add-on blocks, None when it cannot be told
    (a plain function: then the position decides)."""
    if isinstance(block, str):
        return bool(block_library.is_spatial_operator(block))
    target = block_target(block)
    flag = getattr(target, "spatial_operator", None)
    if isinstance(flag, bool):
        return flag
    if inspect.isclass(target):
        params = list(inspect.signature(target.__init__).parameters)[1:]
        return bool(params) and params[0] == "in_channels"
    return None


def _check_block_name(name: str) -> None:
    registry = block_library.BLOCKS
    if name not in registry:
        raise ConfigError(f"unknown plugin block {name!r}; registered blocks: {', '.join(sorted(registry))}")


def build_addon(spec: PluginSpec, channels: int) -> nn.Module:
    if isinstance(spec.block, str):
        return block_library.build_block(spec.block, channels, **dict(spec.options))
    return spec.block(channels)


def build_operator(spec: PluginSpec, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if isinstance(spec.block, str):
        return block_library.build_block(
            spec.block, in_channels, out_channels=out_channels, stride=stride, **dict(spec.options)
        )
    # keywords: a CLI partial already binds out_channels/stride to defaults, call keywords win
    return spec.block(in_channels, out_channels=out_channels, stride=stride)


# --------------------------------------------------------------------------- pluggable blocks


class PluggableMixin:
    """Residual blocks with plugin slots.

    Subclasses set ``positions`` (the add-on positions they support, in forward order),
    ``replaceable`` (replace position -> conv attribute name) and implement
    ``plugin_channels(position)`` and ``conv_signature(attr) -> (in, out, stride)``.
    """

    positions: tuple[str, ...] = ()
    replaceable: dict[str, str] = {}
    last_conv_position: str = ""

    def _init_plugins(self) -> None:
        self.plugins = nn.ModuleDict()
        self.plugin_info: list[dict[str, Any]] = []

    def _plug(self, position: str, x):
        if position in self.plugins:
            return self.plugins[position](x)
        return x

    def resolve_position(self, position: str) -> str:
        if position == "after_last_conv":
            return self.last_conv_position
        return position

    def allowed_positions(self) -> list[str]:
        return [*self.positions, "after_last_conv", *self.replaceable]

    def insert_plugin(self, spec: PluginSpec, position: str) -> None:
        concrete = self.resolve_position(position)
        kind = type(self).__name__
        if concrete in self.replaceable:
            attr = self.replaceable[concrete]
            if any(info["position"] == concrete for info in self.plugin_info):
                raise ConfigError(
                    f"{attr} of this {kind} is already replaced by another plugin; "
                    f"a conv can be replaced only once"
                )
            dilation = getattr(getattr(self, attr), "dilation", (1, 1))
            if tuple(dilation) != (1, 1):
                # SK and LR bring their own receptive field (dilations 1/2, a 7x7 window) and take
                # no network dilation; replacing silently would shrink a dilated network's view.
                raise ConfigError(
                    f"{attr} of this {kind} is dilated (dilation={tuple(dilation)}, from output_stride < 32); "
                    f"{block_label(spec.block)} cannot replace it: use output_stride=32 or an add-on block"
                )
            in_ch, out_ch, stride = self.conv_signature(attr)
            setattr(self, attr, build_operator(spec, in_ch, out_ch, stride))
            channels = out_ch
        elif concrete in self.positions:
            channels = self.plugin_channels(concrete)
            if concrete not in self.plugins:
                self.plugins[concrete] = nn.Sequential()
            self.plugins[concrete].append(build_addon(spec, channels))
        else:
            raise ConfigError(
                f"position {position!r} is not in {kind}; allowed: {', '.join(self.allowed_positions())}"
            )
        self.plugin_info.append(
            {
                "position": concrete,
                "index": len(self.plugins[concrete]) - 1 if concrete in self.plugins else None,
                "attr": self.replaceable.get(concrete),
                "block": block_label(spec.block),
                "options": block_options(spec.block, spec.options),
                "channels": channels,
            }
        )


# --------------------------------------------------------------------------- placement


def _int_list(value: Any, key: str, words: Mapping[str, Any]) -> Any:
    """``words[value]`` for a keyword, else ``value`` as a non-empty list of ints."""
    if isinstance(value, str) and value in words:
        return words[value]
    what = " or ".join([*(repr(w) for w in words), "a number or a list of numbers"])
    if isinstance(value, (str, bool)):
        raise ConfigError(f"plugin {key!r} must be {what}, got {value!r}")
    chosen = [value] if isinstance(value, int) else list(value)
    if not chosen:
        raise ConfigError(f"plugin {key!r} is empty")
    for v in chosen:
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"plugin {key!r} must be {what}, got {value!r}")
    return chosen


def _select_stages(stages: Any, available: Sequence[int], model_name: str, note: str) -> list[int]:
    chosen = _int_list(stages, "stages", {"all": list(available)})
    for s in chosen:
        if s not in available:
            raise ConfigError(
                f"stage {s!r} does not exist in {model_name}; stages: "
                f"{', '.join(map(str, available))} ({note})"
            )
    return sorted(set(chosen))


def _select_blocks(blocks: Any, n: int, where: str) -> list[int]:
    chosen = _int_list(blocks, "blocks", {"all": list(range(n)), "last": [n - 1], "first": [0]})
    for i in chosen:
        if not -n <= i < n:
            raise ConfigError(
                f"block index {i} is out of range for {where}, which has {n} blocks "
                f"(valid: {-n}..{n - 1})"
            )
    return sorted({i % n for i in chosen})


def apply_plugins(model: nn.Module, plugins: Any, model_name: str) -> list[PluginSpec]:
    """Insert every plugin of ``plugins`` into ``model`` (which provides ``plugin_sites()``).

    ``model.plugin_sites()`` returns ``{stage number: [(path, [block, ...]), ...]}``: each
    stage holds one or more sequences of pluggable residual blocks (one for a ResNet stage,
    one per branch and module for HRNet). Returns the normalised specs.
    """
    if plugins is None:
        return []
    if isinstance(plugins, (PluginSpec, Mapping)):
        plugins = [plugins]
    if isinstance(plugins, str) or not isinstance(plugins, Sequence):
        raise ConfigError(f"'plugins' must be a list of plugin specs, got {plugins!r}")
    specs = [PluginSpec.coerce(p) for p in plugins]
    sites = model.plugin_sites()
    note = getattr(model, "stage_note", "")
    for spec in specs:
        spatial = None
        if isinstance(spec.block, str):
            _check_block_name(spec.block)
        spatial = _is_spatial(spec.block)
        position = spec.position
        if position is None:
            position = "replace_conv2" if spatial else "after_last_conv"
        if position in REPLACE_POSITIONS and spatial is False:
            raise ConfigError(
                f"block {block_label(spec.block)!r} is an add-on block, it cannot {position}; "
                f"use one of {', '.join(ADDON_POSITIONS)}"
            )
        if position in ADDON_POSITIONS and spatial is True:
            raise ConfigError(
                f"block {block_label(spec.block)!r} is a spatial operator (it replaces a 3x3 conv); "
                f"use position {' or '.join(REPLACE_POSITIONS)}, not {position!r}"
            )
        for stage in _select_stages(spec.stages, list(sites), model_name, note):
            for path, seq in sites[stage]:
                for i in _select_blocks(spec.blocks, len(seq), f"stage {stage} ({path})"):
                    try:
                        seq[i].insert_plugin(spec, position)
                    except ConfigError as err:
                        raise ConfigError(f"{path}.{i}: {err}") from None
    return specs


# --------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class PluginInfo:
    """One inserted (or replacing) module, as ``describe_plugins`` reports it."""

    path: str
    position: str
    block: str
    module_class: str
    options: dict[str, Any]
    channels: int
    params: int

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "defaults"
        return (
            f"{self.path}  [{self.position}]  {self.module_class} ({self.block}; {opts}), "
            f"{self.channels} ch, {self.params:,} params"
        )


def describe_plugins(model: nn.Module) -> list[PluginInfo]:
    """Every plugin in ``model`` (any module containing ctxlit backbones), in module order."""
    out: list[PluginInfo] = []
    for name, module in model.named_modules():
        infos = getattr(module, "plugin_info", None)
        if not isinstance(module, PluggableMixin) or not infos:
            continue
        prefix = f"{name}." if name else ""
        for info in infos:
            if info["attr"] is not None:
                path = f"{prefix}{info['attr']}"
                inserted = getattr(module, info["attr"])
            else:
                path = f"{prefix}plugins.{info['position']}.{info['index']}"
                inserted = module.plugins[info["position"]][info["index"]]
            out.append(
                PluginInfo(
                    path=path,
                    position=info["position"],
                    block=info["block"],
                    module_class=type(inserted).__name__,
                    options=dict(info["options"]),
                    channels=info["channels"],
                    params=sum(p.numel() for p in inserted.parameters()),
                )
            )
    return out
