"""Runs as the report sees them: the run folders :mod:`ctxlit.runs` reads, with their config
flattened to dotted knobs, grouped over seeds.

The report reads run folders only through :mod:`ctxlit.runs` (its reader never raises; its
:meth:`~ctxlit.runs.RunFolder.final` is the one rule for a run's result). A run that is not a
result (running, interrupted, failed, damaged) is kept here with its reason, so the report lists
it instead of dropping it. Nothing here imports a task or talks to the network.
"""

from __future__ import annotations

import glob
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ctxlit import runs as run_folders
from ctxlit.runs import RunFolder, Status, finite


class ReportError(Exception):
    """An input the report cannot use; printed as one line, exit 2."""


#: Config keys that differ between runs without being a knob: where a run writes its files and
#: how it resumes, how many CPU threads it uses (its speed, not its result); never what it studies.
NOT_KNOBS = ("trainer.logger", "trainer.default_root_dir", "ckpt_path", "resume", "threads")
#: The seed: runs that differ only in it form one group.
SEED_KEY = "seed_everything"
#: Keys holding a block; a group whose blocks are all ``none`` is a baseline.
BLOCK_KEYS = ("model.init_args.block", "model.init_args.head_block")
#: Keys that set a run's budget or its data: runs that differ in them are not compared.
BUDGET_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.limit_train_batches")
DATA_PREFIX = "data."
#: How a table shows a knob that a group does not set at all (the config's default applies).
UNSET = "(unset)"


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


def is_block_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in BLOCK_KEYS)


def is_budget_or_data(key: str) -> bool:
    return key in BUDGET_KEYS or key.startswith(DATA_PREFIX)


@dataclass
class Run:
    """One run folder as read (:class:`ctxlit.runs.RunFolder`), its config flattened."""

    folder: RunFolder
    config: dict[str, object] = field(default_factory=dict)  # flattened

    @classmethod
    def read(cls, path: Path) -> Run:
        folder = run_folders.read_run(path)
        return cls(folder=folder, config=flatten(folder.config))

    @property
    def dir(self) -> Path:
        return self.folder.dir

    @property
    def summary(self) -> dict:
        return self.folder.summary

    @property
    def name(self) -> str:
        return str(self.dir)

    @property
    def task(self) -> str | None:
        """The task's class name; None when neither summary.json nor config.yaml says it."""
        task = self.summary.get("task")
        if isinstance(task, str) and task:
            return task
        class_path = self.config.get("model.class_path")
        return str(class_path).rsplit(".", 1)[-1] if class_path else None

    @property
    def seed(self):
        return self.config.get(SEED_KEY)

    @property
    def knobs(self) -> dict[str, object]:
        return {k: v for k, v in self.config.items() if _is_knob(k)}

    @property
    def provenance(self) -> dict | None:
        record = self.summary.get("provenance")
        return record if isinstance(record, dict) else None

    def history(self, metric: str) -> list[tuple[int | None, float]]:
        return self.folder.history(metric)

    def per_epoch(self, metric: str) -> dict[int, float]:
        """The mean of ``metric`` in each epoch (a train loss is logged many times an epoch)."""
        by_epoch: dict[int, list[float]] = defaultdict(list)
        for epoch, value in self.history(metric):
            by_epoch[epoch if epoch is not None else 0].append(value)
        return {e: statistics.fmean(v) for e, v in sorted(by_epoch.items())}

    def final(self, metric: str) -> float | None:
        """The run's result (:meth:`ctxlit.runs.RunFolder.final`): None unless done and undamaged."""
        return self.folder.final(metric)

    def test_value(self, metric: str) -> float | None:
        """``metric``'s value in test-metrics.json (what ``test --ckpt_path`` measured), if any."""
        metrics = self.folder.test_metrics.get("metrics", self.folder.test_metrics)
        return finite(metrics.get(metric)) if isinstance(metrics, dict) else None

    def best(self, metric: str, goal: str) -> float | None:
        values = [v for _, v in self.history(metric)]
        if not values:
            return None
        return max(values) if goal == "maximize" else min(values)

    def not_a_result(self, metric: str | None) -> str | None:
        """Why this run is not shown as a result (the file and reason when damaged), else None."""
        why = self.folder.why
        if why:
            return why
        if metric is not None and self.final(metric) is None:
            return f"{self.folder.status.value}, but no {metric} recorded"
        return None


def find_runs(inputs: list[str]) -> list[Run]:
    """Runs named by ``inputs``: run folders, folders holding runs (a sweep's), or globs. Every
    run folder found is returned, damaged or unfinished ones included (the report lists them)."""
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
            inside = run_folders.find_run_folders(match)
            if not inside:
                raise ReportError(f"{match}: not a run folder (no config.yaml, summary.json or trial.json) "
                                  f"and holds no runs")
            folders.extend(inside)
    first: dict[Path, Path] = {}
    for path in folders:  # a run reached twice (through a link) counts once, under its first name
        first.setdefault(path.resolve(), path)
    return [Run.read(path) for path in first.values()]


