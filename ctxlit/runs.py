"""The run folder: its layout, its format version, its one writer and its one reader.

A *run folder* is what one ``python -m ctxlit.fit`` leaves (``runs/<name>/version_N/``, or the
``CTXLIT_RUN_DIR`` a sweep trial gets)::

    config.yaml          LightningCLI's copy of the run's full config
    metrics.csv          every logged value (Lightning's CSV logger; rewritten whole at each flush)
    summary.json         the run's state and result (:func:`write_summary`): status, metrics, cost
    trial.json           a sweep trial only: its parameters, identity, process and status
    test-metrics.json    what ``test --ckpt_path=<run>/checkpoints/X.ckpt`` measured
    checkpoints/         best-*.ckpt and last.ckpt
    attention/           epoch-NNN/maps.pt and pictures, when recorded
    predictions/         what ``predict`` wrote
    wandb/               the W&B run (offline until synced)

Everything that reads or writes one of these files by name goes through this module, so the
format has one owner. The reader (:func:`read_run`) never raises on damaged content: it returns
the run marked *damaged* with the file and the reason. A run's status (:class:`Status`) and its
final metric (:meth:`RunFolder.final`) have one rule each, used by the sweep runner and the
report alike. This module imports nothing of ctxlit above ``utils``/``errors``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import socket
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import yaml

from ctxlit.utils.files import write_atomically

#: The version of the files this module writes; a file of a newer one is read as damaged.
FORMAT_VERSION = 1

CONFIG = "config.yaml"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
TRIAL = "trial.json"
TEST_METRICS = "test-metrics.json"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
ATTENTION = "attention"
PREDICTIONS = "predictions"
WANDB = "wandb"

#: Files that make a folder a run folder (a sweep trial that never started has only trial.json).
MARKERS = (CONFIG, SUMMARY, TRIAL)


class Status(str, Enum):
    """Where a run stands, as W&B's sweep engine tracks its runs (``sweeps.RunState``)."""

    PENDING = "pending"  # a trial not started yet
    RUNNING = "running"  # its process is alive (or, for a run with no record of one, no summary yet)
    FINISHED = "finished"  # ran to its end
    STOPPED = "stopped"  # hyperband stopped it early: its metric so far is its result
    FAILED = "failed"  # ended with an error
    INTERRUPTED = "interrupted"  # killed or signalled before its end; resumable from last.ckpt

    @property
    def done(self) -> bool:
        """A result: nothing left to run."""
        return self in (Status.FINISHED, Status.STOPPED)

    @property
    def run_state(self) -> str:
        """The name of the ``sweeps.RunState`` the W&B engine knows this status by. Hyperband's
        stopped runs count as finished, with their metric so far (as on W&B's server)."""
        return {"pending": "pending", "running": "running", "finished": "finished", "stopped": "finished",
                "failed": "failed", "interrupted": "killed"}[self.value]

    @classmethod
    def parse(cls, value) -> Status | None:
        try:
            return cls(value)
        except ValueError:
            return None


# --------------------------------------------------------------------------- identity


