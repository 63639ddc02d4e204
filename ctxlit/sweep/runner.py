"""Running a sweep's trials here: one process per trial with the agent's environment, slots
pinned to GPUs, resume from ``trial.json``, hyperband through W&B's engine, the trials table."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ctxlit.sweep.files import (
    AGENT_INTERPRETER, SWEEPS_ROOT, SweepError, _engine, _next_run, agent_command, enumerate_trials, load_sweep,
    schema_problems, sweep_name,
)
from ctxlit.utils.files import write_atomically


#: A trial that needs no re-run: it ran to its end, or hyperband stopped it early (W&B's
#: early_terminate) and its metric so far is its result.
DONE = ("finished", "stopped")
#: How often (seconds) running trials' metric histories are shown to hyperband.
EARLY_TERMINATE_EVERY = 5.0


@dataclass
class Trial:
    index: int
    params: dict
    dir: Path
    status: str = "pending"  # pending | running | finished | stopped | failed | interrupted
    metric: float | None = None
    seconds: float | None = None
    error: str | None = None
    command: list[str] = field(default_factory=list)

    @property
    def record_path(self) -> Path:
        return self.dir / "trial.json"

    def save(self) -> None:
        record = {k: getattr(self, k) for k in ("index", "params", "status", "metric", "seconds", "error", "command")}
        write_atomically(self.record_path, json.dumps(record, indent=2) + "\n")


def load_trial(path: Path) -> Trial | None:
    try:
        record = json.loads(path.read_text())
        return Trial(dir=path.parent, **record)
    except (OSError, ValueError, TypeError):
        return None


def trial_env(name: str, trial: Trial, devices: list[int] | None, threads: int | None) -> dict:
    """The agent's environment for one trial, offline unless the user chose a W&B mode."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "WANDB_RUN_ID", "PL_GLOBAL_SEED")}
    env.setdefault("WANDB_MODE", "offline")
    env["WANDB_RUN_GROUP"] = name
    env["WANDB_NAME"] = f"{name}/{trial.dir.name}"
    env["WANDB_SWEEP_PARAM_PATH"] = str(trial.dir / "sweep-params.yaml")
    env["CTXLIT_RUN_DIR"] = str(trial.dir)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def metric_of(trial_dir: Path, metric: str | None) -> float | None:
    """The trial's final metric (summary.json), else the last value it logged (metrics.csv)."""
    try:
        summary = json.loads((trial_dir / "summary.json").read_text())
        value = summary.get("metrics", {}).get(metric) if metric else None
    except (OSError, ValueError):
        value = None
    if value is None and metric:
        history = metric_history(trial_dir, metric)
        value = history[-1][metric] if history else None
    return float(value) if value is not None else None


def metric_history(trial_dir: Path, metric: str) -> list[dict]:
    """``[{metric: value}, ...]``, one per time the trial logged it (its validations), read from
    the CSV log that Lightning rewrites at every logging step: what W&B's history holds."""
    try:
        with (trial_dir / "metrics.csv").open(newline="") as f:
            values = [row.get(metric) for row in csv.DictReader(f)]
    except OSError:
        return []
    history = []
    for value in values:
        with contextlib.suppress(TypeError, ValueError):
            history.append({metric: float(value)})
    return history


