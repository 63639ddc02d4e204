"""``python -m ctxlit.sweep``: sweep files validated by W&B's schema and our CLI, trials planned by
W&B's engine with the agent's command lines, and run locally: parallel, resumable, one W&B run
and one run folder per trial."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ctxlit import sweep as sweep_cli
from tests.conftest import TINY, offline_run_ids

ROOT = Path(__file__).parents[2]
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
DEFAULT = str(ROOT / "experiments" / "synthetic" / "default.yaml")
COMMAND = ["${env}", "${interpreter}", "-m", "ctxlit.fit", "--config", DEFAULT, "--config", "${args_json_file}"]


def tiny_constants() -> dict:
    """TINY as sweep constants, plus a 3-step budget."""
    constants = {}
    for flag in TINY:
        key, value = flag[2:].split("=", 1)
        if key == "model.init_args.backbone_options.width":
            continue  # an entry of a dict option: a command-line flag only, not a config-file key
        value = yaml.safe_load(value)
        # A list constant is written `values: [[...]]`: `value: [...]` is flagged as a likely typo.
        constants[key] = {"values": [value]} if isinstance(value, list) else {"value": value}
    constants["trainer.max_steps"] = {"value": 3}
    return constants


def write_sweep(path: Path, blocks: list, **extra) -> Path:
    sweep = {"name": "tiny", "method": "grid", "metric": {"name": "val/acc1", "goal": "maximize"},
             "parameters": {"model.init_args.block": {"values": blocks}, **tiny_constants()},
             "command": COMMAND, **extra}
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    problems, parsed = sweep_cli.validate(path)
    assert problems == [] and parsed == len(sweep_cli.enumerate_trials(sweep_cli.load_sweep(path)))
    header = path.read_text().splitlines()[0]
    assert header.startswith("# "), "a sweep file opens with the question it answers"


def test_gcnet_synthetic_plan_is_the_8_cells_and_the_baseline_per_seed():
    sweep = sweep_cli.load_sweep(ROOT / "sweeps" / "gcnet_ablation_synthetic.yaml")
    trials = sweep_cli.enumerate_trials(sweep)
    assert len(trials) == 45
    configs = {}
    for t in trials:
        block = t["model.init_args.block"]
        cell = "none" if block == "none" else tuple(block["init_args"][k] for k in ("pooling", "fusion", "layernorm"))
        configs.setdefault(cell, []).append(t["seed_everything"])
    assert set(configs) == {"none"} | {(p, f, ln) for p in ("att", "avg") for f in ("add", "mul") for ln in (True, False)}
    assert all(sorted(seeds) == [0, 1, 2, 3, 4] for seeds in configs.values())


def test_plan_prints_the_command_lines_the_runner_runs(tmp_path, capsys):
    path = ROOT / "sweeps" / "gcnet_ablation_synthetic.yaml"
    assert sweep_cli.main(["plan", str(path), "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("45 trials")
    sweep = sweep_cli.load_sweep(path)
    key = sweep_cli.trial_key(sweep, sweep_cli.enumerate_trials(sweep)[0])
    assert (f"/usr/bin/env {sys.executable} -m ctxlit.fit --config experiments/synthetic/default.yaml --config "
            f"{tmp_path}/gcnet-ablation-synthetic/trial-000-{key}/sweep-args.json") in out


def test_validate_prints_the_exact_command_each_trial_runs(tmp_path, capsys):
    """A sweep's command runs any program (as ``wandb agent`` does): validate shows each one."""
    path = write_sweep(tmp_path / "s.yaml", ["none", "se"])
    assert sweep_cli.main(["validate", str(path), "--root", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: ok (2 trials parsed); each trial runs:"
    sweep = sweep_cli.load_sweep(path)
    for line, params in zip(lines[1:], sweep_cli.enumerate_trials(sweep)):
        folder = tmp_path / "runs" / "tiny" / f"trial-{lines.index(line) - 1:03d}-{sweep_cli.trial_key(sweep, params)}"
        assert line == f"  {folder.name}: /usr/bin/env {sys.executable} -m ctxlit.fit --config {DEFAULT} --config " \
                       f"{folder}/sweep-args.json"
    assert len(lines) == 3


def test_agent_command_is_wandbs_rendering():
    sweep = {"command": ["${env}", "${interpreter}", "${program}", "${args}"], "program": "train.py"}
    assert sweep_cli.agent_command(sweep, {"a.b": 1, "c": None}, "x.json") == [
        "/usr/bin/env", "python", "train.py", "--a.b=1", "--c=None"]


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(method="grod"), "'grod' is not one of"),
    (lambda s: s.update(paramters=s.pop("parameters")), "'paramters' was unexpected"),
    (lambda s: s["parameters"].update({"model.init_args.blok": {"value": "gc"}}), "blok"),
    (lambda s: s["parameters"].update({"trainer.max_epoch": {"value": 3}}), "max_epoch"),
    (lambda s: s["parameters"].update({"model.init_args.lr": {"value": [0.1, 0.2]}}), "write `values:`"),
    (lambda s: s["parameters"].update({"model.init_args.block": {"values": ["bogus"]}}), "bogus"),
    (lambda s: s.update(command=["${env}", "${interpreter}", "-m", "ctxlit.fit", "${args}"]), "${args_json_file}"),
])
def test_broken_sweeps_are_rejected_naming_the_problem(edit, message, tmp_path, capsys):
    sweep = yaml.safe_load(write_sweep(tmp_path / "s.yaml", ["none"]).read_text())
    edit(sweep)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert sweep_cli.main(["validate", str(tmp_path / "s.yaml")]) == 1
    out = capsys.readouterr().out
    assert "problem" in out and message in out, out


