"""Running a sweep's trials here: one process per trial with the agent's environment, slots
pinned to GPUs, one runner per sweep folder, trials known by their parameters, resume from
``last.ckpt``, hyperband through W&B's engine, the trials table.

A trial's folder is ``trial-NNN-<key>``: ``NNN`` the order it was first planned in, ``<key>``
:func:`trial_key`, a hash of its parameters and the sweep's command. A folder is never reused
for another configuration, and nothing in it is deleted: an attempt that cannot be resumed
(failed, or killed before its first checkpoint) is moved aside to ``attempt-N/`` before the
next one starts.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import fcntl
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ctxlit import runs
from ctxlit.runs import Status
from ctxlit.sweep.files import (
    AGENT_INTERPRETER, SWEEPS_ROOT, SweepError, agent_command, engine, enumerate_trials, load_sweep, next_run,
    schema_problems, sweep_name,
)
from ctxlit.utils.files import write_atomically

#: How often (seconds) running trials' metric histories are shown to hyperband.
EARLY_TERMINATE_EVERY = 5.0
#: The lock file that makes one runner per sweep folder; it holds the runner's PID.
LOCK = "runner.lock"
#: Less free space than this under --root is an error before any trial starts: a trial that
#: cannot write its checkpoint fails after its training, not before.
MIN_FREE_BYTES = 64 * 2**20
NOT_IN_FILE = "not in the sweep file any more"
TRIAL_FOLDER = re.compile(r"trial-(\d+)(?:-[0-9a-f]+)?$")


def trial_key(sweep: dict, params: dict) -> str:
    """A trial's identity: its resolved parameters and the command they are given to (a trial
    of another ``command:`` or ``program:`` is another configuration), hashed by
    :func:`ctxlit.runs.params_key`. Key order in the file does not matter."""
    return runs.params_key({"parameters": params, "command": sweep.get("command"), "program": sweep.get("program")})


@dataclass
class Trial:
    index: int
    params: dict
    dir: Path
    key: str = ""  # trial_key(sweep, params)
    status: Status = Status.PENDING
    metric: float | None = None
    seconds: float | None = None
    error: str | None = None
    command: list[str] = field(default_factory=list)
    process: dict | None = None  # runs.process_token of the trial's process (the leader of its group)
    wandb_id: str | None = None  # one W&B run per trial: every attempt that resumes continues it
    attempt: int = 1
    resume_from: Path | None = None  # the attempt about to start continues from this last.ckpt
    in_sweep: bool = True  # False: a trial of an earlier version of the sweep file, kept as it was

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a record's string, checked

    def save(self) -> None:
        runs.write_trial(self.dir, {
            "index": self.index, "key": self.key, "params": self.params, "status": self.status.value,
            "metric": self.metric, "seconds": self.seconds, "error": self.error, "command": self.command,
            "process": self.process, "wandb_id": self.wandb_id, "attempt": self.attempt,
        })

    @property
    def note(self) -> str:
        if not self.in_sweep:
            return NOT_IN_FILE
        if self.status is Status.RUNNING:
            return f"its process {self.process.get('pid') if self.process else '?'} is still running: not started again"
        if self.attempt > 1:
            return f"attempt {self.attempt}"
        return ""


def folder_name(index: int, key: str) -> str:
    return f"trial-{index:03d}-{key}"


def recorded_trials(sweep_dir: Path, key_of, metric: str | None) -> list[Trial]:
    """The trials in a sweep folder, as their ``trial.json`` and run files say (read by
    :func:`ctxlit.runs.read_run`: the one status rule, the one final-metric rule). A folder of an
    older runner (``trial-NNN``, no key recorded) gets the key of its parameters."""
    trials = []
    for folder in sorted(sweep_dir.glob("trial-*")):
        if not (folder / runs.TRIAL).is_file() or folder.is_symlink():
            continue
        run = runs.read_run(folder)
        record = run.trial or {}
        params = record.get("params")
        if not isinstance(params, dict):
            continue  # unreadable: left alone (its folder name stays taken)
        match = TRIAL_FOLDER.match(folder.name)
        index = record.get("index") if isinstance(record.get("index"), int) else int(match.group(1)) if match else 0
        key = record.get("key") if isinstance(record.get("key"), str) else key_of(params)
        status = run.status
        process = record.get("process") if isinstance(record.get("process"), dict) else None
        if status is Status.INTERRUPTED and process_group_alive(process):
            status = Status.RUNNING  # the leader is gone but DDP ranks or W&B of its group still write there
        wandb_id = record.get("wandb_id") or ((run.summary.get("wandb") or {}).get("id")
                                              if isinstance(run.summary.get("wandb"), dict) else None)
        trials.append(Trial(index=index, params=params, key=key, dir=folder, status=status,
                            metric=run.final(metric) if metric and status.done else None,
                            seconds=record.get("seconds"), error=record.get("error") if status is Status.FAILED else None,
                            command=record.get("command") or [], process=process, wandb_id=wandb_id,
                            attempt=record.get("attempt") if isinstance(record.get("attempt"), int) else 1))
    return trials


def process_group_alive(process: dict | None) -> bool:
    """Whether any process of the group a trial's process led is alive (on this host): its DDP
    ranks and helpers outlive a leader killed by SIGKILL."""
    if not isinstance(process, dict) or not isinstance(process.get("pid"), int):
        return False
    if process.get("host") not in (None, runs.process_token()["host"]):
        return True
    try:
        os.killpg(process["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trial_env(name: str, trial: Trial, devices: list[int] | None, threads: int | None) -> dict:
    """The agent's environment for one trial, offline unless the user chose a W&B mode. The
    trial's own W&B run id, with ``WANDB_RESUME=allow`` (read by ``wandb.init`` through
    Lightning's WandbLogger): a resumed attempt continues that run instead of starting another."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "PL_GLOBAL_SEED")}
    env.setdefault("WANDB_MODE", "offline")
    env["WANDB_RUN_GROUP"] = name
    env["WANDB_NAME"] = f"{name}/{trial.dir.name}"
    env["WANDB_SWEEP_PARAM_PATH"] = str(trial.dir / "sweep-params.yaml")
    env["WANDB_RUN_ID"] = trial.wandb_id
    env["WANDB_RESUME"] = "allow"
    env["CTXLIT_RUN_DIR"] = str(trial.dir)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def resume_point(trial: Trial) -> Path | None:
    """The ``last.ckpt`` an interrupted trial continues from (its configuration is unchanged:
    it is the configuration its folder is named by), with its W&B run; else None."""
    if trial.status is not Status.INTERRUPTED or not trial.wandb_id:
        return None
    return runs.read_run(trial.dir).last_checkpoint


