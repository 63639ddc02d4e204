"""Shared fixtures: a tiny, fast version of the default experiment for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl

#: Overrides that shrink the default experiment to a few seconds on one CPU core.
TINY = [
    "--data.init_args.train_size=64",
    "--data.init_args.val_size=24",
    "--data.init_args.image_size=[16,32]",
    "--data.init_args.batch_size=16",
    "--model.init_args.backbone_options.width=8",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture
def offline_env(tmp_path, monkeypatch) -> dict[str, str]:
    """An environment with no W&B key, no W&B mode chosen and a private HOME (no ~/.netrc)."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID",
                "WANDB_RUN_GROUP", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "CTXLIT_RUN_DIR"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / ".cache" / "wandb"))
    return dict(os.environ)


def run_fit(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m ctxlit.fit <args>`` in a fresh process, as a user would run it.

    Without ``WANDB_SERVICE``: an in-process fit earlier in the session leaves it pointing at
    its own wandb-core, and the subprocess would log through that service, not one of its own.
    """
    env = {k: v for k, v in env.items() if k != "WANDB_SERVICE"}
    return subprocess.run(
        [sys.executable, "-m", "ctxlit.fit", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


class SigtermAtStep(pl.Callback):
    """Send this process SIGTERM after ``step`` optimizer steps, as a cluster pre-empting the
    job would: Lightning's handler stops the fit at the next batch boundary."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class StopAtStep(pl.Callback):
    """Interrupt a fit after ``step`` optimizer steps without changing its configuration
    (so the LR schedule is the one of the full run), like a pre-empted job."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def offline_run_ids(wandb_dir: Path) -> list[str]:
    """The run id of each offline W&B run folder in ``wandb_dir``, sorted, one per folder:
    ``offline-run-<time>-<id>``, and ``offline-run-<time>-<id>-1`` for a second folder of that id
    started within the same second (a resumed run)."""
    names = [p.name for p in Path(wandb_dir).glob("offline-run-*")]
    return sorted(re.fullmatch(r"offline-run-\d{8}_\d{6}-([^-]+)(?:-\d+)?", name).group(1) for name in names)