def test_missing_sweep_file_is_one_error(tmp_path, capsys):
    assert sweep_cli.main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: sweep file not found: {tmp_path / 'nope.yaml'}"


def runner_env(offline_env) -> dict:
    return {k: v for k, v in offline_env.items() if k != "WANDB_SERVICE"}


def trial_records(sweep_dir: Path) -> dict[str, dict]:
    """``trial.json`` of each trial folder, by folder name, in folder order (trial-NNN-<key>)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("trial-*/trial.json"))}


def wandb_run_ids(trial_dir: Path) -> set[str]:
    """The W&B run ids of a trial's offline run folders (``offline-run-<time>-<id>``): a resumed
    attempt adds a folder to the same run."""
    return set(offline_run_ids(trial_dir / "wandb"))


@pytest.mark.slow
def test_run_in_parallel_stop_and_resume(tmp_path, offline_env):
    """Three trials, two at a time; SIGTERM after the first finishes; the re-run completes the
    rest without repeating it. A bad block value fails alone, with its error line."""
    path = write_sweep(tmp_path / "tiny.yaml", ["none", "se", {"class_path": "ctxlit.blocks.GlobalContext",
                                                               "init_args": {"fusion": "bogus"}}])
    argv = [sys.executable, "-m", "ctxlit.sweep", "run", str(path), "--parallel", "2"]
    env = runner_env(offline_env)
    sweep_dir = tmp_path / "runs" / "sweeps" / "tiny"
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if any(r["status"] in ("finished", "failed") for r in trial_records(sweep_dir).values()):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    first = trial_records(sweep_dir)
    done_first = {name for name, r in first.items() if r["status"] == "finished"}
    assert all(r["status"] in ("finished", "failed", "interrupted") for r in first.values()), first
    first_ids = {name: json.loads((sweep_dir / name / "summary.json").read_text())["wandb"]["id"] for name in done_first}

    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 1, result.stderr[-2000:]  # one trial fails by design
    records = trial_records(sweep_dir)
    names = list(records)
    assert [n[:9] for n in names] == ["trial-000", "trial-001", "trial-002"]
    assert [records[n]["status"] for n in names] == ["finished", "finished", "failed"]
    assert "fusion" in records[names[2]]["error"] and "bogus" in records[names[2]]["error"]
    for name in names[:2]:
        trial = sweep_dir / name
        assert {"metrics.csv", "config.yaml", "summary.json", "checkpoints"} <= {p.name for p in trial.iterdir()}
        summary = json.loads((trial / "summary.json").read_text())
        assert wandb_run_ids(trial) == {summary["wandb"]["id"]}  # one W&B run, resumed if it was stopped
        assert summary["wandb"]["group"] == "tiny"
        assert records[name]["metric"] == pytest.approx(summary["metrics"]["val/acc1"])
        assert (trial / "metrics.csv").read_text().count("\n") > 1
    for name in done_first:  # finished before the stop: not run again
        assert json.loads((sweep_dir / name / "summary.json").read_text())["wandb"]["id"] == first_ids[name]
    table = (sweep_dir / "trials.md").read_text()
    assert "| trial | model.init_args.block | status | val/acc1 | seconds | note |" in table
    assert "SqueezeExcite" not in table and "| se |" in table and f"{names[2]} failed:" in table
    assert (sweep_dir / "trials.csv").read_text().count("\n") == 4


@pytest.mark.slow
def test_a_ddp_trial_under_the_agents_environment_makes_one_wandb_run(tmp_path, offline_env):
    """2-process CPU DDP with WANDB_SWEEP_ID/WANDB_RUN_ID set as the agent sets them, offline,
    by the agent that sweeps/slurm_agent.sbatch starts on the second node of an allocation: its
    SLURM variables say task 1 of 2, and the job name ``interactive`` leaves the trial's
    node-local DDP to Lightning's own launcher (rank 0 is this node's first process)."""
    params = {k: v["values"][0] if "values" in v else v["value"] for k, v in tiny_constants().items()}
    params.update({"model.init_args.block": "se", "trainer.accelerator": "cpu", "trainer.devices": 2,
                   "trainer.strategy": "ddp", "model.init_args.lr": 0.05})
    args_file = tmp_path / "config-abc123.json"
    args_file.write_text(json.dumps(params))
    from wandb.sdk.lib import config_util

    param_path = tmp_path / "config-abc123.yaml"
    config_util.save_config_file_from_dict(str(param_path), {k: {"value": v} for k, v in params.items()})
    env = runner_env(offline_env)
    env.update(WANDB_MODE="offline", WANDB_SWEEP_ID="sw33p", WANDB_RUN_ID="abc123",
               WANDB_SWEEP_PARAM_PATH=str(param_path), CTXLIT_RUN_DIR=str(tmp_path / "trial"),
               SLURM_JOB_ID="77", SLURM_JOB_NAME="interactive", SLURM_NNODES="2", SLURM_NTASKS="2",
               SLURM_NTASKS_PER_NODE="1", SLURM_PROCID="1", SLURM_NODEID="1", SLURM_LOCALID="0")
    command = sweep_cli.agent_command({"command": COMMAND}, params, str(args_file))
    command[1] = sys.executable
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "trial" / "wandb").glob("*run-*"))
    assert [r.name.endswith("abc123") for r in runs] == [True], runs
    # The run's config holds the trial's parameters (from WANDB_SWEEP_PARAM_PATH) under their dotted keys.
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"model.init_args.lr", b"trainer.strategy"):
        assert key in data, key
    assert json.loads((tmp_path / "trial" / "summary.json").read_text())["wandb"]["id"] == "abc123"
