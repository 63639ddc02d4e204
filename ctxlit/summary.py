"""Parameters, FLOPs and plugin placement of a backbone or an experiment config.

Usage::

    python -m ctxlit.summary resnet50
    python -m ctxlit.summary resnet50 --plugin '{"block": "gc", "options": {"ratio": 0.0625}, "stages": [2, 3, 4]}'
    python -m ctxlit.summary resnet18_112 --input-size 112 --num-classes 10
    python -m ctxlit.summary hrnet_w18 --num-classes 0            # feature extractor
    python -m ctxlit.summary resnet50 --option output_stride=8 --input-size 512x1024
    python -m ctxlit.summary experiments/food/resnet18_112.yaml

A YAML path is read as a LightningCLI config of ``ctxlit.tasks``: ``model.init_args``
``backbone``, ``backbone_options``, ``block`` (registry name, ``none`` or
``class_path``/``init_args``), ``placement`` and ``extra_plugins``; the input size defaults
to ``data.init_args.image_size`` when present.

The same numbers are available to code: :func:`summarize` (text) and :func:`summary_dict`
(plain values for a logger).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from torch import nn

from ctxlit.backbones import Placement, PluginSpec, build_backbone, describe_plugins, list_backbones, study_plugins
from ctxlit.errors import ConfigError, CtxlitError
from ctxlit.utils.complexity import NOTE_NOT_COUNTED, measure_complexity


def summary_dict(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """Parameters, FLOPs and plugins of ``model`` as plain values (for ``logger.log_hyperparams``)."""
    c = measure_complexity(model, tuple(input_shape))
    plugins = describe_plugins(model)
    return {
        **c.as_dict(),
        "input_shape": list(c.input_shape),
        "plugin_params": sum(p.params for p in plugins),
        "plugins": [dataclasses.asdict(p) for p in plugins],
    }


def summarize(model: nn.Module, input_shape: Sequence[int], title: str | None = None) -> str:
    """A readable report: parameters, FLOPs at ``input_shape`` (N, C, H, W), every plugin."""
    d = summary_dict(model, input_shape)
    shape = "x".join(map(str, d["input_shape"]))
    lines = []
    if title:
        lines.append(title)
    lines += [
        f"parameters: {d['params']:,} ({d['params'] / 1e6:.2f}M; trainable {d['trainable_params']:,})",
        f"FLOPs at {shape}: {d['flops']:,} ({d['gflops']:.2f} GFLOPs = {d['gmacs']:.2f} GMACs)",
        f"note: {NOTE_NOT_COUNTED}",
    ]
    plugins = d["plugins"]
    if plugins:
        lines.append(f"plugins: {len(plugins)} modules, {d['plugin_params']:,} parameters")
        for p in plugins:
            opts = ", ".join(f"{k}={v!r}" for k, v in p["options"].items()) or "defaults"
            lines.append(
                f"  {p['path']:<36} {p['position']:<14} {p['module_class']} ({p['block']}; {opts}) "
                f"{p['channels']} ch, {p['params']:,} params"
            )
    else:
        lines.append("plugins: none")
    return "\n".join(lines)


# --------------------------------------------------------------------------- config files


def _block_from_config(block: Any) -> Any:
    """A registry name, None, or a callable built from ``class_path`` + ``init_args``."""
    if block is None or isinstance(block, str):
        if isinstance(block, str) and "." in block:
            return _import(block)
        return block
    if isinstance(block, dict) and "class_path" in block:
        cls = _import(block["class_path"])
        return functools.partial(cls, **(block.get("init_args") or {}))
    raise ConfigError(f"model.init_args.block: expected a name, 'none' or class_path/init_args, got {block!r}")


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import {path!r}: {err}") from err


def plugins_from_task_args(init_args: dict[str, Any]) -> list[PluginSpec]:
    """The plugin specs a ``ctxlit.tasks`` model config describes (block + placement + extras),
    made by the tasks' own :func:`ctxlit.backbones.study_plugins`."""
    placement = dict(init_args.get("placement") or {})
    allowed = [f.name for f in dataclasses.fields(Placement)]
    unknown = sorted(set(placement) - set(allowed))
    if unknown:
        raise ConfigError(f"model.init_args.placement has unknown key(s) {unknown}; allowed keys: {allowed}")
    extra = [{**e, "block": _block_from_config(e.get("block"))} for e in init_args.get("extra_plugins") or []]
    return study_plugins(_block_from_config(init_args.get("block", "none")), Placement(**placement), extra)


