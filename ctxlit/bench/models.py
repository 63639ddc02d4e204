"""``python -m ctxlit.bench models NETWORK...``: whole networks' training and inference cost, side by side.

Each NETWORK is one of

* an experiment YAML (``model.init_args`` backbone, backbone_options, block, placement,
  extra_plugins, read as ``python -m ctxlit.summary`` reads it; input size from
  ``data.init_args.image_size``/``crop_size``, classes from the data module);
* a run folder (its ``config.yaml``, as ``python -m ctxlit.fit`` saved it);
* a sweep file (``parameters:`` + ``command:``): one network per distinct configuration of its
  trials (seeds and ``trainer.*`` values do not change the network), each config parsed by
  ctxlit's CLI as the trial would parse it;
* a ctxlit backbone name (``resnet50``, ``sknet50``, ``hrnet_w18``, ...);
* ``timm:NAME`` where timm is installed (``pip install timm``; never a dependency of ctxlit).

``--preset gpu-imagenet`` adds the ImageNet-layout set of the GPU issue (ctxlit R50, GC-R50
c3-c5, GC on every block, SE-R50, SKNet-50, NL-R50, LR-Net-50, HRNet-W18, and timm's
resnet50/seresnet50/resnet34/skresnet34/resnet33ts/seresnet33ts/gcresnet33ts when timm is there),
each with the ratio to its own plain network. On a GPU::

    python -m ctxlit.bench models --preset gpu-imagenet --device cuda --batch 128 --size 224 \\
        --dtype bf16 --channels-last --compile --json bench-results/models-gpu.json

Measured for every network in the same process, in interleaved rounds (every network's training
step, then every network's inference step, the starting network rotating each round), after
``--warmup`` untimed steps each:

* training step: forward + loss + backward + ``torch.optim.SGD`` step (momentum 0.9), train mode;
* inference step: forward in eval mode under ``torch.no_grad``;
* time: CPU time of this process (``time.process_time``) on CPU, CUDA events on a GPU; wall time
  beside it. Medians and quartiles of the rounds; ratios are median / median of the reference;
* memory: ``act MB``, the distinct storages autograd keeps for backward in one training forward
  (parameters excluded; every device); ``peak MB`` on CUDA: the network's weights and optimizer
  state plus ``max_memory_allocated`` of one training step above what was resident (``n/a`` on CPU:
  the CPU allocator keeps no peak that could be read per network);
* params and forward GFLOPs per image (:func:`ctxlit.utils.complexity.measure_complexity`).

The same measurement is :func:`measure_networks` for code (``python -m ctxlit.report --cost``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.metadata
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ctxlit.backbones import build_backbone, list_backbones
from ctxlit.bench.blocks import saved_tensor_bytes
from ctxlit.errors import ConfigError, CtxlitError
from ctxlit.summary import experiment_from_config, input_size
from ctxlit.utils.complexity import NOTE_NOT_COUNTED, measure_complexity
from ctxlit.utils.malloc import keep_freed_memory

TIMM_MISSING = "timm not installed: pip install timm"
TIME_NOTE = (
    "train = forward + loss + backward + SGD step (train mode), infer = forward (eval, no_grad); "
    "medians [quartiles] of interleaved rounds; CPU time of this process on CPU, CUDA events on a GPU; "
    "ratios are median / median of the reference network"
)
MEMORY_NOTE = (
    "act MB = storages autograd keeps for backward in one training forward (parameters excluded); "
    "peak MB (CUDA) = weights + optimizer state + max_memory_allocated of a training step above them; n/a on CPU"
)
DEFAULT_SIZE = 224  # input side for backbone names and timm models without --size
DEFAULT_CLASSES = 1000  # classifier width for backbone names and timm models without --num-classes


@dataclasses.dataclass
class Network:
    """A network to measure: how to build it and at which input."""

    label: str
    build: Callable[[], nn.Module]  # a fresh model; logits (N, K) or a list of feature maps
    source: str  # "ctxlit", "timm", a config path
    image_size: tuple[int, int] | None = None  # the config's own; None: --size or DEFAULT_SIZE
    in_channels: int = 3
    reference: str | None = None  # the label its ratios are against; None: the baseline
    note: str = ""


# --------------------------------------------------------------------------- what to measure


def _timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConfigError(TIMM_MISSING) from None


def timm_network(name: str, num_classes: int | None = None, reference: str | None = None) -> Network:
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise ConfigError(f"timm has no model {name!r}{hint}")
    classes = num_classes or DEFAULT_CLASSES
    return Network(f"timm:{name}", lambda: timm.create_model(name, pretrained=False, num_classes=classes),
                   source=f"timm {timm.__version__}", reference=reference)


def backbone_network(name: str, num_classes: int | None = None, plugins: list | None = None,
                     label: str | None = None, reference: str | None = None, **options: Any) -> Network:
    classes = num_classes or DEFAULT_CLASSES
    return Network(label or name, lambda: build_backbone(name, num_classes=classes, plugins=plugins, **options),
                   source="ctxlit", in_channels=options.get("in_channels", 3), reference=reference)


def _data_num_classes(cfg: dict) -> tuple[int | None, str]:
    """The data module's ``num_classes`` (ctxlit's own data classes only, built from their
    init_args: the synthetic one needs no files), or None and why not."""
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    class_path = str(data.get("class_path") or "")
    if not class_path.startswith("ctxlit.data."):
        return None, f"data class {class_path or 'none'} is not ctxlit's"
    module, _, name = class_path.rpartition(".")
    try:
        datamodule = getattr(importlib.import_module(module), name)(**(data.get("init_args") or {}))
        return int(datamodule.num_classes), ""
    except (CtxlitError, OSError, TypeError, ValueError, AttributeError, ImportError) as err:
        first_line = str(err).splitlines()[0].rstrip(": ") if str(err) else type(err).__name__
        return None, f"data module not built: {first_line}"


def network_from_config(cfg: dict, label: str, source: str, num_classes: int | None = None) -> Network:
    """The network a ctxlit config trains (classification: backbone + classifier; any other
    task: its backbone as a feature extractor, said in the note)."""
    backbone, options, plugins, size = experiment_from_config(cfg, source)
    task = str((cfg.get("model") or {}).get("class_path") or "ctxlit.tasks.ClassificationTask")
    note = ""
    init_args = (cfg.get("model") or {}).get("init_args") or {}
    if task.endswith("ClassificationTask"):
        classes = num_classes or init_args.get("num_classes")
        if classes is None:
            classes, why = _data_num_classes(cfg)
            if classes is None:
                classes, note = DEFAULT_CLASSES, f"{DEFAULT_CLASSES} classes assumed: {why}"
    else:
        classes, note = None, f"{task.rsplit('.', 1)[-1]}: backbone features only (no head)"
    if isinstance(size, int):
        size = (size, size)
    return Network(label, lambda: build_backbone(backbone, num_classes=classes, plugins=plugins, **options),
                   source=source, image_size=tuple(size) if size else None,
                   in_channels=options.get("in_channels", 3), note=note)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot be read as YAML ({str(err).splitlines()[0]})") from None


def sweep_networks(path: Path, sweep: dict, num_classes: int | None = None) -> list[Network]:
    """One network per distinct configuration of a sweep's trials (seeds and trainer keys
    dropped), each labelled by the values that vary."""
    from ctxlit.sweep.files import SweepError, enumerate_trials, trial_config
    from ctxlit.sweep.runner import short, varying_keys

    try:
        trials = enumerate_trials(sweep)
    except ImportError as err:
        raise ConfigError(f"{path}: reading a sweep needs W&B's sweeps package ({err}); see the README") from None
    except SweepError as err:
        raise ConfigError(f"{path}: {err}") from None
    network_keys = [{k: v for k, v in t.items() if k != "seed_everything" and not k.startswith("trainer.")} for t in trials]
    distinct = list({json.dumps(p, sort_keys=True): p for p in network_keys}.values())
    varying = varying_keys(distinct)
    networks = []
    for params in distinct:
        label = ", ".join(short(_varying_init_args(params[k], [p[k] for p in distinct])) for k in varying) or path.stem
        try:
            cfg = trial_config(sweep, params)
        except SweepError as err:
            raise ConfigError(f"{path}: trial {params}: {err}") from None
        networks.append(network_from_config(cfg, label, f"{path} ({label})", num_classes))
    return networks


def _varying_init_args(value: Any, values: list[Any]) -> Any:
    """A class_path value without the init_args every value of its key shares (a label says
    ``GlobalContext(fusion=mul)``, not the ratio all nine configurations have)."""
    if not (isinstance(value, dict) and "class_path" in value):
        return value
    args = value.get("init_args") or {}
    others = [v.get("init_args") or {} for v in values if isinstance(v, dict)]
    kept = {k: v for k, v in args.items() if any(o.get(k) != v for o in others)}
    return {**value, "init_args": kept}


def config_networks(target: str, num_classes: int | None = None) -> list[Network]:
    """The networks of an experiment YAML, a run folder or a sweep file."""
    path = Path(target)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path}: not a run folder (no config.yaml)")
        label, path = path.name, path / "config.yaml"
    elif path.is_file():
        label = path.stem
    else:
        raise ConfigError(f"{target}: no such file or folder")
    cfg = _read_yaml(path)
    if isinstance(cfg, dict) and "parameters" in cfg and "command" in cfg:
        return sweep_networks(path, cfg, num_classes)
    return [network_from_config(cfg, label, str(path), num_classes)]


def resolve(target: str, num_classes: int | None = None) -> list[Network]:
    """The networks one command-line argument names."""
    if target.startswith("timm:"):
        return [timm_network(target[len("timm:"):], num_classes)]
    if target in list_backbones():
        return [backbone_network(target, num_classes)]
    if target.endswith((".yaml", ".yml")) or os.sep in target or Path(target).exists():
        return config_networks(target, num_classes)
    close = difflib.get_close_matches(target, list_backbones(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown network {target!r}{hint}: give an experiment YAML, a run folder, a sweep file, "
                      f"a ctxlit backbone ({', '.join(list_backbones())}) or timm:NAME")


def _gc(stages: Any) -> list[dict]:
    # GCNet's ImageNet setting: r = 1/16 after the last 1x1 conv of the bottleneck, before the add
    return [{"block": "gc", "options": {"ratio": 1 / 16}, "stages": stages, "position": "after_conv3"}]


#: Non-local's 5-block ResNet-50 (Wang et al. 2018, Table 2c): every other block, 2 in c3 and 3 in c4
NL_5_BLOCKS = [{"block": "nl", "stages": 2, "blocks": [1, 3], "position": "after_add"},
               {"block": "nl", "stages": 3, "blocks": [1, 3, 5], "position": "after_add"}]


def preset_gpu_imagenet(num_classes: int | None = None) -> tuple[list[Network], list[str]]:
    """The issue-24 set: ctxlit's ImageNet networks, each against ctxlit's R50, and timm's
    equivalents, each against its own plain network. Returns (networks, notes)."""
    r50 = "resnet50"
    networks = [
        backbone_network(r50, num_classes),
        backbone_network(r50, num_classes, _gc([2, 3, 4]), label="gc-r50 (c3-c5, r16)", reference=r50),
        backbone_network(r50, num_classes, _gc("all"), label="gc-r50 (all blocks, r16)", reference=r50),
        backbone_network(r50, num_classes, [{"block": "se", "stages": "all", "position": "after_conv3"}],
                         label="se-r50", reference=r50),
        backbone_network("sknet50", num_classes, reference=r50),
        backbone_network(r50, num_classes, NL_5_BLOCKS, label="nl-r50 (5 blocks)", reference=r50),
        backbone_network("lrnet50", num_classes, reference=r50),
        backbone_network("hrnet_w18", num_classes, reference=r50),
    ]
    # timm's plain networks against ctxlit's R50 (resnet50: the "within 3%" goal), each attention
    # network against timm's plain network of its layout
    timm_pairs = [("resnet50", r50), ("seresnet50", "timm:resnet50"), ("resnet34", r50),
                  ("skresnet34", "timm:resnet34"), ("resnet33ts", r50), ("seresnet33ts", "timm:resnet33ts"),
                  ("gcresnet33ts", "timm:resnet33ts")]
    try:
        _timm()
    except ConfigError:
        return networks, [f"preset gpu-imagenet: timm models left out ({TIMM_MISSING})"]
    return networks + [timm_network(name, num_classes, reference=ref) for name, ref in timm_pairs], []


PRESETS = {"gpu-imagenet": preset_gpu_imagenet}


# --------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Settings:
    """How every network is measured (the command line's options)."""

    batch: int = 32
    size: tuple[int, int] | None = None
    rounds: int = 10
    warmup: int = 2
    device: str = "cpu"
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False


@dataclasses.dataclass
class Candidate:
    """One network in one variant (eager or compiled), ready to step."""

    network: Network
    variant: str
    module: nn.Module
    forward: Callable[[torch.Tensor], Any]
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor  # (N, C, H, W)
    targets: torch.Tensor  # (N,) class indices
    input_shape: tuple[int, ...]
    train: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (time ms, wall ms) per round
    infer: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return self.network.label if self.variant == "eager" else f"{self.network.label} [compiled]"


def _loss(output: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for logits; for a feature extractor, the mean square of every map."""
    if isinstance(output, torch.Tensor):
        return F.cross_entropy(output.float(), targets)
    return sum(f.float().square().mean() for f in output)


def _autocast(settings: Settings):
    enabled = settings.dtype == "bf16"
    return torch.autocast(torch.device(settings.device).type, dtype=torch.bfloat16, enabled=enabled)


def train_step(c: Candidate, settings: Settings) -> None:
    c.module.train()
    c.optimizer.zero_grad(set_to_none=True)
    with _autocast(settings):
        output = c.forward(c.inputs)
    _loss(output, c.targets).backward()
    c.optimizer.step()


def infer_step(c: Candidate, settings: Settings) -> None:
    c.module.eval()
    with torch.no_grad(), _autocast(settings):
        c.forward(c.inputs)


def _timed(step: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(time ms, wall ms) of one step: CUDA events on a GPU, this process's CPU time on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        wall = time.perf_counter()
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end), (time.perf_counter() - wall) * 1e3
    cpu, wall = time.process_time(), time.perf_counter()
    step()
    return (time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3


def _prepare(network: Network, settings: Settings) -> tuple[nn.Module, dict, tuple]:
    """The eager model on the device, its complexity, and its input shape."""
    size = settings.size or network.image_size or (DEFAULT_SIZE, DEFAULT_SIZE)
    shape = (settings.batch, network.in_channels, *size)
    torch.manual_seed(0)
    model = network.build()
    complexity = measure_complexity(model, (1, *shape[1:]))
    model = model.to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, complexity.as_dict(), shape


def _candidates(network: Network, settings: Settings) -> tuple[list[Candidate], dict]:
    model, complexity, shape = _prepare(network, settings)
    device = torch.device(settings.device)
    inputs = torch.randn(shape, device=device)
    if settings.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model.eval()
        probe = model(inputs[:1])
    classes = probe.shape[1] if isinstance(probe, torch.Tensor) else 1
    targets = torch.randint(0, classes, (shape[0],), device=device)
    variants = [("eager", model)] + ([("compiled", torch.compile(model))] if settings.compile else [])
    out = []
    for variant, forward in variants:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        out.append(Candidate(network, variant, model, forward, optimizer, inputs, targets, shape))
    return out, complexity


def _memory(c: Candidate, settings: Settings) -> dict[str, int | None]:
    """Saved-activation bytes of one training forward; on CUDA the training step's peak."""
    c.module.train()
    with _autocast(settings):
        saved = saved_tensor_bytes(lambda: c.module(c.inputs), exclude=c.module)
    peak = None
    device = torch.device(settings.device)
    if device.type == "cuda":
        c.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step(c, settings)
        torch.cuda.synchronize(device)
        own = sum(t.numel() * t.element_size() for t in c.module.parameters())
        own += sum(t.numel() * t.element_size() for s in c.optimizer.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor))
        peak = own + torch.cuda.max_memory_allocated(device) - resident
    return {"saved_bytes": saved, "peak_bytes": peak}


def _stats(values: list[float]) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def run_rounds(candidates: list[Candidate], settings: Settings) -> None:
    """Warm every candidate up, then ``rounds`` rounds: each one's training step in turn, then
    each one's inference step, starting one later each round so no network always goes first."""
    device = torch.device(settings.device)
    for c in candidates:
        for _ in range(settings.warmup):  # allocator, oneDNN primitives, cuDNN autotuning, compilation
            train_step(c, settings)
            infer_step(c, settings)
    for r in range(max(1, settings.rounds)):
        order = candidates[r % len(candidates):] + candidates[:r % len(candidates)]
        for c in order:
            c.train.append(_timed(lambda: train_step(c, settings), device))
        for c in order:
            c.infer.append(_timed(lambda: infer_step(c, settings), device))


def _row(c: Candidate, complexity: dict, memory: dict) -> dict[str, Any]:
    train, infer = _stats([t for t, _ in c.train]), _stats([t for t, _ in c.infer])
    train["wall_median"] = statistics.median(w for _, w in c.train)
    infer["wall_median"] = statistics.median(w for _, w in c.infer)
    batch = c.input_shape[0]
    return {
        "network": c.network.label, "variant": c.variant, "label": c.label, "source": c.network.source,
        "input_shape": list(c.input_shape), "params": complexity["params"], "gflops": complexity["gflops"],
        "train_ms": train, "train_images_per_s": batch / train["median"] * 1e3,
        "infer_ms": infer, "infer_images_per_s": batch / infer["median"] * 1e3,
        **memory, "note": c.network.note,
    }


def _pick_baseline(labels: list[str], baseline: str | int | None) -> int:
    """The index of the baseline network: a label, a 1-based position, or the first."""
    if baseline is None:
        return 0
    if isinstance(baseline, int) or str(baseline).isdigit():
        index = int(baseline) - 1
        if not 0 <= index < len(labels):
            raise ConfigError(f"--baseline {baseline}: give a position from 1 to {len(labels)} or a network's label")
        return index
    if baseline in labels:
        return labels.index(baseline)
    raise ConfigError(f"--baseline {baseline!r} is none of the networks: {', '.join(labels)}")


def _add_ratios(rows: list[dict], networks: list[Network], baseline: int) -> None:
    """Each row's ratios to its reference in the same variant (compiled vs compiled); compiled
    rows also get their speed-up over their own eager step."""
    labels = [n.label for n in networks]
    own_reference = {n.label: n.reference for n in networks}
    by_key = {(r["network"], r["variant"]): r for r in rows}
    for row in rows:
        reference = own_reference[row["network"]]
        reference = reference if reference in labels else labels[baseline]
        ref = by_key[(reference, row["variant"])]
        row["reference"], row["is_baseline"] = reference, row["network"] == labels[baseline]
        row["train_ratio"] = row["train_ms"]["median"] / ref["train_ms"]["median"]
        row["infer_ratio"] = row["infer_ms"]["median"] / ref["infer_ms"]["median"]
        row["flop_ratio"] = row["gflops"] / ref["gflops"] if ref["gflops"] else None
        if row["variant"] == "compiled":
            eager = by_key[(row["network"], "eager")]
            row["compile_speedup"] = eager["train_ms"]["median"] / row["train_ms"]["median"]


def measure_networks(specs: Sequence[str | Network], settings: Settings | None = None,
                     baseline: str | int | None = None, num_classes: int | None = None,
                     log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time and size every network of ``specs`` (arguments as on the command line, or
    :class:`Network` objects) side by side; one dict per network and variant, with ratios to
    the baseline (a label, a 1-based position; default the first) or the network's own reference.

    Raises ``ConfigError`` (one line) for a name, path or option that cannot be used."""
    settings = settings or Settings()
    networks = [n for s in specs for n in ([s] if isinstance(s, Network) else resolve(s, num_classes))]
    if not networks:
        raise ConfigError("no networks to measure")
    _unique_labels(networks)
    base = _pick_baseline([n.label for n in networks], baseline)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    prepared = [_candidates(n, settings) for n in networks]
    candidates = [c for cands, _ in prepared for c in cands]
    run_rounds(candidates, settings)
    rows = []
    for cands, complexity in prepared:
        for c in cands:
            rows.append(_row(c, complexity, _memory(c, settings)))
            if log:
                log(f"measured {c.label}")
    _add_ratios(rows, networks, base)
    return rows


def _unique_labels(networks: list[Network]) -> None:
    """Two networks with one label (two runs both called version_0) get #2, #3 ..."""
    seen: dict[str, int] = {}
    for n in networks:
        seen[n.label] = seen.get(n.label, 0) + 1
        if seen[n.label] > 1:
            n.label = f"{n.label} #{seen[n.label]}"


# --------------------------------------------------------------------------- command line


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def _spread(t: dict) -> str:
    return f"{t['median']:.2f} [{t['q1']:.2f}-{t['q3']:.2f}]"


TABLE_COLUMNS = ("network", "HxW", "params M", "GFLOPs", "train ms [q1-q3]", "train img/s", "train x",
                 "infer ms [q1-q3]", "infer img/s", "infer x", "act MB", "peak MB", "ratios vs")


def table(rows: list[dict]) -> str:
    """The printed table: one line per network (and variant), columns as TABLE_COLUMNS."""
    cells = [TABLE_COLUMNS] + [(
        r["label"], "x".join(map(str, r["input_shape"][2:])), f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.4g}",
        _spread(r["train_ms"]), f"{r['train_images_per_s']:.1f}", f"{r['train_ratio']:.2f}x",
        _spread(r["infer_ms"]), f"{r['infer_images_per_s']:.1f}", f"{r['infer_ratio']:.2f}x",
        _mb(r["saved_bytes"]), _mb(r["peak_bytes"]), r["reference"] + (f" ({r['note']})" if r["note"] else ""),
    ) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS) - 1)]
    return "\n".join(
        "  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:-1], widths[1:])] + [line[-1]])
        for line in cells)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctxlit.bench models", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add = parser.add_argument
    add("networks", nargs="*", metavar="NETWORK", help="experiment YAML, run folder, sweep file, backbone name or timm:NAME")
    add("--preset", choices=sorted(PRESETS), action="append", default=[], help="add a named set of networks")
    add("--batch", type=int, default=32, help="images per step (default 32)")
    add("--size", type=input_size, default=None, help=f"input N or HxW for every network (default: a config's own "
        f"image_size, else {DEFAULT_SIZE})")
    add("--num-classes", type=int, default=None, help=f"classifier width (default: a config's data module, "
        f"else {DEFAULT_CLASSES})")
    add("--rounds", type=int, default=10, help="timed interleaved rounds (default 10)")
    add("--warmup", type=int, default=2, help="untimed steps of each kind per network first (default 2)")
    add("--device", choices=["cpu", "cuda"], default="cpu")
    add("--dtype", choices=["float32", "bf16"], default="float32", help="bf16: autocast to bfloat16")
    add("--channels-last", action="store_true", help="model and input in channels_last")
    add("--compile", action="store_true", help="also time each network through torch.compile (slow warm-up on CPU)")
    add("--threads", type=int, default=None, help="torch intra-op threads (default 1 on CPU, torch's choice on CUDA)")
    add("--baseline", default=None, help="the network ratios are against: its label or 1-based position "
        "(default the first; a preset's networks keep their own plain reference)")
    add("--json", default=None, metavar="FILE", help="also write the results here")
    return parser


