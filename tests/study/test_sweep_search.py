"""Random, Bayesian and hyperband sweeps: the next trial and the early stops come from W&B's own
engine, given what the trials so far logged, as the W&B server would compute them."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from lightning_fabric.loggers import CSVLogger

from ctxlit import sweep as sweep_cli
from ctxlit.runs import Status
from tests.study.test_sweep_runner import COMMAND, runner_env, tiny_constants, trial_records, write_sweep

LR = {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0}


def search_sweep(path: Path, method: str, **extra) -> Path:
    sweep = {"name": "search", "method": method, "metric": {"name": "val/acc1", "goal": "maximize"},
             "parameters": {"model.init_args.lr": LR, **tiny_constants()}, "command": COMMAND, **extra}
    path.write_text(yaml.safe_dump(sweep))
    return path


def log_history(trial_dir: Path, metric: str, values: list[float]) -> None:
    """A metrics.csv as Lightning's CSV logger writes it: a train row between validations."""
    logger = CSVLogger(str(trial_dir), name="", version="")
    for i, value in enumerate(values):
        logger.log_metrics({"train/loss": 1.0 / (i + 1)}, step=2 * i)
        logger.log_metrics({metric: value, "epoch": i}, step=2 * i + 1)
    logger.save()


def test_random_plan_draws_from_the_distribution(tmp_path, capsys):
    path = search_sweep(tmp_path / "s.yaml", "random")
    assert sweep_cli.main(["plan", str(path), "--count", "4"]) == 0
    assert capsys.readouterr().out.strip().endswith("4 trials")
    lrs = [t["model.init_args.lr"] for t in sweep_cli.enumerate_trials(sweep_cli.load_sweep(path), 4)]
    assert len(set(lrs)) == 4 and all(0.01 <= lr <= 1.0 for lr in lrs)


def test_random_sweep_without_a_count_is_one_error(tmp_path, capsys):
    path = search_sweep(tmp_path / "s.yaml", "random")
    assert sweep_cli.main(["run", str(path), "--root", str(tmp_path / "runs")]) == 2
    assert "has no end: give --count N (or run_cap: in the file)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bayes_next_trial_is_the_engines_given_the_finished_metrics(tmp_path):
    path = search_sweep(tmp_path / "s.yaml", "bayes")
    runner = sweep_cli.Runner(path, root=tmp_path / "runs", count=6, quiet=True)
    # the engine proposes at random below 5 results; here accuracy grows with the learning rate
    done = [(0.02, 0.1), (0.05, 0.15), (0.1, 0.2), (0.2, 0.5), (0.5, 0.9)]
    for i, (lr, acc) in enumerate(done):
        params = {**sweep_cli.enumerate_trials(runner.sweep, 1)[0], "model.init_args.lr": lr}
        runner.trials.append(sweep_cli.Trial(index=i, params=params, key=runner.key(params),
                                             dir=runner.dir / f"trial-{i:03d}", status=Status.FINISHED, metric=acc))
    sweeps = sweep_cli.engine()
    by_hand = [sweeps.SweepRun(name=f"r{i}", state=sweeps.RunState.finished,
                               config={k: {"value": v} for k, v in t.params.items()},
                               summary_metrics={"val/acc1": t.metric}) for i, t in enumerate(runner.trials)]
    np.random.seed(0)
    expected = sweeps.next_run(runner.sweep, by_hand).config["model.init_args.lr"]["value"]
    np.random.seed(0)
    proposal = runner._next_proposal()
    assert proposal.index == 5 and proposal.dir.name == f"trial-005-{runner.key(proposal.params)}"
    assert proposal.params["model.init_args.lr"] == pytest.approx(expected)
    assert expected > 0.5  # it looks where the accuracy was highest
    np.random.seed(0)  # the metrics matter: reversed results send it the other way
    for run in by_hand:
        run.summary_metrics = {"val/acc1": 1.0 - run.summary_metrics["val/acc1"]}
    assert sweeps.next_run(runner.sweep, by_hand).config["model.init_args.lr"]["value"] < 0.05


HYPERBAND = {"type": "hyperband", "min_iter": 1, "eta": 2}


