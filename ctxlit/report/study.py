"""A study: the runs of one task, grouped over seeds, with their metric, baselines and answers.

Only runs that are results (finished or stopped, undamaged, the metric recorded) form groups;
every other run is listed with why (running, interrupted, failed, damaged: the file and reason).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from ctxlit.report.runs import Group, ReportError, Run, differences, group_runs, label, varying_knobs


@dataclass
class Delta:
    mean: float
    se: float | None  # standard error of the difference of two means: sqrt(s1²/n1 + s2²/n2)


@dataclass
class Study:
    task: str
    metric: str | None  # None when no run says what it monitors and none is a result
    goal: str  # maximize | minimize
    groups: list[Group]
    not_results: list[tuple[Run, str]]  # (run, why it is not shown as a result)
    knobs: list[str]  # the dotted keys that vary between groups
    baselines: dict[int, Group] = field(default_factory=dict)  # id(group) -> its baseline
    notes: list[str] = field(default_factory=list)  # why a group has no Δ
    answers: object = None  # ctxlit.report.effects.Answers, set by build_studies
    costs: dict[int, dict] = field(default_factory=dict)  # id(group) -> measured cost (--cost)

    @property
    def baseline(self) -> Group | None:
        """The baseline most groups are compared with (figures draw its mean as a line)."""
        counts = Counter(id(b) for b in self.baselines.values())
        if not counts:
            return None
        top = counts.most_common(1)[0][0]
        return next(b for b in self.baselines.values() if id(b) == top)

    def is_baseline(self, group: Group) -> bool:
        return any(b is group for b in self.baselines.values())

    def baseline_of(self, group: Group) -> Group | None:
        return self.baselines.get(id(group))

    def delta(self, group: Group) -> Delta | None:
        baseline = self.baseline_of(group)
        if baseline is None or group is baseline:
            return None
        a, b = group.final(self.metric), baseline.final(self.metric)
        if a.mean is None or b.mean is None:
            return None
        se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n) if a.std is not None and b.std is not None else None
        return Delta(a.mean - b.mean, se)


def goal_of(runs: list[Run], metric: str) -> str:
    modes = Counter(r.config.get("checkpoint.mode") for r in runs if r.folder.monitor == metric)
    mode = modes.most_common(1)[0][0] if modes else None
    if mode in ("max", "min"):
        return "maximize" if mode == "max" else "minimize"
    return "minimize" if "loss" in metric or "error" in metric else "maximize"


def build_studies(runs: list[Run], metric: str | None = None, effects: bool = True) -> list[Study]:
    """One study per task (classification and segmentation are never mixed). A run whose task
    cannot be read (damaged, or a trial that never started) is listed in every study."""
    by_task: dict[str, list[Run]] = {}
    unknown = [run for run in runs if run.task is None]
    for run in runs:
        if run.task is not None:
            by_task.setdefault(run.task, []).append(run)
    if not by_task:
        raise ReportError("no run here got as far as starting: " + "; ".join(
            f"{r.dir} ({r.not_a_result(None) or 'no task recorded'})" for r in unknown))
    studies = [_study(task, task_runs, metric) for task, task_runs in by_task.items()]
    for study in studies:
        study.not_results += [(run, run.not_a_result(study.metric) or "no task recorded") for run in unknown]
        if effects and study.groups:
            from ctxlit.report.effects import answer

            study.answers = answer(study)
    return studies


def _study(task: str, runs: list[Run], metric: str | None) -> Study:
    if metric is None:
        monitors = Counter(r.folder.monitor for r in runs if r.folder.monitor)
        if monitors:
            metric = monitors.most_common(1)[0][0]
        elif any(not r.folder.why for r in runs):
            raise ReportError(f"{task}: no run says which metric it monitors (summary.json); give --metric")
    goal = goal_of(runs, metric) if metric else "maximize"
    results, not_results = [], []
    for run in runs:
        why = run.not_a_result(metric)
        (not_results.append((run, why)) if why else results.append(run))
    groups = group_runs(results)
    knobs = varying_knobs(groups)
    for group in groups:
        group.runs.sort(key=lambda r: (str(r.seed), r.name))
        group.label = label(group.knobs, knobs)
    study = Study(task, metric, goal, groups, not_results, knobs)
    _match_baselines(study)
    return study


def _match_baselines(study: Study) -> None:
    """Each group's baseline: the no-block group equal to it in everything but the block (same
    budget, same data, same training). A group with none gets no Δ and a note saying why."""
    baselines = [g for g in study.groups if g.is_baseline]
    if not baselines:
        if len(study.groups) > 1:
            study.notes.append("no group without a block (block: none): no baseline, so no Δ column")
        return
    for group in study.groups:
        if group.is_baseline:
            continue
        matches = [b for b in baselines if b.setting == group.setting]
        if len(matches) == 1:
            study.baselines[id(group)] = matches[0]
        elif matches:
            study.notes.append(f"no Δ for {group.label}: {len(matches)} no-block groups share its settings "
                               f"({', '.join(b.label for b in matches)})")
        else:
            nearest = min(baselines, key=lambda b: len(differences(group.setting, b.setting)))
            study.notes.append(f"no Δ for {group.label}: no no-block group differs from it in the block alone "
                               f"(nearest, {nearest.label}, differs in {'; '.join(differences(group.setting, nearest.setting))})")
