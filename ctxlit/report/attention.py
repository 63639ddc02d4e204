"""Attention figures from what the runs recorded: the AttentionMaps callback's
``<run dir>/attention/epoch-NNN/maps.pt`` (the same validation images every time), or, for a run
that recorded none, from its last checkpoint on its first validation images
(:func:`ctxlit.tasks.attention_maps.checkpoint_maps`).

- *Context maps*: per group, the deepest block's map(s) on one validation image: Non-local's
  map at each query position beside GC's (or SNL's) one pooling map, which is GCNet's point:
  the Non-local maps look alike whatever the query, so one query-independent map suffices.
- *SK branch weights*: per stage, the mean weight of each kernel branch (SKNet's Fig. 3).

A run folder is data, not code: a checkpoint is rebuilt only when every class its
hyper-parameters name is one of ctxlit's own tasks, data modules and blocks, checked on the
strings before anything is imported (:func:`refusal`), and only a checkpoint inside the run
folder is opened (:func:`run_checkpoint`). Anything else leaves the figure out with a note.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ctxlit.report.figures import plain_text, png  # noqa: E402
from ctxlit.report.runs import Group, Run  # noqa: E402
from ctxlit.report.study import Study  # noqa: E402

#: Block classes whose maps are pictures over the image, and how many panels each gets at most.
SPATIAL = {"NonLocal": 8, "GlobalContext": 1, "SimplifiedNonLocal": 1, "GloRe": 4}
IMAGE_INDEX = 0


#: How a checkpoint may rebuild its task and data module (hyper-parameter ``_instantiator``)
TRUSTED_INSTANTIATORS = frozenset({"ctxlit.cli.instantiate_module", "pytorch_lightning.cli.instantiate_module",
                                   "lightning.pytorch.cli.instantiate_module"})
#: A string jsonargparse could resolve as an import (a Callable option such as ``block``)
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def latest_maps(run: Run) -> dict | None:
    """The run's attention record: the latest one the callback wrote, else one computed from the
    run's last checkpoint on the same validation images (the task rebuilt from the checkpoint's
    hyper-parameters, if :func:`refusal` finds nothing). None when there is neither, or it
    cannot be read or is refused; the reason goes to stderr."""
    import torch

    files = sorted((run.dir / "attention").glob("epoch-*/maps.pt"))
    try:
        if files:
            return torch.load(files[-1], map_location="cpu", weights_only=True)
        checkpoint = run_checkpoint(run)
        if checkpoint is None:
            return None
        refused = refusal(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True))
        if refused:
            _note(run, f"{checkpoint} not rebuilt: {refused}")
            return None
        from ctxlit.tasks.attention_maps import checkpoint_maps

        return checkpoint_maps(checkpoint)
    except Exception as error:  # noqa: BLE001  (a damaged file or absent dataset: leave the figure out)
        _note(run, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        return None


def _note(run: Run, reason: str) -> None:
    print(f"[ctxlit] report: no attention figure for {run.dir}: {reason}", file=sys.stderr)


def own_classes() -> dict[str, type]:
    """ctxlit's task, data module and block classes by every path a config may name them by
    (``ctxlit.tasks.ClassificationTask``, ``ctxlit.tasks.classification.ClassificationTask``)."""
    import ctxlit.blocks
    import ctxlit.data
    import ctxlit.tasks

    classes = {}
    for package in (ctxlit.tasks, ctxlit.data, ctxlit.blocks):
        for name in package.__all__:
            value = getattr(package, name)
            if isinstance(value, type) and value.__module__.startswith("ctxlit."):
                classes[f"{package.__name__}.{name}"] = classes[f"{value.__module__}.{value.__qualname__}"] = value
    return classes


def refusal(checkpoint: dict) -> str | None:
    """Why the report will not rebuild this checkpoint's task and data module, or None: each
    hyper-parameter ``_class_path`` must be one of ctxlit's tasks (data modules), each
    ``_instantiator`` one of :data:`TRUSTED_INSTANTIATORS`, and any other class path or dotted
    name in them one of :func:`own_classes`. ``load_from_checkpoint`` would import them all."""
    import pytorch_lightning as pl

    own = own_classes()
    for section, base in (("hyper_parameters", pl.LightningModule), ("datamodule_hyper_parameters", pl.LightningDataModule)):
        hparams = checkpoint.get(section)
        if not isinstance(hparams, dict):
            return f"it has no {section}"
        instantiator = hparams.get("_instantiator")
        if instantiator is not None and instantiator not in TRUSTED_INSTANTIATORS:
            return f"its {section} name {instantiator!r} to rebuild it, not a Lightning or ctxlit instantiator"
        class_path = hparams.get("_class_path")
        if not (isinstance(class_path, str) and class_path in own and issubclass(own[class_path], base)):
            return f"its {section} name {class_path!r}, not one of ctxlit's {base.__name__} classes"
        for key, name in _named_imports(hparams):
            if name not in own:
                return f"its {section}.{key} names {name!r}, not one of ctxlit's classes"
    return None


def _named_imports(value, key: str = "") -> list[tuple[str, str]]:
    """(dotted key, name) of every string in ``value`` that could be imported: a dotted name whose
    first part is a module on ``sys.path`` (found, not imported). ``class_path`` values are such
    strings; ``_class_path`` and ``_instantiator`` are checked by :func:`refusal` itself."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in ("_class_path", "_instantiator"):
                found += _named_imports(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found += _named_imports(v, f"{key}[{i}]")
    elif isinstance(value, str) and _DOTTED.fullmatch(value) and _findable(value.split(".")[0]):
        found.append((key, value))
    return found


def _findable(module: str) -> bool:
    """Whether a top-level module of this name could be imported (looked up, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # e.g. __main__, which has no spec: count it
        return True


def run_checkpoint(run: Run) -> Path | None:
    """``checkpoints/last.ckpt`` in the run folder, else the one its summary names (relative to the
    folder the run was started in, the working directory, or absolute), if it lies in the run
    folder: a path that resolves elsewhere (``/etc/passwd``, ``../other``, a link out) is not
    opened, and that is said."""
    folder = run.dir.resolve()
    candidates = [run.dir / "checkpoints" / "last.ckpt"]
    named = run.summary.get("last_checkpoint")
    if isinstance(named, str) and named:
        candidates += [Path(named), Path.cwd() / named]
    for path in candidates:
        resolved = path.resolve()
        if resolved.is_relative_to(folder) and resolved.is_file():
            return resolved
    if named and not any(path.resolve().is_relative_to(folder) for path in candidates[1:]):
        _note(run, f"its summary's checkpoint {named} lies outside the run folder; not opened")
    return None


def _group_maps(group: Group) -> dict | None:
    for run in group.runs:  # the lowest seed that has a record or a checkpoint
        found = latest_maps(run)
        if found is not None:
            return found
    return None


def recorded(study: Study) -> list[tuple[Group, dict]]:
    """(group, maps record) for every group with recorded attention or a checkpoint. Read once
    per study and shared by the figures: a record from a checkpoint costs a model load and a
    forward pass."""
    found = [(group, _group_maps(group)) for group in study.groups]
    return [(group, record) for group, record in found if record is not None]


def _deepest(record: dict) -> tuple[str, str] | None:
    """(module name, class) of the last spatial block in the network's order."""
    spatial = [(name, kind) for name, kind in record["kinds"].items() if kind in SPATIAL]
    return spatial[-1] if spatial else None


def _show_image(ax, image) -> None:
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    low, high = image.min(), image.max()
    ax.imshow(((image - low) / (high - low + 1e-12)).permute(1, 2, 0).numpy(), interpolation="nearest")


@plain_text
def context_maps(records: list[tuple[Group, dict]]) -> tuple[bytes, str] | None:
    rows = []
    for group, record in records:
        chosen = _deepest(record)
        if chosen is not None:
            rows.append((group, record, chosen))
    if not rows:
        return None
    width = 1 + max(min(SPATIAL[kind], record["maps"][name].shape[1]) for _, record, (name, kind) in rows)
    image_h, image_w = rows[0][1]["images"].shape[-2:]
    cell = 2.4 * image_w / max(image_h, image_w)
    fig, axes = plt.subplots(len(rows), width, figsize=(cell * width, len(rows) * (2.0 * image_h / image_w + 0.45) + 0.6),
                             squeeze=False)
    for r, (group, record, (name, kind)) in enumerate(rows):
        image = record["images"][IMAGE_INDEX]
        _show_image(axes[r][0], image)
        axes[r][0].set_ylabel(group.label, fontsize=7, rotation=0, ha="right", va="center")
        value = record["maps"][name][IMAGE_INDEX]
        count = min(SPATIAL[kind], value.shape[0])
        for c in range(1, width):
            ax = axes[r][c]
            if c > count:
                ax.axis("off")
                continue
            ax.imshow(value[c - 1].numpy(), cmap="viridis", interpolation="nearest",
                      extent=(0, image.shape[-1], image.shape[-2], 0))
            title = f"{kind} {name.split('.plugins')[0].replace('network.', '')}"
            if kind == "NonLocal":
                qy, qx = record["queries"][c - 1]
                ax.plot(qx * (image.shape[-1] - 1), qy * (image.shape[-2] - 1), "r+", markersize=8, mew=2)
                title = f"NL query ({qy:.2f}, {qx:.2f})"
            elif kind == "GloRe":
                title = f"GloRe node {c - 1}"
            ax.set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    epochs = sorted({int(record["epoch"]) for _, record, _ in rows})
    sources = sorted({"last checkpoint" if "checkpoint" in record else "recorded in training" for _, record, _ in rows})
    caption = (f"attention of each group's deepest context block on validation image {IMAGE_INDEX} "
               f"(epoch {', '.join(map(str, epochs))}, {' / '.join(sources)}; lowest seed): "
               f"Non-local per query (red +), GC/SNL's single pooling map")
    return png(fig), caption


@plain_text
def sk_branch_weights(records: list[tuple[Group, dict]]) -> tuple[bytes, str] | None:
    """Mean branch weight per stage (over images, channels and the stage's SK convs)."""
    series = []
    for group, record in records:
        by_stage: dict[str, list] = defaultdict(list)
        for name, kind in record["kinds"].items():
            if kind == "SelectiveKernelConv":
                stage = next((p for p in name.split(".") if p.startswith("layer")), name)
                by_stage[stage].append(record["maps"][name].mean(dim=(0, 2)))  # (M,)
        if by_stage:
            series.append((group, {s: [float(x) for x in sum(ws) / len(ws)] for s, ws in by_stage.items()}))
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (group, weights) in zip(axes[0], series):
        stages = sorted(weights)
        branches = len(next(iter(weights.values())))
        step = 0.8 / branches
        for b in range(branches):
            ax.bar([i + b * step for i in range(len(stages))], [weights[s][b] for s in stages], width=step,
                   label=f"branch {b} ({'3x3' if b == 0 else f'3x3 dilation {b + 1}'})")
        ax.set_xticks([i + 0.4 - step / 2 for i in range(len(stages))], stages)
        ax.set(ylim=(0, 1), ylabel="mean branch weight", title=group.label)
        ax.legend(fontsize=7)
    return png(fig), "Selective Kernel: mean branch weight per stage (softmax over branches; lowest seed)"


def attention_figures(studies: list[Study]) -> dict[str, list[tuple[bytes, str]]]:
    figures: dict[str, list[tuple[bytes, str]]] = {}
    for study in studies:
        records = recorded(study)
        made = [f for f in (context_maps(records), sk_branch_weights(records)) if f is not None]
        if made:
            figures[study.task] = made
    return figures
