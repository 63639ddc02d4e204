"""Run folders read back for review: config, metric history and summary, grouped over seeds.

A *run* is a folder with ``config.yaml`` (LightningCLI's copy of the run's config), normally with
``metrics.csv`` (the CSV logger) and ``summary.json`` (ctxlit's RunSummary callback) beside it:
what ``python -m ctxlit.fit`` leaves in ``runs/<name>/version_N/`` and what a sweep trial leaves
in ``runs/sweeps/<sweep>/trial-NNN/``. Nothing here imports a task or talks to the network.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ReportError(Exception):
    """An input the report cannot use; printed as one line, exit 2."""


#: Config keys that differ between runs without being a knob: where a run writes its files and
#: how it resumes, how many CPU threads it uses (its speed, not its result); never what it studies.
NOT_KNOBS = ("trainer.logger", "trainer.default_root_dir", "ckpt_path", "resume", "threads")
#: The seed: runs that differ only in it form one group.
SEED_KEY = "seed_everything"
#: Keys holding a block; a group whose blocks are all ``none`` is a baseline.
BLOCK_KEYS = ("model.init_args.block", "model.init_args.head_block")


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """``{"model": {"init_args": {"lr": 0.1}}}`` -> ``{"model.init_args.lr": 0.1}``; lists stay values."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _is_knob(key: str) -> bool:
    return key != SEED_KEY and not any(key == k or key.startswith(k + ".") for k in NOT_KNOBS)


def _float(value: str | None) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class Run:
    dir: Path
    config: dict[str, object]  # flattened
    summary: dict
    rows: list[dict[str, str]]  # metrics.csv

    @property
    def name(self) -> str:
        return str(self.dir)

    @property
    def task(self) -> str:
        return str(self.summary.get("task") or str(self.config.get("model.class_path", "?")).rsplit(".", 1)[-1])

    @property
    def seed(self):
        return self.config.get(SEED_KEY)

    @property
    def knobs(self) -> dict[str, object]:
        return {k: v for k, v in self.config.items() if _is_knob(k)}

    def history(self, metric: str) -> list[tuple[int, float]]:
        """(epoch, value) of every logged value of ``metric``, in order."""
        points = []
        for row in self.rows:
            value = _float(row.get(metric))
            if value is not None:
                points.append((int(float(row.get("epoch") or 0)), value))
        return points

    def per_epoch(self, metric: str) -> dict[int, float]:
        """The mean of ``metric`` in each epoch (a train loss is logged many times an epoch)."""
        by_epoch: dict[int, list[float]] = defaultdict(list)
        for epoch, value in self.history(metric):
            by_epoch[epoch].append(value)
        return {e: statistics.fmean(v) for e, v in sorted(by_epoch.items())}

    def final(self, metric: str) -> float | None:
        """The metric's last logged value: the run's result."""
        history = self.history(metric)
        return history[-1][1] if history else None

    def best(self, metric: str, goal: str) -> float | None:
        values = [v for _, v in self.history(metric)]
        if not values:
            return None
        return max(values) if goal == "maximize" else min(values)

    def incomplete_reason(self, metric: str) -> str | None:
        status = self.summary.get("status")
        if not self.summary:
            return "no summary.json (the run did not end)" if self.final(metric) is None else None
        if status != "finished":
            error = self.summary.get("error")
            return f"status {status}" + (f": {error}" if error else "")
        if self.final(metric) is None:
            return f"no {metric} logged"
        return None