def test_hyperband_stops_the_running_trials_the_engine_names(tmp_path):
    """Bands at 1, 2, 4 validations; a running trial worse than the band's threshold stops."""
    path = write_sweep(tmp_path / "s.yaml", ["none", "se", "gc", "nl"], early_terminate=HYPERBAND)
    runner = sweep_cli.Runner(path, root=tmp_path / "runs", quiet=True)
    runner.plan()
    histories = {0: (Status.FINISHED, [0.5, 0.6, 0.7]), 1: (Status.FINISHED, [0.6, 0.7, 0.8]),
                 2: (Status.RUNNING, [0.1]), 3: (Status.RUNNING, [0.9, 0.95])}
    for i, (status, values) in histories.items():
        runner.trials[i].status = status
        log_history(runner.trials[i].dir, "val/acc1", values)
    assert sweep_cli.metric_history(runner.trials[0].dir, "val/acc1") == [
        {"val/acc1": 0.5}, {"val/acc1": 0.6}, {"val/acc1": 0.7}]
    # band 1: -0.9, -0.6, -0.5, -0.1 (maximize is negated): threshold -0.5, so 0.1 stops
    assert [t.dir.name[:9] for t in runner.runs_to_stop()] == ["trial-002"]


def test_a_stopped_trial_is_done_on_resume(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", ["none", "se"], early_terminate=HYPERBAND)
    runner = sweep_cli.Runner(path, root=tmp_path / "runs", quiet=True)
    first = runner.plan()
    first[0].status, first[1].status = Status.STOPPED, Status.INTERRUPTED
    for trial in first:
        trial.save()
    again = sweep_cli.Runner(path, root=tmp_path / "runs", quiet=True).plan()
    assert [t.status for t in again] == [Status.STOPPED, Status.INTERRUPTED]
    assert [t.dir for t in again] == [t.dir for t in first]


EPOCHS = 1000


@pytest.mark.slow
def test_hyperband_stops_a_real_trial_worse_than_the_finished_ones(tmp_path, offline_env):
    """Two finished trials reached val/loss 0 at every one of their 1000 validations; the one
    trial that trains here cannot, so hyperband stops it at the runner's first check, long
    before its 1000 epochs.

    The finished histories are as long as the trial's budget: the engine judges a running trial
    at the largest band its history has reached, with a threshold from the runs that reached it
    too. With 10-entry finished histories, a trial that ran 16 epochs before the runner's first
    check (a fast machine does, in the 5 s between checks) was judged against itself alone and
    never stopped. At a low lr: at 0.2 this tiny net's val/loss grew to NaN, which the engine
    filters out, so that history was never judged either."""
    path = write_sweep(tmp_path / "hb.yaml", ["none", "se", "gc"], early_terminate=HYPERBAND,
                       metric={"name": "val/loss", "goal": "minimize"})
    sweep = yaml.safe_load(path.read_text())
    sweep["parameters"].update({"trainer.max_steps": {"value": -1}, "trainer.max_epochs": {"value": EPOCHS},
                                "model.init_args.lr": {"value": 0.02}})
    path.write_text(yaml.safe_dump(sweep))
    runner = sweep_cli.Runner(path, root=tmp_path / "runs" / "sweeps", quiet=True)
    for trial in runner.plan()[:2]:  # finished earlier, perfectly
        trial.status, trial.metric, trial.seconds = Status.FINISHED, 0.0, 1.0
        trial.save()
        log_history(trial.dir, "val/loss", [0.0] * EPOCHS)
    result = subprocess.run([sys.executable, "-m", "ctxlit.sweep", "run", str(path)], cwd=tmp_path,
                            env=runner_env(offline_env), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    records = trial_records(tmp_path / "runs" / "sweeps" / "tiny")
    assert [r["status"] for r in records.values()] == ["finished", "finished", "stopped"]
    validations = sweep_cli.metric_history(tmp_path / "runs" / "sweeps" / "tiny" / list(records)[2], "val/loss")
    assert all(math.isfinite(v["val/loss"]) for v in validations)
    assert 1 <= len(validations) < EPOCHS and list(records.values())[2]["metric"] == pytest.approx(validations[-1]["val/loss"])
    table = (tmp_path / "runs" / "sweeps" / "tiny" / "trials.md").read_text()
    assert "| stopped |" in table