def params_key(params: dict) -> str:
    """A stable identity of a trial's resolved parameters (as a W&B run is known by its
    config): 12 hex digits of SHA-256 over the canonical JSON, key order and spacing aside."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- processes


def process_token(pid: int | None = None) -> dict:
    """What identifies a live process across PID reuse: its PID, host and start time (Linux
    ``/proc/<pid>/stat`` field 22, clock ticks since boot; None elsewhere)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": socket.gethostname(), "started": _start_ticks(pid)}


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(token: dict | None) -> bool:
    """Whether the process a :func:`process_token` names is still running (on this host; a
    process recorded on another host is taken as alive: it cannot be checked from here)."""
    if not isinstance(token, dict) or not isinstance(token.get("pid"), int):
        return False
    if token.get("host") not in (None, socket.gethostname()):
        return True
    pid = token["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    started = token.get("started")
    now = _start_ticks(pid)
    return started is None or now is None or now == started  # a different start: the PID was reused


# --------------------------------------------------------------------------- writers


def _write_json(path: Path, record: dict) -> Path:
    write_atomically(path, json.dumps({"format": FORMAT_VERSION, **record}, indent=2, default=str) + "\n")
    return path


def write_summary(run_dir: Path, record: dict) -> Path:
    """``summary.json``, whole or not at all. ``record`` holds ``status`` (a :class:`Status`
    value) and, once the run ends, its metrics and cost (see tasks/callbacks.RunSummary)."""
    return _write_json(Path(run_dir) / SUMMARY, record)


def write_trial(run_dir: Path, record: dict) -> Path:
    """``trial.json``: a sweep trial's parameters, identity, process and status (the runner's)."""
    return _write_json(Path(run_dir) / TRIAL, record)


def write_test_metrics(run_dir: Path, record: dict) -> Path:
    """``test-metrics.json``: what a ``test`` of one of the run's checkpoints measured."""
    return _write_json(Path(run_dir) / TEST_METRICS, record)


#: Where a resumed attempt's earlier metrics.csv waits (Lightning's CSV logger deletes the
#: metrics.csv it finds when it starts): ``metrics-before-attempt-N.csv``.
EARLIER_METRICS = "metrics-before-attempt-{attempt}.csv"


def join_metrics(run_dir: Path) -> Path | None:
    """``metrics.csv`` whole again after resumed attempts: each earlier file's rows up to the
    step its next attempt resumed from, then that attempt's rows (a resume from an older
    ``last.ckpt`` logs its steps again: the later values stand). The earlier files stay."""
    run_dir = Path(run_dir)
    earlier = sorted(run_dir.glob(EARLIER_METRICS.format(attempt="*")),
                     key=lambda p: int(p.stem.rsplit("-", 1)[1]) if p.stem.rsplit("-", 1)[1].isdigit() else 0)
    if not earlier:
        return None
    parts = [_csv_rows(path) for path in [*earlier, run_dir / METRICS]]
    rows: list[dict] = []
    for part in parts:
        steps = [finite(r.get("step")) for r in part if finite(r.get("step")) is not None]
        if steps:
            rows = [r for r in rows if (finite(r.get("step")) or 0) < min(steps)]
        rows += part
    fields = sorted({k for row in rows for k in row if k is not None})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(run_dir / METRICS, text.getvalue())
    return run_dir / METRICS


def _csv_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a row cut mid-write
    return list(csv.DictReader(io.StringIO(text, newline="")))


def provenance() -> dict:
    """What made a run: ctxlit's version and git commit, torch/torchvision/Lightning versions and
    the device. Read lazily (the imports are the callers' already)."""
    import subprocess
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001  (no torch, or a broken CUDA runtime: the device stays cpu)
        pass
    return {"ctxlit": version("ctxlit"), "git_commit": commit, "torch": version("torch"),
            "torchvision": version("torchvision"), "pytorch_lightning": version("pytorch-lightning"),
            "device": device}


# --------------------------------------------------------------------------- the reader


@dataclass
class Problem:
    """Why a run folder cannot be read as a result: the file and the reason."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class RunFolder:
    """One run folder as read, damaged or not. ``config`` is nested as in config.yaml."""

    dir: Path
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # metrics.csv, whole rows only
    trial: dict | None = None
    test_metrics: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    @property
    def status(self) -> Status:
        """The one rule: the runner's record of a sweep trial first (it alone knows "stopped"
        and "pending"), then summary.json. A run whose record says running but whose process
        is gone was killed: interrupted. A run with neither record is running as far as anyone
        can tell (a plain fit writes summary.json at its start; an older one only at its end)."""
        trial_status = Status.parse((self.trial or {}).get("status"))
        summary_status = Status.parse(self.summary.get("status"))
        if trial_status in (Status.PENDING, Status.STOPPED, Status.FAILED):
            return trial_status
        if summary_status is not None and summary_status is not Status.RUNNING:
            return summary_status
        if Status.RUNNING in (trial_status, summary_status):
            record = self.trial if trial_status is Status.RUNNING else self.summary
            return Status.RUNNING if process_alive(record.get("process")) else Status.INTERRUPTED
        if trial_status is not None:
            return trial_status
        return Status.RUNNING

    @property
    def why(self) -> str:
        """Why this run is not a result, in a few words ('' for a finished, undamaged one)."""
        if self.problems:
            return "damaged: " + "; ".join(map(str, self.problems))
        status = self.status
        if status.done:
            return ""
        if status is Status.RUNNING and not self.summary and not self.trial:
            return f"running (no {SUMMARY} yet: still running, or killed before it ended)"
        error = self.summary.get("error") or (self.trial or {}).get("error")
        return status.value + (f": {error}" if error else "")

    def history(self, metric: str) -> list[tuple[int | None, float]]:
        """``(epoch, value)`` of every logged value of ``metric``, in order (finite values only)."""
        points = []
        for row in self.rows:
            value = finite(row.get(metric))
            if value is not None:
                epoch = finite(row.get("epoch"))
                points.append((int(epoch) if epoch is not None else None, value))
        return points

    def last_logged(self, metric: str) -> float | None:
        history = self.history(metric)
        return history[-1][1] if history else None

    def final(self, metric: str) -> float | None:
        """The one rule for a run's result: None unless the run is done and undamaged; then the
        value summary.json recorded at its end, else the last value metrics.csv logged."""
        if self.damaged or not self.status.done:
            return None
        metrics = self.summary.get("metrics")
        value = finite(metrics.get(metric)) if isinstance(metrics, dict) else None
        return value if value is not None else self.last_logged(metric)

    @property
    def monitor(self) -> str | None:
        monitor = self.summary.get("monitor")
        return monitor if isinstance(monitor, str) else None

    @property
    def checkpoints(self) -> Path:
        return self.dir / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path | None:
        """``checkpoints/last.ckpt`` when it exists: never a path outside the run folder."""
        path = self.dir / CHECKPOINTS / LAST_CHECKPOINT
        return path if path.is_file() and inside(path, self.dir) else None


def finite(value) -> float | None:
    """``value`` as a finite float, else None (numbers logged as text, NaN, inf, junk)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves (links followed) to a place inside ``folder``."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except OSError:
        return False


