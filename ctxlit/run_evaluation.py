"""``validate``/``test``/``predict --ckpt_path=RUN/checkpoints/X.ckpt``: a run's checkpoint is
evaluated as part of that run, not as a new one.

RUN is the checkpoint's run folder (the folder holding ``checkpoints/``, with the run's
``config.yaml`` beside it). Then:

- with no ``--config``, the run's own ``config.yaml`` is the config (:func:`run_config_for`);
- the results go into the run folder: ``RUN/test/`` and ``RUN/validate/`` (CSV log and the
  config used), ``RUN/predictions/`` (what ``predict`` writes), and ``test``'s metrics also
  into ``RUN/test-metrics.json`` (:func:`write_test_metrics`);
- a W&B logger continues the run's own W&B run (its id from ``RUN/summary.json``; Lightning's
  WandbLogger resumes with ``resume="allow"``) instead of starting another.

Imports nothing heavy: ``ctxlit.fit`` reads the command line with it before torch is loaded.
"""

from __future__ import annotations

from pathlib import Path

from ctxlit import runs

#: where each subcommand's results go inside the run folder
RESULTS_FOLDERS = {"validate": "validate", "test": "test", "predict": runs.PREDICTIONS}


def run_of_checkpoint(ckpt_path: str | Path | None) -> Path | None:
    """The run folder of ``ckpt_path`` (``RUN/checkpoints/X.ckpt`` with ``RUN/config.yaml``), or
    None for a checkpoint kept anywhere else."""
    if not ckpt_path:
        return None
    folder = Path(ckpt_path).absolute().parent
    if folder.name != runs.CHECKPOINTS or not (folder.parent / runs.CONFIG).is_file():
        return None
    return folder.parent


def checkpoint_argument(argv: list[str]) -> str | None:
    """The value of the last ``--ckpt_path`` in ``argv`` (``--ckpt_path X`` or ``--ckpt_path=X``)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--ckpt_path" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--ckpt_path="):
            value = arg.split("=", 1)[1]
    return value


def run_config_for(argv: list[str]) -> Path | None:
    """The ``config.yaml`` of the run whose checkpoint an evaluation subcommand names, or None
    (``fit``, or a checkpoint outside a run folder)."""
    if not argv or argv[0] not in RESULTS_FOLDERS:
        return None
    run = run_of_checkpoint(checkpoint_argument(argv))
    return run / runs.CONFIG if run else None


def results_folder(run: Path, subcommand: str) -> Path:
    return run / RESULTS_FOLDERS[subcommand]


def wandb_run_of(run: Path) -> dict | None:
    """The run's W&B run as its ``summary.json`` recorded it: ``{"id", "save_dir"}`` (``save_dir``
    is what WandbLogger takes: the folder above ``wandb/<run folder>``), or None."""
    record = runs.read_run(run).summary.get("wandb")
    if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record.get("dir"):
        return None
    return {"id": record["id"], "save_dir": str(Path(record["dir"]).parent.parent)}


def write_test_metrics(run: Path, ckpt_path: str, metrics: dict[str, float]) -> Path:
    """``RUN/test-metrics.json``: the checkpoint tested and its ``test/*`` metrics, whole or not
    at all (through the run-folder module, the format's owner)."""
    tested = {k: v for k, v in sorted(metrics.items()) if k.startswith("test/")}
    return runs.write_test_metrics(run, {"checkpoint": str(Path(ckpt_path).absolute()), "metrics": tested})