def load_run(path: Path) -> Run:
    if not (path / "config.yaml").exists() and (path / "trial.json").exists():
        return _unstarted_trial(path)
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"{path}: config.yaml cannot be read ({err})") from None
    try:
        summary = json.loads((path / "summary.json").read_text())
    except FileNotFoundError:
        summary = {}
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: summary.json cannot be read ({err})") from None
    try:
        with (path / "metrics.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        rows = []
    return Run(dir=path, config=flatten(config), summary=summary, rows=rows)


def _unstarted_trial(path: Path) -> Run:
    """A sweep trial that stopped before its run began (a config the CLI rejected): no config,
    only the runner's record, so the report can list it as incomplete."""
    try:
        record = json.loads((path / "trial.json").read_text())
    except (OSError, ValueError):
        record = {}
    status = record.get("status") or "unknown"
    return Run(dir=path, config={}, summary={"status": f"{status} before the run started", "error": record.get("error")},
               rows=[])


def find_runs(inputs: list[str]) -> list[Run]:
    """Runs named by ``inputs``: run folders, folders holding runs (a sweep's), or globs."""
    if not inputs:
        raise ReportError("give one or more run folders, sweep folders or globs")
    folders: list[Path] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise ReportError(f"{item}: matches nothing")
        for match in map(Path, matches):
            if not match.exists():
                raise ReportError(f"{match}: no such folder")
            if not match.is_dir():
                raise ReportError(f"{match}: not a folder (a run folder holds config.yaml, metrics.csv, summary.json)")
            if (match / "config.yaml").is_file() or (match / "trial.json").is_file():
                folders.append(match)
                continue
            inside = sorted({p.parent for name in ("config.yaml", "trial.json") for p in match.rglob(name)
                             if "wandb" not in p.relative_to(match).parts})
            if not inside:
                raise ReportError(f"{match}: not a run folder (no config.yaml) and holds no runs")
            folders.extend(inside)
    unique = list(dict.fromkeys(p.resolve() for p in folders))
    return [load_run(p) for p in unique]


@dataclass
class Stats:
    n: int
    mean: float | None
    std: float | None  # sample std over seeds (n - 1); None for one run

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        values = [v for v in values if v is not None]
        if not values:
            return cls(0, None, None)
        return cls(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Group:
    """Runs of one task whose configs differ only in the seed."""

    knobs: dict[str, object]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    @property
    def is_baseline(self) -> bool:
        present = [k for k in BLOCK_KEYS if k in self.knobs]
        return bool(present) and all(self.knobs[k] in ("none", None) for k in present) and not any(
            k.startswith(b + ".") for k in self.knobs for b in BLOCK_KEYS)

    def final(self, metric: str) -> Stats:
        return Stats.of([r.final(metric) for r in self.runs])

    def best(self, metric: str, goal: str) -> float | None:
        values = [r.best(metric, goal) for r in self.runs]
        values = [v for v in values if v is not None]
        if not values:
            return None
        return max(values) if goal == "maximize" else min(values)

    def cost(self, key: str) -> float | None:
        """The mean over seeds of a summary number (params, flops, images_per_sec)."""
        values = [r.summary.get(key) for r in self.runs if isinstance(r.summary.get(key), (int, float))]
        return statistics.fmean(values) if values else None

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups of runs equal in every knob, in the order their first run came."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = json.dumps(run.knobs, sort_keys=True, default=str)
        groups.setdefault(key, Group(knobs=run.knobs)).runs.append(run)
    return list(groups.values())


def shown_knobs(knobs: dict[str, object]) -> dict[str, object]:
    """Knobs as a table shows them: a block given as ``class_path`` reads as its class name under
    the block's own key (``model.init_args.block: GlobalContext``), beside its ``init_args``."""
    shown = dict(knobs)
    for key in BLOCK_KEYS:
        class_path = shown.pop(f"{key}.class_path", None)
        if class_path is not None and key not in shown:
            shown[key] = str(class_path).rsplit(".", 1)[-1]
    return shown


def varying_knobs(groups: list[Group]) -> list[str]:
    """Dotted keys that take two or more values among the groups that have them (a block's
    options, absent from the no-block group, vary only if they differ between blocks)."""
    shown = [shown_knobs(g.knobs) for g in groups]
    keys = list(dict.fromkeys(k for knobs in shown for k in knobs))
    return [k for k in keys if len({json.dumps(s[k], sort_keys=True, default=str) for s in shown if k in s}) > 1]


def label(knobs: dict[str, object], keys: list[str]) -> str:
    """A short name from the varying knobs: ``none`` or ``GlobalContext pooling=att ...``."""
    shown = shown_knobs(knobs)
    parts = []
    for key in keys:
        if key in shown:
            parts.append(str(shown[key]) if key in BLOCK_KEYS else f"{key.rsplit('.', 1)[-1]}={shown[key]}")
    return " ".join(parts) or "all runs"