def is_run_folder(path: Path) -> bool:
    return any((Path(path) / name).is_file() for name in MARKERS)


def read_run(path: Path) -> RunFolder:
    """The run folder at ``path``, never raising on what is in it: unreadable or malformed
    files are :class:`Problem` s of the returned run."""
    run = RunFolder(dir=Path(path))
    run.trial = _read_mapping(run, TRIAL, _json) if (run.dir / TRIAL).exists() else None
    run.summary = _read_mapping(run, SUMMARY, _json) or {}
    if (run.dir / CONFIG).exists():
        run.config = _read_mapping(run, CONFIG, _yaml) or {}
    elif run.trial is None or Status.parse(run.trial.get("status")) not in (Status.PENDING, Status.FAILED):
        run.problems.append(Problem(CONFIG, "missing (every run writes it when it starts)"))
    run.test_metrics = _read_mapping(run, TEST_METRICS, _json) or {}
    run.rows = _read_metrics(run)
    _check_summary(run)
    return run


def _json(text: str):
    return json.loads(text)


def _yaml(text: str):
    return yaml.safe_load(text)


def _read_mapping(run: RunFolder, name: str, parse) -> dict | None:
    """A JSON/YAML file that must hold a mapping; None (and a problem) when it cannot be read,
    None (no problem) when it is absent."""
    path = run.dir / name
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as err:
        run.problems.append(Problem(name, f"not UTF-8 text (byte {err.start})"))
        return None
    except OSError as err:
        run.problems.append(Problem(name, f"cannot be read ({err.strerror or err})"))
        return None
    try:
        value = parse(text)
    except (ValueError, yaml.YAMLError) as err:
        run.problems.append(Problem(name, f"not valid {'JSON' if name.endswith('.json') else 'YAML'} "
                                          f"({str(err).splitlines()[0]})"))
        return None
    if value is None and name == CONFIG:
        value = {}
    if not isinstance(value, dict):
        run.problems.append(Problem(name, f"holds a {type(value).__name__}, not a mapping"))
        return None
    version = value.get("format") if name.endswith(".json") else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        run.problems.append(Problem(name, f"format {version}, newer than this ctxlit reads ({FORMAT_VERSION})"))
        return None
    return value


def _read_metrics(run: RunFolder) -> list[dict]:
    """metrics.csv's whole rows. A last line cut mid-write (no newline at the end) is left out:
    Lightning rewrites the file at each flush, so it is the tail of a write in progress."""
    path = run.dir / METRICS
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as err:
        run.problems.append(Problem(METRICS, f"not UTF-8 text (byte {err.start})"))
        return []
    except OSError as err:
        run.problems.append(Problem(METRICS, f"cannot be read ({err.strerror or err})"))
        return []
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as err:
        run.problems.append(Problem(METRICS, f"not valid CSV ({err})"))
        return []
    for number, row in enumerate(rows, start=2):
        epoch = row.get("epoch")
        if epoch not in (None, "") and finite(epoch) is None:
            run.problems.append(Problem(METRICS, f"line {number}: epoch {epoch!r} is not a number"))
            return []
    return rows


def _check_summary(run: RunFolder) -> None:
    summary = run.summary
    if not summary:
        return
    if "status" in summary and Status.parse(summary["status"]) is None:
        run.problems.append(Problem(SUMMARY, f"status {summary['status']!r} is not one of "
                                             f"{', '.join(s.value for s in Status)}"))
    if summary.get("monitor") is not None and not isinstance(summary.get("monitor"), str):
        run.problems.append(Problem(SUMMARY, f"monitor is a {type(summary['monitor']).__name__}, not a metric name"))
    if summary.get("metrics") is not None and not isinstance(summary.get("metrics"), dict):
        run.problems.append(Problem(SUMMARY, f"metrics is a {type(summary['metrics']).__name__}, not a mapping"))


def find_run_folders(folder: Path) -> list[Path]:
    """Run folders at or below ``folder`` (not inside a W&B folder), in path order. Symbolic
    links to folders are followed once (a link to a run is a run the user put there)."""
    folder = Path(folder)
    if is_run_folder(folder):
        return [folder]
    found, seen = [], set()
    for root, dirs, _files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d != WANDB and not d.startswith("."))
        if Path(root) != folder and is_run_folder(Path(root)):
            found.append(Path(root))
            dirs[:] = []
    return found