def trial_argv(sweep: dict, trial: Trial) -> list[str]:
    """The exact command line a trial runs: the agent's (``python`` is this interpreter), plus
    ``--ckpt_path <last.ckpt>`` when the attempt resumes."""
    command = agent_command(sweep, trial.params, str(trial.dir / "sweep-args.json"))
    argv = [sys.executable if part == AGENT_INTERPRETER and i <= 1 else part for i, part in enumerate(command)]
    return argv + (["--ckpt_path", str(trial.resume_from)] if trial.resume_from else [])


# -- processes ------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def die_with_the_runner(runner_pid: int):
    """For ``preexec_fn``: the trial (the leader of its own process group) gets SIGTERM when the
    runner dies, SIGKILL included (Linux ``prctl(PR_SET_PDEATHSIG)``). SIGTERM, not SIGKILL:
    Lightning then saves ``last.ckpt`` at the next batch and passes the signal to its DDP ranks."""
    def preexec() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != runner_pid:  # the runner died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


class SweepLock:
    """One runner per sweep folder: an exclusive ``flock`` on ``runner.lock``, which holds the
    holder's PID. The kernel drops the lock when its process dies, however it dies, so a dead
    runner's lock is simply taken."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = sweep_dir / LOCK
        self.file: io.TextIOWrapper | None = None

    def __enter__(self) -> SweepLock:
        file = self.path.open("a+")  # never truncated before the lock is ours: the holder's PID stays readable
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise SweepError(f"another runner (PID {holder}) is running this sweep in {self.path.parent}; "
                             f"wait for it to end or stop it (kill {holder})") from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the lock; the file stays (unlinking it would race a waiter)
            self.file = None


def check_root(sweep_dir: Path) -> None:
    """The sweep folder can be made and written, with room for checkpoints: else one error
    before any trial starts."""
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        probe = sweep_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok\n")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise SweepError(f"--root: cannot write the sweep folder {sweep_dir} ({reason}); "
                         f"give a writable --root") from None
    stat = os.statvfs(sweep_dir)
    free = stat.f_bavail * stat.f_frsize
    if free < MIN_FREE_BYTES:
        raise SweepError(f"--root: only {free / 2**20:.0f} MiB free under {sweep_dir} (at least "
                         f"{MIN_FREE_BYTES // 2**20} MiB are needed for the trials' checkpoints); free space or "
                         f"give another --root")


def sweep_devices(sweep: dict) -> int | None:
    """``trainer.devices`` as the sweep file sets it for every trial (an int, or a list's
    length), else None (unset, ``auto``, or varying between trials)."""
    spec = (sweep.get("parameters") or {}).get("trainer.devices")
    if not isinstance(spec, dict):
        return None
    values = spec.get("values") if "values" in spec else [spec.get("value")]
    counts = {len(v) if isinstance(v, list) else v for v in values or [] if isinstance(v, (int, list))}
    counts = {c for c in counts if not isinstance(c, bool)}
    return counts.pop() if len(counts) == 1 and len(values) == 1 else None


class Runner:
    def __init__(self, path: str | Path, parallel: int = 1, devices_per_trial: int | None = None,
                 count: int | None = None, root: Path = SWEEPS_ROOT, quiet: bool = False) -> None:
        self.path = Path(path)
        self.sweep = load_sweep(path)
        problems = schema_problems(self.sweep)
        if problems:
            raise SweepError(f"{path}: " + "; ".join(problems))
        if count is not None and count < 1:
            raise SweepError(f"--count must be at least 1 (got {count})")
        file_devices = sweep_devices(self.sweep)
        if devices_per_trial is not None and file_devices is not None and devices_per_trial != file_devices:
            raise SweepError(f"--devices-per-trial {devices_per_trial} but {path} sets trainer.devices: {file_devices}; "
                             f"give --devices-per-trial {file_devices} (each trial sees exactly the GPUs it uses)")
        if parallel < 1 or (devices_per_trial is not None and devices_per_trial < 1):
            raise SweepError("--parallel and --devices-per-trial must be at least 1")
        self.name = sweep_name(path, self.sweep)
        self.dir = Path(root) / self.name
        self.parallel = parallel
        self.devices_per_trial = devices_per_trial or file_devices or 1
        self.count = count or self.sweep.get("run_cap")
        self.metric = (self.sweep.get("metric") or {}).get("name")
        self.quiet = quiet
        self.slots = self._slot_devices()
        self.running: dict[int, tuple[subprocess.Popen, Trial, float]] = {}
        self.trials: list[Trial] = []
        self.stopping = False
        self._early_stopped: set[str] = set()  # trial keys hyperband stopped
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

    def key(self, params: dict) -> str:
        return trial_key(self.sweep, params)

    def recorded(self) -> list[Trial]:
        """What this sweep folder holds, with each trial's metric by the sweep's metric."""
        return recorded_trials(self.dir, self.key, self.metric) if self.dir.is_dir() else []

    def _next_index(self) -> int:
        taken = [int(m.group(1)) for p in (self.dir.glob("trial-*") if self.dir.is_dir() else [])
                 if (m := TRIAL_FOLDER.match(p.name))]
        taken += [t.index for t in self.trials]
        return max(taken, default=-1) + 1

    def _new_trial(self, params: dict) -> Trial:
        index, key = self._next_index(), self.key(params)
        return Trial(index=index, params=params, key=key, dir=self.dir / folder_name(index, key))

    def plan(self) -> list[Trial]:
        """A grid's trials, each matched to the folder that holds its configuration (wherever
        it sits in the grid now), else a new folder; then the folder's trials of earlier
        versions of the file (``in_sweep`` False), kept as they are."""
        by_key: dict[str, Trial] = {}
        for trial in self.recorded():  # of two folders with one configuration, a done one wins
            if trial.key not in by_key or (trial.status.done and not by_key[trial.key].status.done):
                by_key[trial.key] = trial
        self.trials = []
        for params in enumerate_trials(self.sweep, self.count):
            trial = by_key.pop(self.key(params), None) or self._new_trial(params)
            trial.params = params
            self.trials.append(trial)
        planned = list(self.trials)
        for trial in sorted(by_key.values(), key=lambda t: t.index):
            trial.in_sweep = False
            self.trials.append(trial)
        return planned

    def planned(self) -> list[Trial]:
        """The trials a run would start now, without starting them: a grid's as matched to this
        sweep folder (done ones are skipped), else the first ``count`` proposals."""
        if self.sweep.get("method") == "grid":
            trials = self.plan()
        else:
            self.trials = trials = []
            for params in enumerate_trials(self.sweep, self.count):
                trials.append(self._new_trial(params))
        for trial in trials:
            trial.resume_from = resume_point(trial)
        return trials

    def to_run(self) -> list[Trial]:
        """The trials of the file this run starts: all but the done ones and those whose process
        is still alive (pending, interrupted: resumed, failed: run again)."""
        return [t for t in self.trials if t.in_sweep and not t.status.done and t.status is not Status.RUNNING]

    def _previous_trials(self) -> list[Trial]:
        """random/bayes: the trials so far, in the order they were proposed."""
        return sorted(self.recorded(), key=lambda t: t.index)[: self.count]

    def _next_proposal(self) -> Trial | None:
        """random/bayes: the engine's next proposal given every trial so far and its metric."""
        sweeps = engine()
        history = [sweeps.SweepRun(name=t.key, config={k: {"value": v} for k, v in t.params.items()},
                                   state=getattr(sweeps.RunState, t.status.run_state),
                                   summary_metrics={self.metric: t.metric} if t.metric is not None else {})
                   for t in self.trials]
        run = next_run(self.sweep, history)
        if run is None:
            return None
        return self._new_trial({k: v["value"] for k, v in run.config.items()})

    # -- one trial ---------------------------------------------------------------------------

    def prepare(self, trial: Trial) -> None:
        """Before an attempt: resume an interrupted one from its ``last.ckpt`` (same folder, same
        W&B run); else move what an earlier attempt left to ``attempt-N/`` (nothing is deleted)
        and start afresh with a new W&B run."""
        from wandb.sdk.lib.runid import generate_id

        trial.resume_from = resume_point(trial)
        if trial.dir.exists() and trial.status is not Status.PENDING:
            if trial.resume_from is None:
                self._move_aside(trial)
                trial.wandb_id = None
            elif (trial.dir / runs.METRICS).is_file():
                # Lightning's CSV logger deletes the metrics.csv it finds: keep it, joined back at the end
                (trial.dir / runs.METRICS).rename(trial.dir / runs.EARLIER_METRICS.format(attempt=trial.attempt + 1))
            trial.attempt += 1
        trial.wandb_id = trial.wandb_id or generate_id()

    @staticmethod
    def _move_aside(trial: Trial) -> None:
        keep = {runs.TRIAL, "sweep-params.yaml", "sweep-args.json"}  # rewritten as they were
        leftovers = [p for p in trial.dir.iterdir() if p.name not in keep and not p.name.startswith("attempt-")]
        if not leftovers:
            return
        aside = trial.dir / f"attempt-{trial.attempt}"
        aside.mkdir(exist_ok=True)
        for path in leftovers:
            path.rename(aside / path.name)

    def _start(self, trial: Trial, slot: int) -> None:
        self.prepare(trial)
        trial.dir.mkdir(parents=True, exist_ok=True)
        from wandb.sdk.lib import config_util

        config_util.save_config_file_from_dict(str(trial.dir / "sweep-params.yaml"),
                                               {k: {"value": v} for k, v in trial.params.items()})
        write_atomically(trial.dir / "sweep-args.json", json.dumps(trial.params))
        argv = trial_argv(self.sweep, trial)
        trial.command = argv
        trial.status, trial.error, trial.metric, trial.seconds = Status.RUNNING, None, None, None
        threads = max(1, (os.cpu_count() or 1) // self.parallel) if self.slots[slot] is None else None
        env = trial_env(self.name, trial, self.slots[slot], threads)
        with (trial.dir / "output.log").open("a") as log:
            if trial.resume_from:
                log.write(f"[ctxlit sweep] attempt {trial.attempt}: resuming from {trial.resume_from}\n")
                log.flush()
            # Its own process group (stopped as a whole: DDP ranks, W&B's service), and it dies
            # with the runner. No lock or other runner file is inherited (close_fds).
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=die_with_the_runner(os.getpid()))
        trial.process = runs.process_token(proc.pid)
        trial.save()
        self.running[slot] = (proc, trial, time.monotonic())

    def _finish(self, slot: int, code: int) -> Trial:
        proc, trial, started = self.running.pop(slot)
        trial.seconds = round(time.monotonic() - started, 1)
        if trial.key in self._early_stopped:
            trial.status = Status.STOPPED
        elif code == 0:
            trial.status = Status.FINISHED
        elif self.stopping:
            trial.status = Status.INTERRUPTED
        else:
            trial.status = Status.FAILED
            trial.error = last_error_line(trial.dir / "output.log") or f"exit code {code}"
        runs.join_metrics(trial.dir)
        trial.save()  # first the status: the run model's final metric is a done run's only
        trial.metric = runs.read_run(trial.dir).final(self.metric) if self.metric else None
        trial.save()
        return trial

    def runs_to_stop(self) -> list[Trial]:
        """The running trials W&B's hyperband (``early_terminate:``) stops now, judged as the
        server judges them: on every trial's metric history so far."""
        sweeps = engine()
        started = [t for t in self.trials if t.in_sweep and (t.status is Status.RUNNING or t.status.done)]
        runs_ = [sweeps.SweepRun(name=t.key, state=getattr(sweeps.RunState, t.status.run_state),
                                 history=metric_history(t.dir, self.metric),
                                 config={k: {"value": v} for k, v in t.params.items()})
                 for t in started]
        stop = {run.name for run in sweeps.stop_runs(self.sweep, runs_)}
        return [t for t in started if t.status is Status.RUNNING and t.key in stop]

    def _early_terminate(self) -> None:
        if not self.sweep.get("early_terminate") or time.monotonic() - self._last_early_check < EARLY_TERMINATE_EVERY:
            return
        self._last_early_check = time.monotonic()
        for trial in self.runs_to_stop():
            if trial.key in self._early_stopped:
                continue
            proc = next((p for p, t, _ in self.running.values() if t is trial), None)
            if proc is None:
                continue  # a process this runner did not start: not its to stop
            self._early_stopped.add(trial.key)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    def stop(self, *_) -> None:
        """SIGTERM/SIGINT: stop every running trial (its whole process group) and exit."""
        self.stopping = True
        for proc, _, _ in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> list[Trial]:
        grid = self.sweep.get("method") == "grid"
        if not grid and not self.count:
            raise SweepError(f"method {self.sweep['method']!r} has no end: give --count N (or run_cap: in the file)")
        check_root(self.dir)
        with SweepLock(self.dir):
            return self._run_locked(grid)

    def _run_locked(self, grid: bool) -> list[Trial]:
        import tqdm

        tqdm.tqdm.monitor_interval = 0  # no monitor thread: trials are forked with a preexec_fn
        if grid:
            self.plan()
        else:
            self.trials = self._previous_trials()
        for trial in self.trials:  # an orphan of a runner killed long ago finished on its own: record it
            if trial.status.done and Status.parse((runs.read_run(trial.dir).trial or {}).get("status")) is not trial.status:
                trial.save()
        todo = self.to_run()
        for trial in self.trials:
            if trial.in_sweep and trial.status is Status.RUNNING:
                print(f"[ctxlit] {trial.dir.name}: {trial.note}", file=sys.stderr)
        total = sum(t.in_sweep for t in self.trials) if grid else self.count
        done = sum(t.in_sweep and t.status.done for t in self.trials)
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self.stop),
                    signal.SIGINT: signal.signal(signal.SIGINT, self.stop)}
        bar = tqdm.tqdm(total=total, initial=done, desc=self.name, unit="trial", disable=self.quiet, file=sys.stderr)
        try:
            while not self.stopping:
                for slot in [s for s in range(self.parallel) if s not in self.running]:
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
                        bar.set_postfix_str(f"{trial.dir.name} {trial.status.value}")
            for slot, (proc, _, _) in list(self.running.items()):  # stopping: reap, mark interrupted
                self._finish(slot, proc.wait())
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.write_table()
        return self.trials

    # -- the table ---------------------------------------------------------------------------

    def write_table(self) -> Path:
        """``trials.csv`` and ``trials.md`` in the sweep folder; the Markdown is also printed."""
        keys = varying_keys([t.params for t in self.trials])
        header = ["trial", *keys, "status", self.metric or "metric", "seconds", "note"]
        rows = [[t.dir.name, *[short(t.params.get(k)) for k in keys], t.status.value,
                 "" if t.metric is None else f"{t.metric:.4f}", "" if t.seconds is None else f"{t.seconds:.0f}", t.note]
                for t in self.trials]
        table = io.StringIO()
        csv.writer(table).writerows([header, *rows])
        write_atomically(self.dir / "trials.csv", table.getvalue())
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        failed = [t for t in self.trials if t.status is Status.FAILED]
        lines += [""] + [f"{t.dir.name} failed: {t.error}" for t in failed]
        write_atomically(self.dir / "trials.md", "\n".join(lines) + "\n")
        if not self.quiet:
            print("\n".join(lines))
            print(f"[ctxlit] table: {self.dir / 'trials.md'} and trials.csv")
        return self.dir / "trials.md"


def metric_history(trial_dir: Path, metric: str | None) -> list[dict]:
    """``[{metric: value}, ...]``, one per time the trial logged it (read by the run model from
    metrics.csv): the history W&B's hyperband judges."""
    if not metric:
        return []
    return [{metric: value} for _epoch, value in runs.read_run(trial_dir).history(metric)]


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


def shown(argv: list[str]) -> str:
    """A command line as a shell would take it back."""
    return shlex.join(argv)


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