def _check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for option, value, least in (("--batch", args.batch, 1), ("--rounds", args.rounds, 1), ("--warmup", args.warmup, 0),
                                 ("--threads", args.threads or 1, 1), ("--num-classes", args.num_classes or 1, 1)):
        if value < least:
            parser.error(f"{option} must be at least {least}; got {value}")
    if not args.networks and not args.preset:
        parser.error("give one or more networks (experiment YAML, run folder, sweep file, backbone name, "
                     "timm:NAME) or --preset")


def _header(settings: Settings, allocator: str) -> str:
    device = torch.device(settings.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return "\n".join([
        f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {settings.batch}, "
        f"rounds {settings.rounds}, warm-up {settings.warmup}, dtype {settings.dtype}, "
        f"channels_last {settings.channels_last}, compile {settings.compile}",
        allocator, f"time: {TIME_NOTE}", f"memory: {MEMORY_NOTE}", f"flops: per image, forward; {NOTE_NOT_COUNTED}",
    ])


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_counts(parser, args)
    settings = Settings(batch=args.batch, size=args.size, rounds=args.rounds, warmup=args.warmup, device=args.device,
                        dtype=args.dtype, channels_last=args.channels_last, compile=args.compile)
    threads = args.threads or (1 if args.device == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    allocator = keep_freed_memory() if args.device == "cpu" else "malloc: unchanged (CUDA run)"
    try:
        specs: list[str | Network] = []
        for preset in args.preset:
            networks, notes = PRESETS[preset](args.num_classes)
            specs += networks
            for note in notes:
                print(note)
        specs += [n for target in args.networks for n in resolve(target, args.num_classes)]
        print(_header(settings, allocator), flush=True)
        rows = measure_networks(specs, settings, args.baseline, args.num_classes)
    except CtxlitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(table(rows))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        result = {"device": settings.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  **dataclasses.asdict(settings), "malloc": allocator, "time_note": TIME_NOTE,
                  "memory_note": MEMORY_NOTE, "flops_note": NOTE_NOT_COUNTED, "networks": rows}
        result["device_name"] = torch.cuda.get_device_name(0) if settings.device == "cuda" else "cpu"
        result["timm"] = _installed_version("timm")
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
