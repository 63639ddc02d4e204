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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Optional, Union

from torch import nn

from ctxlit import blocks as block_library
from ctxlit.errors import ConfigError

ADDON_POSITIONS = ("after_conv1", "after_conv2", "after_conv3", "after_last_conv", "after_add")
REPLACE_POSITIONS = ("replace_conv1", "replace_conv2")
ALL_POSITIONS = ADDON_POSITIONS + REPLACE_POSITIONS
#: A plugin position; ``None`` (YAML ``null``) means the block's own default, see above.
Position = Literal.__getitem__(ALL_POSITIONS)


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
                f"plugin block {self.label} is a callable, so 'options' must be empty "
                f"(got {dict(self.options)}); bind them in the callable, e.g. functools.partial"
            )
        if self.position is not None and self.position not in ALL_POSITIONS:
            raise ConfigError(
                f"unknown plugin position {self.position!r}; allowed: {', '.join(ALL_POSITIONS)}"
            )

    @functools.cached_property
    def factory(self) -> Callable[..., nn.Module]:
        """What builds the block: ``channels -> module`` for add-on blocks,
        ``(in_channels, out_channels=, stride=) -> module`` for spatial operators. A registry
        name and its options are checked here, once, by the block factory."""
        if isinstance(self.block, str):
            return block_library.block_factory(self.block, **self.options)
        return self.block

    @property
    def label(self) -> str:
        """The registry name, or the name of the class the callable builds."""
        if isinstance(self.block, str):
            return self.block
        target = _built_class(self.block)
        return getattr(target, "__name__", type(target).__name__)

    @property
    def shown_options(self) -> dict[str, Any]:
        """The options as given: a registry spec's ``options``, a partial's keywords."""
        if isinstance(self.block, functools.partial):
            return dict(self.block.keywords)
        return dict(self.options)

    def resolved_position(self) -> str:
        """``position``, or the block's default (``replace_conv2`` for spatial operators,
        ``after_last_conv`` for add-on blocks); refuses a position the block's kind cannot take.
        The kind is the block class's declared ``spatial_operator``; a block that does not
        declare it needs an explicit position."""
        spatial = block_library.is_spatial_operator(_built_class(self.factory))
        position = self.position
        if position is None:
            if spatial is None:
                raise ConfigError(
                    f"block {self.label!r} does not declare spatial_operator = True/False, so it has no "
                    f"default position; give one of {', '.join(ALL_POSITIONS)}"
                )
            return "replace_conv2" if spatial else "after_last_conv"
        if position in REPLACE_POSITIONS and spatial is False:
            raise ConfigError(
                f"block {self.label!r} is an add-on block, it cannot {position}; "
                f"use one of {', '.join(ADDON_POSITIONS)}"
            )
        if position in ADDON_POSITIONS and spatial is True:
            raise ConfigError(
                f"block {self.label!r} is a spatial operator (it replaces a 3x3 conv); "
                f"use position {' or '.join(REPLACE_POSITIONS)}, not {position!r}"
            )
        return position


def _built_class(block: Callable[..., nn.Module]) -> Any:
    """The class (or function) a block callable builds: ``functools.partial`` unwrapped."""
    while isinstance(block, functools.partial):
        block = block.func
    return block


@dataclass
class Placement:
    """Where the block under study goes: a task's ``placement`` option (see the module
    docstring for the meanings). ``stages`` are numbered like torchvision's layer1..layer4
    (c2..c5); ``blocks`` is ``"all"``, ``"last"``, ``"first"`` or a list of indices within each
    stage; ``position`` ``None`` is the block's default."""

    stages: Union[list[int], Literal["all"]] = field(default_factory=lambda: [2, 3, 4])
    blocks: Union[Literal["all", "last", "first"], list[int]] = "all"
    position: Optional[Position] = None


def study_plugins(
    block: str | Callable[..., nn.Module] | None, placement: Placement, extra: Sequence[Any] | None = None
) -> list[PluginSpec]:
    """The plugin specs of a task's ``block`` + ``placement`` (none for ``"none"``/``None``),
    followed by its ``extra_plugins``: the one place a study's knobs become plugin specs."""
    specs = []
    if block not in (None, "none"):
        specs.append(PluginSpec(block=block, stages=placement.stages, blocks=placement.blocks,
                                position=placement.position))
    return [*specs, *(PluginSpec.coerce(e) for e in extra or ())]


