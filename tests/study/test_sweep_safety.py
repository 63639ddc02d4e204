"""A sweep never loses a trial: trials are known by their parameters (editing the file skips
what is done and deletes nothing), one runner per sweep folder, trials end with their runner,
an interrupted trial resumes from its last.ckpt and its W&B run, and bad options are one error
before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml

from ctxlit import runs
from ctxlit import sweep as sweep_cli
from ctxlit.runs import Status
from ctxlit.sweep import runner as runner_module
from tests.study.test_sweep_runner import ROOT, runner_env, trial_records, wandb_run_ids, write_sweep

GC = {"class_path": "ctxlit.blocks.GlobalContext", "init_args": {"fusion": "mul"}}


class SlowSteps(pl.Callback):
    """Sleep after each training step: a trial that lasts long enough to be caught mid-run."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


def slow_sweep(path: Path, blocks: list, steps: int, seconds: float = 0.3) -> Path:
    """A tiny sweep whose trials train ``steps`` steps of at least ``seconds`` each, logging
    every step (4 steps an epoch: last.ckpt at every epoch end)."""
    write_sweep(path, blocks)
    sweep = yaml.safe_load(path.read_text())
    sweep["parameters"].update({
        "trainer.max_steps": {"value": steps}, "trainer.log_every_n_steps": {"value": 1},
        "trainer.callbacks": {"values": [[{"class_path": "tests.study.test_sweep_safety.SlowSteps", "init_args": {"seconds": seconds}}]]},
    })
    path.write_text(yaml.safe_dump(sweep))
    return path


