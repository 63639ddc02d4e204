"""``python -m ctxlit.report`` on runs from real short fits: its numbers against the runs' own
metrics.csv, its grouping, its Δ, its bad-input errors."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from ctxlit.report.__main__ import main
from ctxlit.report.runs import find_runs
from ctxlit.report.study import build_studies

METRIC = "val/acc1"


def last_logged(run_dir: Path, metric: str = METRIC) -> float:
    with (run_dir / "metrics.csv").open() as f:
        values = [float(row[metric]) for row in csv.DictReader(f) if row.get(metric)]
    return values[-1]


def markdown_rows(text: str, first: str = "model.init_args.block") -> list[list[str]]:
    """The rows of the Markdown table whose first header cell is ``first`` (header, rule, body)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip("|").split(" | ")])
        elif current:
            tables.append(current)
            current = []
    return next(t for t in tables if t[0][0] == first)


def test_numbers_are_the_runs_own_and_runs_differing_in_seed_are_one_group(study_runs, capsys):
    assert main([str(study_runs / "study"), "--format", "md"]) == 0
    rows = markdown_rows(capsys.readouterr().out)
    header, body = rows[0], rows[2:]
    assert header[:2] == ["model.init_args.block", "n"]  # the one varying knob, as its dotted key
    by_block = {row[0]: dict(zip(header, row)) for row in body}
    assert set(by_block) == {"none", "GlobalContext"}
    finals = {name: [last_logged(study_runs / "study" / f"{name}-seed{s}") for s in (0, 1)] for name in ("none", "gc")}
    for name, row in (("none", by_block["none"]), ("gc", by_block["GlobalContext"])):
        mean, std = statistics.fmean(finals[name]), statistics.stdev(finals[name])
        assert row["n"] == "2"
        assert row[f"{METRIC} mean ± std"] == f"{mean:.4f} ± {std:.4f}"
    delta = statistics.fmean(finals["gc"]) - statistics.fmean(finals["none"])
    se = (statistics.variance(finals["gc"]) / 2 + statistics.variance(finals["none"]) / 2) ** 0.5
    assert by_block["none"]["Δ vs baseline ± s.e."] == "baseline"
    assert by_block["GlobalContext"]["Δ vs baseline ± s.e."] == f"{delta:+.4f} ± {se:.4f}"
    assert float(by_block["none"]["params (M)"]) < float(by_block["GlobalContext"]["params (M)"])
    speed = {name: statistics.fmean(json.loads((study_runs / "study" / f"{name}-seed{s}" / "summary.json").read_text())
                                    ["images_per_sec"] for s in (0, 1)) for name in ("none", "gc")}
    column = "images/s as trained (load-dependent)"  # the load it trained under, not the block's cost
    assert by_block["GlobalContext"][column] == f"{speed['gc']:.0f}" and "images/s × baseline" not in header


def test_groups_differ_in_everything_but_the_seed(study_runs):
    (study,) = build_studies(find_runs([str(study_runs / "study")]))
    assert len(study.groups) == 2
    for group in study.groups:
        assert sorted(group.seeds) == [0, 1]
        configs = [{k: v for k, v in r.knobs.items()} for r in group.runs]
        assert configs[0] == configs[1]  # the seed and the run's own paths aside
        assert group.runs[0].config["seed_everything"] != group.runs[1].config["seed_everything"]
    assert study.groups[0].knobs != study.groups[1].knobs
    assert study.knobs == ["model.init_args.block"]


def test_best_is_the_best_validation_of_any_seed(study_runs):
    (study,) = build_studies(find_runs([str(study_runs / "study") + "/*"]))  # a glob works too
    for group in study.groups:
        values = []
        for run in group.runs:
            with (run.dir / "metrics.csv").open() as f:
                values += [float(r[METRIC]) for r in csv.DictReader(f) if r.get(METRIC)]
        assert group.best(METRIC, "maximize") == max(values)


def test_tasks_are_never_mixed_and_a_run_without_metrics_is_marked_incomplete(study_runs, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(study_runs / "study" / "gc-seed0", broken, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    (broken / "metrics.csv").unlink()
    (broken / "summary.json").unlink()
    assert main([str(study_runs / "study"), str(study_runs / "seg"), str(broken), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "### ClassificationTask: val/acc1" in out and "### SegmentationTask: val/miou" in out
    classification, segmentation = out.split("### SegmentationTask")
    assert "val/miou" not in classification and "val/acc1" not in segmentation
    assert f"| {broken} | running | running (no summary.json yet: still running, or killed before it ended) |" \
        in classification


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "nowhere", "nowhere: no such folder"),
    (lambda tmp: (tmp / "f.txt").write_text("x") and tmp / "f.txt", "f.txt: not a folder (a run folder holds config.yaml, metrics.csv, summary.json)"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty",
     "empty: not a run folder (no config.yaml, summary.json or trial.json) and holds no runs"),
    (lambda tmp: tmp / "no-match-*", "no-match-*: matches nothing"),
])
def test_a_folder_that_is_not_a_run_is_one_error_and_nothing_is_written(make, message, tmp_path, capsys):
    target = make(tmp_path)
    out = tmp_path / "report.html"
    assert main([str(target), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.endswith(message) and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".report.html.*"))


def test_wandb_choices_without_wandb_are_one_error(study_runs, capsys):
    assert main([str(study_runs / "study"), "--group", "g"]) == 2
    assert "--sweep and --group choose runs on W&B" in capsys.readouterr().err


def test_html_is_one_file_with_every_picture_inline(study_runs, tmp_path):
    out = tmp_path / "r" / "report.html"
    assert main([str(study_runs / "study"), "-o", str(out)]) == 0
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    images = text.count("<img src=\"data:image/png;base64,")
    assert images == text.count("<img ") >= 5  # effects, bars, cost scatter, curves, attention
    assert "deepest context block on validation image 0" in text
    assert oct(out.stat().st_mode & 0o777) != "0o600"


def test_a_sweep_trial_that_never_started_is_listed_incomplete(study_runs, tmp_path, capsys):
    from ctxlit.sweep import Trial

    Trial(index=7, params={"model.init_args.block": "bogus"}, dir=tmp_path / "sweep" / "trial-007",
          status="failed", error="error: model.init_args.block: unknown block 'bogus'").save()
    assert main([str(study_runs / "study"), str(tmp_path / "sweep"), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert (f"| {tmp_path / 'sweep' / 'trial-007'} | failed | failed: error: model.init_args.block: "
            f"unknown block 'bogus' |") in out
    assert main([str(tmp_path / "sweep")]) == 2
    assert "no run here got as far as starting" in capsys.readouterr().err


def test_a_resume_option_does_not_split_a_group(study_runs, tmp_path):
    """Runs made before and after an option such as ``resume.allow_changed`` existed (or resumed
    with one) are still one group: it says how a run resumes, not what it studies."""
    import shutil

    import yaml

    for name in ("gc-seed0", "gc-seed1"):
        shutil.copytree(study_runs / "study" / name, tmp_path / name, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    config_path = tmp_path / "gc-seed1" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["resume"] = {"allow_changed": ["lr"]}
    config["ckpt_path"] = "elsewhere/last.ckpt"
    config["threads"] = 1  # how fast, not what: not a knob
    config_path.write_text(yaml.safe_dump(config))
    (study,) = build_studies(find_runs([str(tmp_path)]))
    assert len(study.groups) == 1 and sorted(study.groups[0].seeds) == [0, 1]