# --------------------------------------------------------------------------- pluggable blocks


class PluggableMixin:
    """Residual blocks with plugin slots.

    Subclasses set ``positions`` (the add-on positions they support, in forward order),
    ``replaceable`` (replace position -> conv attribute name) and implement
    ``plugin_channels(position)`` and ``conv_signature(attr) -> (in, out, stride)``. What went
    in is recorded in ``inserted``: one :class:`PluginInfo` each, its path relative to the block.
    """

    positions: tuple[str, ...] = ()
    replaceable: dict[str, str] = {}
    last_conv_position: str = ""

    def _init_plugins(self) -> None:
        self.plugins = nn.ModuleDict()
        self.inserted: list[PluginInfo] = []

    def _plug(self, position: str, x):
        if position in self.plugins:
            return self.plugins[position](x)
        return x

    def allowed_positions(self) -> list[str]:
        return [*self.positions, "after_last_conv", *self.replaceable]

    def insert_plugin(self, spec: PluginSpec, position: str) -> None:
        concrete = self.last_conv_position if position == "after_last_conv" else position
        if concrete in self.replaceable:
            attr = self.replaceable[concrete]
            self._check_replaceable(attr, spec)
            in_ch, out_ch, stride = self.conv_signature(attr)
            # keywords: a partial may bind out_channels/stride to defaults; these win
            module = spec.factory(in_ch, out_channels=out_ch, stride=stride)
            setattr(self, attr, module)
            path, channels = attr, out_ch
        elif concrete in self.positions:
            channels = self.plugin_channels(concrete)
            module = spec.factory(channels)
            if concrete not in self.plugins:
                self.plugins[concrete] = nn.Sequential()
            self.plugins[concrete].append(module)
            path = f"plugins.{concrete}.{len(self.plugins[concrete]) - 1}"
        else:
            raise ConfigError(
                f"position {position!r} is not in {type(self).__name__}; "
                f"allowed: {', '.join(self.allowed_positions())}"
            )
        self.inserted.append(PluginInfo(
            path=path, position=concrete, block=spec.label, module_class=type(module).__name__,
            options=spec.shown_options, channels=channels, params=sum(p.numel() for p in module.parameters()),
        ))

    def _check_replaceable(self, attr: str, spec: PluginSpec) -> None:
        kind = type(self).__name__
        if any(info.path == attr for info in self.inserted):
            raise ConfigError(f"{attr} of this {kind} is already replaced by another plugin; a conv can be replaced only once")
        dilation = getattr(getattr(self, attr), "dilation", (1, 1))
        if tuple(dilation) != (1, 1):
            # SK and LR bring their own receptive field (dilations 1/2, a 7x7 window) and take
            # no network dilation; replacing silently would shrink a dilated network's view.
            raise ConfigError(
                f"{attr} of this {kind} is dilated (dilation={tuple(dilation)}, from output_stride < 32); "
                f"{spec.label} cannot replace it: use output_stride=32 or an add-on block"
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


def as_specs(plugins: Any) -> list[PluginSpec]:
    """``plugins`` (None, one spec or a list; dicts or :class:`PluginSpec`) as a list of specs."""
    if plugins is None:
        return []
    if isinstance(plugins, (PluginSpec, Mapping)):
        plugins = [plugins]
    if isinstance(plugins, str) or not isinstance(plugins, Sequence):
        raise ConfigError(f"'plugins' must be a list of plugin specs, got {plugins!r}")
    return [PluginSpec.coerce(p) for p in plugins]


def apply_plugins(model: nn.Module, plugins: Any, model_name: str) -> list[PluginSpec]:
    """Insert every plugin of ``plugins`` into ``model`` (which provides ``plugin_sites()``).

    ``model.plugin_sites()`` returns ``{stage number: [(path, [block, ...]), ...]}``: each
    stage holds one or more sequences of pluggable residual blocks (one for a ResNet stage,
    one per branch and module for HRNet). Returns the normalised specs.
    """
    specs = as_specs(plugins)
    sites = model.plugin_sites()
    note = getattr(model, "stage_note", "")
    for spec in specs:
        position = spec.resolved_position()
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
    """One inserted (or replacing) module: what its residual block records and
    :func:`describe_plugins` reports (there with the path from the model's root)."""

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
        if isinstance(module, PluggableMixin):
            prefix = f"{name}." if name else ""
            out += [replace(info, path=prefix + info.path) for info in module.inserted]
    return out