def load_experiment(path: str) -> tuple[str, dict[str, Any], list[dict[str, Any]], int | None]:
    """(backbone, backbone_options, plugins, image_size or None) from an experiment YAML."""
    if not os.path.isfile(path):
        raise ConfigError(f"experiment config not found: {path}")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    return experiment_from_config(cfg, path)


def experiment_from_config(cfg: dict[str, Any], source: str) -> tuple[str, dict[str, Any], list[PluginSpec], Any]:
    """:func:`load_experiment` for a config already read (``source`` names it in errors)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: a config is a mapping with model: and data:, not a {type(cfg).__name__}")
    model = cfg.get("model") or {}
    init_args = model.get("init_args", model) if isinstance(model, dict) else {}
    if "backbone" not in init_args:
        raise ConfigError(f"{source}: no model.init_args.backbone (is it a ctxlit experiment config?)")
    data = ((cfg.get("data") or {}).get("init_args") or {}) if isinstance(cfg.get("data"), dict) else {}
    size = data.get("image_size") or data.get("crop_size")
    if isinstance(size, (list, tuple)):
        size = tuple(size)
    return init_args["backbone"], dict(init_args.get("backbone_options") or {}), plugins_from_task_args(init_args), size


# --------------------------------------------------------------------------- command line


def input_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size must be N or HxW, got {text!r}") from None
    if len(nums) == 1:
        return nums[0], nums[0]
    if len(nums) == 2:
        return nums[0], nums[1]
    raise argparse.ArgumentTypeError(f"input size must be N or HxW, got {text!r}")


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option must be key=value, got {text!r}")
    return key, yaml.safe_load(value)


def _plugin(text: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--plugin must be a JSON object: {err}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError(f"--plugin must be a JSON object, got {text!r}")
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctxlit.summary",
        description="Parameters, FLOPs and plugin placement of a backbone or experiment config.",
    )
    parser.add_argument("target", help=f"a backbone name ({', '.join(list_backbones())}) or an experiment YAML path")
    parser.add_argument("--input-size", type=input_size, default=None, help="N or HxW (default 224, or the config's image_size)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier classes; 0 = feature extractor")
    parser.add_argument("--plugin", type=_plugin, action="append", default=[], help="a plugin spec as JSON (repeatable)")
    parser.add_argument("--option", type=_option, action="append", default=[], help="backbone option key=value (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead")
    args = parser.parse_args(argv)
    try:
        size = None
        if args.target.endswith((".yaml", ".yml")) or os.path.sep in args.target:
            name, options, plugins, size = load_experiment(args.target)
        else:
            name, options, plugins = args.target, {}, []
        options.update(dict(args.option))
        plugins = plugins + args.plugin
        if args.input_size is not None:
            size = args.input_size
        size = size or 224
        hw = (size, size) if isinstance(size, int) else tuple(size)
        model = build_backbone(name, num_classes=args.num_classes or None, plugins=plugins, **options)
        input_shape = (1, options.get("in_channels", 3), *hw)
        if args.json:
            print(json.dumps({"backbone": name, "options": options, **summary_dict(model, input_shape)}, indent=2, default=str))
        else:
            head = "classifier, %d classes" % args.num_classes if args.num_classes else "feature extractor"
            opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
            print(summarize(model, input_shape, title=f"{name} ({head}{'; ' + opts if opts else ''})"))
    except (CtxlitError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
