"""``--cost``: each group's network measured side by side on this machine, not read from logs.

One run of each group (its ``config.yaml``) goes to :func:`ctxlit.bench.models.measure_networks`
(``python -m ctxlit.bench models``), which builds every network and times its training step
(forward + loss + backward + SGD step) and inference step in interleaved rounds, in one process,
on the CPU here. Each group then carries its ratios to its baseline group (the no-block group
that differs in the block alone; else the first group): training step, inference step, FLOPs and
the activations kept for backward; each answer carries the ratio of its tested arm to its
reference arm (the mean training step of the tested groups over that of the reference groups).
"""

from __future__ import annotations

import statistics

from ctxlit.report.runs import ReportError
from ctxlit.report.study import Study

BATCH = 8
ROUNDS = 7
WARMUP = 2


def _bench():
    try:
        from ctxlit.bench import models
    except ImportError as err:
        raise ReportError(f"--cost needs ctxlit.bench.models (python -m ctxlit.bench models), which this "
                          f"install lacks ({err})") from None
    return models


def measure_groups(study: Study, batch: int = BATCH, size: tuple[int, int] | None = None, rounds: int = ROUNDS) -> None:
    """Fill ``study.costs`` (per group) and each answer's ``cost_ratio``. ``size`` None: each
    config's own input size."""
    if not study.groups:
        return
    models = _bench()
    from ctxlit.errors import CtxlitError

    baseline = study.baseline or study.groups[0]
    order = [baseline, *[g for g in study.groups if g is not baseline]]
    settings = models.Settings(batch=batch, size=size, rounds=rounds, warmup=WARMUP, device="cpu")
    try:
        rows = models.measure_networks([str(g.runs[0].dir) for g in order], settings, baseline=1)
    except CtxlitError as err:
        raise ReportError(f"--cost: {err}") from None
    rows = [r for r in rows if r.get("variant", "eager") == "eager"]
    if len(rows) != len(order):
        raise ReportError(f"--cost: {len(order)} networks asked for, {len(rows)} measured")
    by_group = dict(zip(map(id, order), rows))
    shapes = sorted({"x".join(map(str, r["input_shape"])) for r in rows})
    how = (f"input {', '.join(shapes)} (batch x channels x height x width"
           f"{', each config’s own image size' if size is None else ', --cost-size'}), "
           f"{rounds} interleaved rounds after {WARMUP} warm-up steps, CPU time of one process "
           f"(python -m ctxlit.bench models); ratios to the group's baseline. {_timing_noise(rows[0])}")
    for group in study.groups:
        row = by_group[id(group)]
        reference = by_group[id(study.baseline_of(group) or baseline)]
        study.costs[id(group)] = {
            "how": how, "input_shape": row["input_shape"], "train_ms": row["train_ms"]["median"],
            "inference_ms": row["infer_ms"]["median"], "params": row["params"], "gflops": row["gflops"],
            "train_ratio": row["train_ms"]["median"] / reference["train_ms"]["median"],
            "inference_ratio": row["infer_ms"]["median"] / reference["infer_ms"]["median"],
            "flop_ratio": row["gflops"] / reference["gflops"] if reference["gflops"] else None,
            "memory_ratio": (row["saved_bytes"] / reference["saved_bytes"]
                             if row.get("saved_bytes") and reference.get("saved_bytes") else None),
        }
    _answer_ratios(study)


def _timing_noise(row: dict) -> str:
    """The measurement's own noise floor: how much the baseline's training step moved between
    rounds (interquartile range over median), so a ratio within it is read as no difference."""
    train = row["train_ms"]
    spread = (train["q3"] - train["q1"]) / train["median"] if train.get("median") else None
    return "" if spread is None else (f"Timing noise: the baseline's training step moved by {spread:.0%} of its "
                                      f"median between rounds (interquartile range); ratios closer to 1 than "
                                      f"that are no measured difference.")


def _answer_ratios(study: Study) -> None:
    """Each answer's cost: the tested arm's mean training step over the reference arm's."""
    if study.answers is None:
        return
    by_label = {g.label: study.costs[id(g)]["train_ms"] for g in study.groups if id(g) in study.costs}
    cells = [g for g in study.groups if not g.is_baseline]
    for effect in study.answers.effects:
        if effect.kind == "vs baseline":
            reference = [by_label.get(effect.levels[0])]
            tested = ([by_label.get(effect.levels[1])] if effect.levels[1] in by_label
                      else [by_label.get(g.label) for g in cells])
        elif effect.kind == "main":
            from ctxlit.report.runs import cell

            tested = [by_label.get(g.label) for g in cells if cell(g.knobs, effect.knob) == effect.levels[1]]
            reference = [by_label.get(g.label) for g in cells if cell(g.knobs, effect.knob) == effect.levels[0]]
        else:
            continue
        tested, reference = [t for t in tested if t], [r for r in reference if r]
        if tested and reference:
            effect.cost_ratio = statistics.fmean(tested) / statistics.fmean(reference)