class Runner:
    def __init__(self, path: str | Path, parallel: int = 1, devices_per_trial: int = 1, count: int | None = None,
                 root: Path = SWEEPS_ROOT, quiet: bool = False) -> None:
        self.path = Path(path)
        self.sweep = load_sweep(path)
        problems = schema_problems(self.sweep)
        if problems:
            raise SweepError(f"{path}: " + "; ".join(problems))
        if parallel < 1 or devices_per_trial < 1:
            raise SweepError("--parallel and --devices-per-trial must be at least 1")
        self.name = sweep_name(path, self.sweep)
        self.dir = Path(root) / self.name
        self.parallel, self.devices_per_trial = parallel, devices_per_trial
        self.count = count or self.sweep.get("run_cap")
        self.metric = (self.sweep.get("metric") or {}).get("name")
        self.quiet = quiet
        self.slots = self._slot_devices()
        self.running: dict[int, tuple[subprocess.Popen, Trial, float]] = {}
        self.trials: list[Trial] = []
        self._stopping = False
        self._early_stopped: set[str] = set()  # trial folder names hyperband stopped
        self._last_early_check = 0.0

    def _slot_devices(self) -> list[list[int] | None]:
        """GPU ids per slot (``None``: CPU). Needs parallel x devices-per-trial visible GPUs."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            import torch

            gpus = torch.cuda.device_count()
        except Exception:  # noqa: BLE001  (no CUDA runtime: CPU slots)
            gpus = 0
        if gpus == 0:
            return [None] * self.parallel
        need = self.parallel * self.devices_per_trial
        if need > gpus:
            raise SweepError(f"--parallel {self.parallel} x --devices-per-trial {self.devices_per_trial} = {need} GPUs, "
                             f"but {gpus} are visible")
        ids = [int(i) for i in visible.split(",")] if visible else list(range(gpus))
        k = self.devices_per_trial
        return [ids[i * k:(i + 1) * k] for i in range(self.parallel)]

    # -- the trial list ---------------------------------------------------------------------

    def _trial(self, index: int, params: dict) -> Trial:
        trial_dir = self.dir / f"trial-{index:03d}"
        old = load_trial(trial_dir / "trial.json")
        if old is not None and old.status in DONE and old.params == params:
            return old
        return Trial(index=index, params=params, dir=trial_dir)

    def _grid_trials(self) -> list[Trial]:
        return [self._trial(i, p) for i, p in enumerate(enumerate_trials(self.sweep, self.count))]

    def _next_proposal(self) -> Trial | None:
        """random/bayes: the engine's next proposal given every trial so far and its metric."""
        sweeps = _engine()
        states = {"finished": sweeps.RunState.finished, "stopped": sweeps.RunState.finished,
                  "running": sweeps.RunState.running, "failed": sweeps.RunState.failed,
                  "interrupted": sweeps.RunState.killed}
        history = [sweeps.SweepRun(name=t.dir.name, config={k: {"value": v} for k, v in t.params.items()},
                                   state=states.get(t.status, sweeps.RunState.pending),
                                   summary_metrics={self.metric: t.metric} if t.metric is not None else {})
                   for t in self.trials]
        run = _next_run(self.sweep, history)
        if run is None:
            return None
        return Trial(index=len(self.trials), params={k: v["value"] for k, v in run.config.items()},
                     dir=self.dir / f"trial-{len(self.trials):03d}")

    # -- one trial ---------------------------------------------------------------------------

    def _start(self, trial: Trial, slot: int) -> None:
        if trial.dir.exists():  # an interrupted or failed attempt: start afresh, keep nothing of it
            shutil.rmtree(trial.dir)
        trial.dir.mkdir(parents=True)
        from wandb.sdk.lib import config_util

        config_util.save_config_file_from_dict(str(trial.dir / "sweep-params.yaml"),
                                               {k: {"value": v} for k, v in trial.params.items()})
        args_file = trial.dir / "sweep-args.json"
        args_file.write_text(json.dumps(trial.params))
        trial.command = agent_command(self.sweep, trial.params, str(args_file))
        trial.status, trial.error, trial.metric = "running", None, None
        trial.save()
        argv = [sys.executable if part == AGENT_INTERPRETER and i <= 1 else part
                for i, part in enumerate(trial.command)]
        threads = max(1, (os.cpu_count() or 1) // self.parallel) if self.slots[slot] is None else None
        env = trial_env(self.name, trial, self.slots[slot], threads)
        log = (trial.dir / "output.log").open("w")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self.running[slot] = (proc, trial, time.monotonic())

    def _finish(self, slot: int, code: int) -> Trial:
        proc, trial, started = self.running.pop(slot)
        trial.seconds = round(time.monotonic() - started, 1)
        trial.metric = metric_of(trial.dir, self.metric)
        if trial.dir.name in self._early_stopped:
            trial.status = "stopped"
        elif code == 0:
            trial.status = "finished"
        elif self._stopping:
            trial.status = "interrupted"
        else:
            trial.status = "failed"
            trial.error = last_error_line(trial.dir / "output.log") or f"exit code {code}"
        trial.save()
        return trial

    def runs_to_stop(self) -> list[Trial]:
        """The running trials W&B's hyperband (``early_terminate:``) stops now, judged as the
        server judges them: on every trial's metric history so far."""
        sweeps = _engine()
        states = {"running": sweeps.RunState.running, "finished": sweeps.RunState.finished,
                  "stopped": sweeps.RunState.finished}
        started = [t for t in self.trials if t.status in states]
        runs = [sweeps.SweepRun(name=t.dir.name, state=states[t.status], history=metric_history(t.dir, self.metric),
                                config={k: {"value": v} for k, v in t.params.items()})
                for t in started]
        stop = {run.name for run in sweeps.stop_runs(self.sweep, runs)}
        return [t for t in started if t.status == "running" and t.dir.name in stop]

    def _early_terminate(self) -> None:
        if not self.sweep.get("early_terminate") or time.monotonic() - self._last_early_check < EARLY_TERMINATE_EVERY:
            return
        self._last_early_check = time.monotonic()
        for trial in self.runs_to_stop():
            if trial.dir.name in self._early_stopped:
                continue
            self._early_stopped.add(trial.dir.name)
            proc = next(p for p, t, _ in self.running.values() if t is trial)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    def stop(self, *_) -> None:
        """SIGTERM/SIGINT: stop every running trial (its whole process group) and exit."""
        self._stopping = True
        for proc, _, _ in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> list[Trial]:
        from tqdm import tqdm

        grid = self.sweep.get("method") == "grid"
        if not grid and not self.count:
            raise SweepError(f"method {self.sweep['method']!r} has no end: give --count N (or run_cap: in the file)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.trials = self._grid_trials() if grid else self._previous_trials()
        todo = [t for t in self.trials if t.status not in DONE]
        total = len(self.trials) if grid else self.count
        done = sum(t.status in DONE for t in self.trials)
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self.stop), signal.SIGINT: signal.signal(signal.SIGINT, self.stop)}
        bar = tqdm(total=total, initial=done, desc=self.name, unit="trial", disable=self.quiet, file=sys.stderr)
        try:
            while not self._stopping:
                free = [s for s in range(self.parallel) if s not in self.running]
                for slot in free:
                    trial = todo.pop(0) if todo else None
                    if trial is None and not grid and len(self.trials) < self.count:
                        trial = self._next_proposal()
                        if trial is not None:
                            self.trials.append(trial)
                    if trial is None:
                        break
                    self._start(trial, slot)
                if not self.running:
                    break
                time.sleep(0.2)
                self._early_terminate()
                for slot, (proc, _, _) in list(self.running.items()):
                    code = proc.poll()
                    if code is not None:
                        trial = self._finish(slot, code)
                        bar.update(1)
                        bar.set_postfix_str(f"{trial.dir.name} {trial.status}")
            for slot, (proc, _, _) in list(self.running.items()):  # stopping: reap, mark interrupted
                self._finish(slot, proc.wait())
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.write_table()
        return self.trials

    def _previous_trials(self) -> list[Trial]:
        trials = []
        for path in sorted(self.dir.glob("trial-*/trial.json")):
            trial = load_trial(path)
            if trial is not None:
                trials.append(trial)
        return trials[: self.count]

    # -- the table ---------------------------------------------------------------------------

    def write_table(self) -> Path:
        """``trials.csv`` and ``trials.md`` in the sweep folder; the Markdown is also printed."""
        keys = varying_keys([t.params for t in self.trials])
        header = ["trial", *keys, "status", self.metric or "metric", "seconds"]
        rows = [[t.dir.name, *[short(t.params.get(k)) for k in keys], t.status,
                 "" if t.metric is None else f"{t.metric:.4f}", "" if t.seconds is None else f"{t.seconds:.0f}"]
                for t in self.trials]
        with (self.dir / "trials.csv").open("w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        failed = [t for t in self.trials if t.status == "failed"]
        lines += [""] + [f"{t.dir.name} failed: {t.error}" for t in failed]
        (self.dir / "trials.md").write_text("\n".join(lines) + "\n")
        if not self.quiet:
            print("\n".join(lines))
            print(f"[ctxlit] table: {self.dir / 'trials.md'} and trials.csv")
        return self.dir / "trials.md"


def varying_keys(params: list[dict]) -> list[str]:
    keys = []
    for key in dict.fromkeys(k for p in params for k in p):
        if len({json.dumps(p.get(key), sort_keys=True) for p in params}) > 1:
            keys.append(key)
    return keys


def short(value) -> str:
    """A parameter value for a table cell: a block spec reads as ``GlobalContext(fusion=mul)``."""
    if isinstance(value, dict) and "class_path" in value:
        args = ", ".join(f"{k}={v}" for k, v in (value.get("init_args") or {}).items())
        return f"{value['class_path'].rsplit('.', 1)[-1]}({args})"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def last_error_line(log: Path, limit: int = 2000) -> str | None:
    """The error a failed trial printed: ctxlit's ``error: ...`` message (with the lines of a
    multi-line parser error after it), else the last line of a traceback."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if starts:
        message = lines[starts[-1]]
        if message.endswith(":"):
            message = " ".join(lines[starts[-1]:])
        return message[:limit]
    return lines[-1][:limit] if lines else None