def env_for_trials(offline_env) -> dict:
    """The runner's environment, with this repository importable by the trials (SlowSteps)."""
    env = runner_env(offline_env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_sweep(path: Path, cwd: Path, env: dict, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxlit.sweep", "run", str(path), *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def fingerprint(trial_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a trial (W&B's included) by path: modification time and content."""
    return {str(p.relative_to(trial_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(trial_dir.rglob("*")) if p.is_file()}


def by_block(sweep_dir: Path) -> dict[str, str]:
    """Trial folder by block (``none``, ``se``, ``GlobalContext``)."""
    found = {}
    for name, record in trial_records(sweep_dir).items():
        block = record["params"]["model.init_args.block"]
        found[block["class_path"].rsplit(".", 1)[1] if isinstance(block, dict) else block] = name
    return found


def session_members(sid: int) -> list[int]:
    """PIDs of the live processes of session ``sid`` (a trial's process and all it started)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- identity: fast, on records the runner itself writes ---------------------------------------------


def finish(trial: sweep_cli.Trial) -> None:
    """A trial as the runner leaves a finished one."""
    trial.dir.mkdir(parents=True, exist_ok=True)
    (trial.dir / runs.CONFIG).write_text("seed_everything: 0\n")
    runs.write_summary(trial.dir, {"status": "finished", "metrics": {"val/acc1": 0.5}})
    trial.status = Status.FINISHED
    trial.save()


def test_a_trial_is_found_by_its_parameters_wherever_it_sits_in_the_file(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", ["none", GC])
    first = sweep_cli.Runner(path, root=tmp_path, quiet=True).plan()
    for trial in first:
        finish(trial)
    write_sweep(path, ["none", "se", GC])  # a value inserted in the middle
    runner = sweep_cli.Runner(path, root=tmp_path, quiet=True)
    again = runner.plan()
    assert [t.status for t in again] == [Status.FINISHED, Status.PENDING, Status.FINISHED]
    assert runner.to_run() == [again[1]]
    assert again[0].dir == first[0].dir and again[2].dir == first[1].dir
    assert again[1].dir.name.startswith("trial-002-") and again[1].dir not in {t.dir for t in first}
    write_sweep(path, [GC])  # reordered, one removed: kept, listed as not in the file
    runner = sweep_cli.Runner(path, root=tmp_path, quiet=True)
    assert [(t.dir, t.status) for t in runner.plan()] == [(first[1].dir, Status.FINISHED)]
    kept = [t for t in runner.trials if not t.in_sweep]
    assert [t.dir for t in kept] == [first[0].dir] and kept[0].note == "not in the sweep file any more"
    runner.write_table()
    assert f"| {first[0].dir.name} | none | finished | 0.5000 |  | not in the sweep file any more |" in \
        (runner.dir / "trials.md").read_text()


def test_a_changed_nested_value_or_constant_is_another_trial(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", [GC])
    sweep = sweep_cli.load_sweep(path)
    (params,) = sweep_cli.enumerate_trials(sweep)
    nested = json.loads(json.dumps(params))
    nested["model.init_args.block"]["init_args"]["fusion"] = "add"
    budget = {**params, "trainer.max_steps": 4}
    reordered = dict(reversed(list(params.items())))
    key = sweep_cli.trial_key(sweep, params)
    assert sweep_cli.trial_key(sweep, reordered) == key
    assert len({key, sweep_cli.trial_key(sweep, nested), sweep_cli.trial_key(sweep, budget),
                sweep_cli.trial_key({**sweep, "command": sweep["command"][:-2]}, params)}) == 4


def test_a_failed_trial_runs_again_and_its_attempt_is_kept(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", ["none"])
    runner = sweep_cli.Runner(path, root=tmp_path, quiet=True)
    (trial,) = runner.plan()
    trial.dir.mkdir(parents=True)
    (trial.dir / "output.log").write_text("error: boom\n")
    (trial.dir / runs.CHECKPOINTS).mkdir()
    (trial.dir / runs.CHECKPOINTS / runs.LAST_CHECKPOINT).write_bytes(b"weights")
    trial.status, trial.wandb_id = Status.FAILED, "run1"
    trial.save()
    runner = sweep_cli.Runner(path, root=tmp_path, quiet=True)
    (again,) = runner.plan()
    assert again.status is Status.FAILED and again.dir == trial.dir and runner.to_run() == [again]
    runner.prepare(again)
    assert again.resume_from is None and again.attempt == 2 and again.wandb_id not in (None, "run1")
    assert (trial.dir / "attempt-1" / "output.log").read_text() == "error: boom\n"
    assert (trial.dir / "attempt-1" / runs.CHECKPOINTS / runs.LAST_CHECKPOINT).read_bytes() == b"weights"
    assert sorted(p.name for p in trial.dir.iterdir()) == ["attempt-1", "trial.json"]


def test_an_interrupted_trial_resumes_from_its_last_checkpoint_in_its_wandb_run(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", ["none"])
    runner = sweep_cli.Runner(path, root=tmp_path, quiet=True)
    (trial,) = runner.plan()
    (trial.dir / runs.CHECKPOINTS).mkdir(parents=True)
    (trial.dir / runs.CHECKPOINTS / runs.LAST_CHECKPOINT).write_bytes(b"weights")
    (trial.dir / runs.CONFIG).write_text("seed_everything: 0\n")
    trial.status, trial.wandb_id = Status.INTERRUPTED, "run1"
    trial.save()
    (again,) = runner.plan()
    assert runner.to_run() == [again]
    runner.prepare(again)
    assert again.wandb_id == "run1" and again.attempt == 2
    assert sweep_cli.trial_argv(runner.sweep, again)[-2:] == ["--ckpt_path", str(trial.dir / "checkpoints/last.ckpt")]
    env = sweep_cli.trial_env("tiny", again, None, None)
    assert (env["WANDB_RUN_ID"], env["WANDB_RESUME"], env["CTXLIT_RUN_DIR"]) == ("run1", "allow", str(trial.dir))


def test_a_trial_whose_process_lives_is_never_started_again(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", ["none"])
    runner = sweep_cli.Runner(path, root=tmp_path, quiet=True)
    (trial,) = runner.plan()
    alive = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        trial.dir.mkdir(parents=True)
        (trial.dir / runs.CONFIG).write_text("seed_everything: 0\n")
        trial.status, trial.process = Status.RUNNING, runs.process_token(alive.pid)
        trial.save()
        assert sweep_cli.Runner(path, root=tmp_path, quiet=True).run()[0].status is Status.RUNNING
        assert sorted(p.name for p in trial.dir.iterdir()) == ["config.yaml", "trial.json"]  # untouched
        assert "is still running: not started again" in (runner.dir / "trials.md").read_text()
    finally:
        alive.kill()
        alive.wait()


def test_a_trial_that_finished_after_its_runner_died_is_recorded_not_run_again(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", ["none"])
    (trial,) = sweep_cli.Runner(path, root=tmp_path, quiet=True).plan()
    finish(trial)
    gone = subprocess.Popen(["true"])
    trial.status, trial.process = Status.RUNNING, runs.process_token(gone.pid)
    gone.wait()
    trial.save()  # the runner's record says running; the trial's own summary says finished
    (after,) = sweep_cli.Runner(path, root=tmp_path, quiet=True).run()
    assert after.status is Status.FINISHED and after.attempt == 1 and after.metric == 0.5
    record = json.loads((trial.dir / runs.TRIAL).read_text())
    assert (record["status"], record["metric"]) == ("finished", 0.5)
    assert sorted(p.name for p in trial.dir.iterdir()) == ["config.yaml", "summary.json", "trial.json"]


# -- one runner, no orphans ------------------------------------------------------------------------


def test_one_runner_per_sweep_folder_and_a_dead_holders_lock_is_taken(tmp_path):
    with sweep_cli.SweepLock(tmp_path):
        with pytest.raises(sweep_cli.SweepError, match=rf"another runner \(PID {os.getpid()}\) is running this sweep"):
            sweep_cli.SweepLock(tmp_path).__enter__()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ctxlit.sweep import SweepLock; "
                               f"lock = SweepLock(__import__('pathlib').Path({str(tmp_path)!r})).__enter__(); "
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(sweep_cli.SweepError, match=f"PID {holder.pid}"):
        sweep_cli.SweepLock(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with sweep_cli.SweepLock(tmp_path):  # the dead holder's lock is taken over
        assert (tmp_path / "runner.lock").read_text() == f"{os.getpid()}\n"


def test_a_trial_process_dies_with_its_runner_even_by_sigkill(tmp_path):
    """The runner's own way of starting a trial (own process group, PR_SET_PDEATHSIG)."""
    script = ("import os, subprocess, sys; from ctxlit.sweep.runner import die_with_the_runner\n"
              "p = subprocess.Popen(['sleep', '60'], start_new_session=True, "
              "preexec_fn=die_with_the_runner(os.getpid()))\n"
              "print(p.pid, flush=True); import time; time.sleep(60)")
    fake_runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(fake_runner.stdout.readline())
    fake_runner.kill()
    fake_runner.wait()
    wait_for(lambda: not session_members(child), 5, f"trial process {child} to end")


# -- bad options: one error, nothing written ------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "/tmp/elsewhere", "a/b", ".."])
def test_a_sweep_name_must_be_a_plain_name(tmp_path, capsys, name):
    path = write_sweep(tmp_path / "s.yaml", ["none"], name=name)
    assert sweep_cli.main(["run", str(path), "--root", str(tmp_path / "root" / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {path}: name: {name!r} is not a plain name: no '/', '\\', '..' or leading/trailing "
                   f"spaces (it names the sweep's folder under --root)")
    assert not (tmp_path / "root").exists()
    assert sweep_cli.main(["validate", str(path)]) == 1
    assert "is not a plain name" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--count", "0"], "error: --count must be at least 1 (got 0)"),
    (["--count", "-2"], "error: --count must be at least 1 (got -2)"),
    (["--devices-per-trial", "2"], "error: --devices-per-trial 2 but {path} sets trainer.devices: 1; give "
                                   "--devices-per-trial 1 (each trial sees exactly the GPUs it uses)"),
])
def test_bad_run_options_are_one_error(tmp_path, capsys, argv, message):
    path = write_sweep(tmp_path / "s.yaml", ["none"])
    sweep = yaml.safe_load(path.read_text())
    sweep["parameters"]["trainer.devices"] = {"value": 1}
    path.write_text(yaml.safe_dump(sweep))
    assert sweep_cli.main(["run", str(path), "--root", str(tmp_path / "runs"), *argv]) == 2
    assert capsys.readouterr().err.strip() == message.format(path=path)
    assert not (tmp_path / "runs").exists()


def test_a_root_that_cannot_be_written_or_is_full_is_one_error(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path / "s.yaml", ["none"])
    (tmp_path / "file").write_text("x")
    assert sweep_cli.main(["run", str(path), "--root", str(tmp_path / "file" / "runs")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --root: cannot write the sweep folder "
                                               f"{tmp_path / 'file' / 'runs' / 'tiny'} (Not a directory); "
                                               f"give a writable --root")
    if Path("/proc/sys").is_dir():  # a read-only filesystem (even for root)
        assert sweep_cli.main(["run", str(path), "--root", "/proc/sys/ctxlit"]) == 2
        assert capsys.readouterr().err.startswith("error: --root: cannot write the sweep folder /proc/sys/ctxlit/tiny (")
    monkeypatch.setattr(runner_module, "MIN_FREE_BYTES", 2**62)  # more than any disk: this one is "full"
    assert sweep_cli.main(["run", str(path), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --root: only ") and "MiB free under" in err and "free space or give another --root" in err
    assert list((tmp_path / "runs" / "tiny").iterdir()) == []  # no trial started


# -- real runs -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_editing_the_sweep_file_never_touches_a_finished_trial(tmp_path, offline_env):
    """2 values run; one inserted in the middle: only it runs, the two finished trials keep every
    file byte for byte (checkpoints, W&B offline run); reordered and one removed: nothing runs,
    nothing is deleted, the removed one is listed as not in the file."""
    env, sweep_dir = runner_env(offline_env), tmp_path / "runs" / "sweeps" / "tiny"
    path = write_sweep(tmp_path / "tiny.yaml", ["none", GC])
    result = run_sweep(path, tmp_path, env, "--parallel", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    first = by_block(sweep_dir)
    before = {block: fingerprint(sweep_dir / name) for block, name in first.items()}
    assert all(any(f.startswith("checkpoints/") for f in files) and any(f.startswith("wandb/offline-run-") for f in files)
               for files in before.values())

    write_sweep(path, ["none", "se", GC])
    result = run_sweep(path, tmp_path, env)
    assert result.returncode == 0, result.stderr[-2000:]
    second = by_block(sweep_dir)
    assert {k: v for k, v in second.items() if k != "se"} == first
    assert second["se"].startswith("trial-002-")
    for block, name in first.items():
        assert fingerprint(sweep_dir / name) == before[block], block
    records = trial_records(sweep_dir)
    assert [r["status"] for r in records.values()] == ["finished"] * 3
    assert len(wandb_run_ids(sweep_dir / second["se"])) == 1

    write_sweep(path, [GC, "none"])
    before = {block: fingerprint(sweep_dir / name) for block, name in second.items()}
    result = run_sweep(path, tmp_path, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert by_block(sweep_dir) == second
    for block, name in second.items():
        assert fingerprint(sweep_dir / name) == before[block], block
    table = (sweep_dir / "trials.md").read_text()
    assert table.index(second["GlobalContext"]) < table.index(second["none"]) < table.index(second["se"])
    assert f"| {second['se']} | se | finished |" in table and table.count("not in the sweep file any more") == 1


@pytest.mark.slow
def test_a_second_runner_on_the_same_sweep_exits_naming_the_first(tmp_path, offline_env):
    env, sweep_dir = env_for_trials(offline_env), tmp_path / "runs" / "sweeps" / "tiny"
    path = slow_sweep(tmp_path / "tiny.yaml", ["none"], steps=12, seconds=0.3)
    argv = [sys.executable, "-m", "ctxlit.sweep", "run", str(path)]
    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        name = wait_for(lambda: next(iter(trial_records(sweep_dir)), None), 120, "the first runner to start a trial")
        # the fit says it is running, and which process it is, from its start
        running = wait_for(lambda: runs.read_run(sweep_dir / name).summary, 120, "the trial's summary.json")
        assert running["status"] == "running" and running["format"] == runs.FORMAT_VERSION
        assert running["process"] == json.loads((sweep_dir / name / runs.TRIAL).read_text())["process"]
        assert runs.read_run(sweep_dir / name).status is Status.RUNNING
        started = time.monotonic()
        second = run_sweep(path, tmp_path, env, timeout=120)
        assert time.monotonic() - started < 60
        assert second.returncode == 2
        assert second.stderr.strip() == (f"error: another runner (PID {first.pid}) is running this sweep in "
                                         f"{Path('runs/sweeps/tiny')}; wait for it to end or stop it (kill {first.pid})")
        out, err = first.communicate(timeout=400)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    for name, record in trial_records(sweep_dir).items():
        summary = json.loads((sweep_dir / name / runs.SUMMARY).read_text())
        assert record["status"] == summary["status"] == "finished" and record["attempt"] == 1
        assert wandb_run_ids(sweep_dir / name) == {summary["wandb"]["id"]}
        assert len(list((sweep_dir / name / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_sigkill_of_the_runner_ends_its_trial_and_the_next_run_resumes_it(tmp_path, offline_env):
    """The runner killed mid-trial: within seconds none of the trial's processes lives. Run
    again: the trial continues from its last.ckpt (its steps go on from where it stopped), in
    the same folder and W&B run, and finishes."""
    env, sweep_dir = env_for_trials(offline_env), tmp_path / "runs" / "sweeps" / "tiny"
    steps = 16
    path = slow_sweep(tmp_path / "tiny.yaml", ["none"], steps=steps, seconds=0.4)
    runner = subprocess.Popen([sys.executable, "-m", "ctxlit.sweep", "run", str(path)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        name = wait_for(lambda: next(iter(trial_records(sweep_dir)), None), 120, "the trial to start")
        trial = sweep_dir / name
        wait_for(lambda: (trial / "checkpoints" / "last.ckpt").is_file() or runner.poll() is not None, 240,
                 "the trial's first last.ckpt")
        assert runner.poll() is None, (trial / "output.log").read_text()[-3000:]
    finally:
        runner.kill()
        runner.wait()
    pid = json.loads((trial / runs.TRIAL).read_text())["process"]["pid"]
    wait_for(lambda: not session_members(pid), 20, f"the trial's processes (session {pid}) to end")
    killed = runs.read_run(trial)
    assert killed.status is Status.INTERRUPTED, killed.summary
    stopped_at = killed.summary.get("steps")  # the SIGTERM the trial got saved its state here
    assert stopped_at is not None and 4 <= stopped_at < steps, killed.summary

    result = run_sweep(path, tmp_path, env)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((trial / runs.TRIAL).read_text())
    summary = json.loads((trial / runs.SUMMARY).read_text())
    assert record["status"] == summary["status"] == "finished" and record["attempt"] == 2
    assert record["command"][-2:] == ["--ckpt_path", str(Path("runs/sweeps/tiny") / name / "checkpoints/last.ckpt")]
    assert summary["steps"] == steps and summary["provenance"]["torch"] and summary["provenance"]["device"]
    # each step once: the killed attempt's up to its signal, then the resumed one's (not from 0 again)
    assert [int(r["step"]) for r in runs.read_run(trial).rows if r.get("train/loss")] == list(range(steps))
    assert (trial / "metrics-before-attempt-2.csv").is_file()
    assert "Restoring states from the checkpoint path" in (trial / "output.log").read_text()
    assert wandb_run_ids(trial) == {record["wandb_id"]} == {summary["wandb"]["id"]}
    assert [p.name for p in sweep_dir.iterdir() if p.name.startswith("trial-")] == [name]