@dataclass
class Stats:
    n: int
    mean: float | None
    std: float | None  # sample std over seeds (n - 1); None for one run

    @classmethod
    def of(cls, values: list[float | None]) -> Stats:
        values = [v for v in values if v is not None]
        if not values:
            return cls(0, None, None)
        return cls(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Group:
    """Runs of one task whose configs differ only in the seed (results only)."""

    knobs: dict[str, object]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    @property
    def is_baseline(self) -> bool:
        present = [k for k in BLOCK_KEYS if k in self.knobs]
        return bool(present) and all(self.knobs[k] in ("none", None) for k in present) and not any(
            k.startswith(b + ".") for k in self.knobs for b in BLOCK_KEYS)

    @property
    def setting(self) -> dict[str, object]:
        """The knobs other than the block's: what a baseline must share to be compared with."""
        return {k: v for k, v in self.knobs.items() if not is_block_key(k)}

    @property
    def budget_and_data(self) -> dict[str, object]:
        return {k: v for k, v in self.knobs.items() if is_budget_or_data(k)}

    def final(self, metric: str) -> Stats:
        return Stats.of([r.final(metric) for r in self.runs])

    def values_by_seed(self, metric: str, finished_only: bool = False) -> dict:
        """{seed: final value}; a seed run twice keeps its first run (runs are in seed order).
        ``finished_only``: leave out runs hyperband stopped (their budget was cut)."""
        values: dict = {}
        for run in self.runs:
            if finished_only and run.folder.status is not Status.FINISHED:
                continue
            value = run.final(metric)
            if value is not None:
                values.setdefault(json.dumps(run.seed, default=str), value)
        return values

    def test(self, metric: str) -> Stats:
        return Stats.of([r.test_value(metric) for r in self.runs])

    def best(self, metric: str, goal: str) -> float | None:
        values = [r.best(metric, goal) for r in self.runs]
        values = [v for v in values if v is not None]
        if not values:
            return None
        return max(values) if goal == "maximize" else min(values)

    def cost(self, key: str) -> float | None:
        """The mean over seeds of a summary number (params, flops, images_per_sec)."""
        values = [finite(r.summary.get(key)) for r in self.runs]
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    @property
    def provenance(self) -> list[dict | None]:
        """The distinct provenance records of the group's runs (None: a run made before they existed)."""
        seen: dict[str, dict | None] = {}
        for run in self.runs:
            seen.setdefault(json.dumps(run.provenance, sort_keys=True, default=str), run.provenance)
        return list(seen.values())


def _key(knobs: dict) -> str:
    return json.dumps(knobs, sort_keys=True, default=str)


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups of runs equal in every knob, in the order their first run came."""
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(_key(run.knobs), Group(knobs=run.knobs)).runs.append(run)
    return list(groups.values())


def shown_knobs(knobs: dict[str, object]) -> dict[str, object]:
    """Knobs as a table shows them: a block given as ``class_path`` reads as its class name under
    the block's own key (``model.init_args.block: GlobalContext``), beside its ``init_args``."""
    shown: dict[str, object] = {}
    for key, value in knobs.items():
        block = key.removesuffix(".class_path")
        if block in BLOCK_KEYS and block != key and block not in knobs:
            shown[block] = str(value).rsplit(".", 1)[-1]  # in the class path's place: the block comes first
        else:
            shown[key] = value
    return shown


def _has_no_block_for(knobs: dict[str, object], key: str) -> bool:
    """Whether ``key`` is an option of a block that this group does not have (``block: none``)."""
    block = next((b for b in BLOCK_KEYS if key.startswith(b + ".")), None)
    return block is not None and knobs.get(block, "none") in ("none", None)


def varying_knobs(groups: list[Group]) -> list[str]:
    """Dotted keys whose value differs between groups, a key one group sets and another leaves
    unset included (``model.init_args.backbone_options.norm_layer``): every two groups differ in
    some column. A block's options are not compared with a group that has no block."""
    shown = [shown_knobs(g.knobs) for g in groups]
    keys = list(dict.fromkeys(k for knobs in shown for k in knobs))
    varying = []
    for key in keys:
        values = {json.dumps(s.get(key, UNSET), sort_keys=True, default=str)
                  for s in shown if not _has_no_block_for(s, key)}
        if len(values) > 1:
            varying.append(key)
    return varying


def cell(knobs: dict[str, object], key: str) -> str:
    """A knob's value as a table cell: '' for a block option of a group with no block."""
    shown = shown_knobs(knobs)
    if key in shown:
        value = shown[key]
        return json.dumps(value) if isinstance(value, bool) or value is None else str(value)
    return "" if _has_no_block_for(shown, key) else UNSET


def label(knobs: dict[str, object], keys: list[str]) -> str:
    """A short name from the varying knobs: ``none`` or ``GlobalContext pooling=att ...``."""
    parts = []
    for key in keys:
        value = cell(knobs, key)
        if value:
            parts.append(value if key in BLOCK_KEYS else f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts) or "all runs"


def differences(a: dict[str, object], b: dict[str, object]) -> list[str]:
    """``key: a vs b`` for each key whose value differs between two knob sets."""
    keys = list(dict.fromkeys([*a, *b]))
    return [f"{k}: {a.get(k, UNSET)} vs {b.get(k, UNSET)}" for k in keys
            if _key({"v": a.get(k, UNSET)}) != _key({"v": b.get(k, UNSET)})]
