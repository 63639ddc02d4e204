"""A study: the runs of one task, grouped over seeds, with their metric, cost and baseline."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from ctxlit.report.runs import Group, ReportError, Run, group_runs, label, varying_knobs


@dataclass
class Delta:
    mean: float
    se: float | None  # standard error of the difference of two means: sqrt(s1²/n1 + s2²/n2)


@dataclass
class Study:
    task: str
    metric: str
    goal: str  # maximize | minimize
    groups: list[Group]
    incomplete: list[tuple[Run, str]]
    knobs: list[str]  # the dotted keys that vary between groups
    baseline: Group | None
    baseline_note: str | None

    def delta(self, group: Group) -> Delta | None:
        if self.baseline is None or group is self.baseline:
            return None
        a, b = group.final(self.metric), self.baseline.final(self.metric)
        if a.mean is None or b.mean is None:
            return None
        se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n) if a.std is not None and b.std is not None else None
        return Delta(a.mean - b.mean, se)


def goal_of(runs: list[Run], metric: str) -> str:
    modes = Counter(r.config.get("checkpoint.mode") for r in runs if r.summary.get("monitor") == metric)
    mode = modes.most_common(1)[0][0] if modes else None
    if mode in ("max", "min"):
        return "maximize" if mode == "max" else "minimize"
    return "minimize" if "loss" in metric or "error" in metric else "maximize"


def build_studies(runs: list[Run], metric: str | None = None) -> list[Study]:
    """One study per task (classification and segmentation are never mixed)."""
    by_task: dict[str, list[Run]] = {}
    unstarted = [run for run in runs if not run.config]  # its task is unknown: listed in every study
    for run in runs:
        if run.config:
            by_task.setdefault(run.task, []).append(run)
    if not by_task:
        raise ReportError(f"no run here got as far as starting: {', '.join(str(r.dir) for r in unstarted)}")
    studies = [_study(task, task_runs, metric) for task, task_runs in by_task.items()]
    for study in studies:
        study.incomplete += [(run, run.incomplete_reason(study.metric)) for run in unstarted]
    return studies


def _study(task: str, runs: list[Run], metric: str | None) -> Study:
    if metric is None:
        monitors = Counter(r.summary.get("monitor") for r in runs if r.summary.get("monitor"))
        if not monitors:
            raise ReportError(f"{task}: no run says which metric it monitors (summary.json); give --metric")
        metric = monitors.most_common(1)[0][0]
    goal = goal_of(runs, metric)
    complete, incomplete = [], []
    for run in runs:
        reason = run.incomplete_reason(metric)
        (incomplete.append((run, reason)) if reason else complete.append(run))
    groups = group_runs(complete)
    knobs = varying_knobs(groups)
    for group in groups:
        group.runs.sort(key=lambda r: (str(r.seed), r.name))
        group.label = label(group.knobs, knobs)
    baselines = [g for g in groups if g.is_baseline]
    baseline, note = None, None
    if len(baselines) == 1 and len(groups) > 1:
        baseline = baselines[0]
    elif len(baselines) > 1:
        note = (f"{len(baselines)} groups have no block ({', '.join(g.label for g in baselines)}): "
                f"no single baseline, so no Δ column")
    elif len(groups) > 1:
        note = "no group without a block (block: none): no baseline, so no Δ column"
    return Study(task, metric, goal, groups, incomplete, knobs, baseline, note)
