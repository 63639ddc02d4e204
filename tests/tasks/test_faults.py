"""Faults during training: NaN, a full disk, kills during checkpoint saves, SIGTERM. The files on
disk stay loadable and the run says it failed (issue 11)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ctxlit.data import SyntheticContextDataModule
from ctxlit.errors import TrainingFailed
from ctxlit.tasks import ClassificationTask
from ctxlit.tasks.callbacks import BestAndLastCheckpoint
from ctxlit.tasks.faults import AtomicCheckpointIO, finite_state, remove_orphans
from tests.conftest import TINY, run_fit

ROOT = Path(__file__).parents[2]


def test_a_non_finite_loss_stops_the_run_failed_with_no_non_finite_checkpoint(tmp_path, offline_env):
    run_dir = tmp_path / "run"
    result = run_fit([*TINY, "--model.init_args.lr=1e6", "--trainer.max_epochs=3"], cwd=tmp_path,
                     env={**offline_env, "WANDB_MODE": "offline", "CTXLIT_RUN_DIR": str(run_dir)})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: training stopped: non-finite training loss (nan) at epoch 0" in result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "non-finite training loss" in summary["error"]
    assert not list(run_dir.glob("checkpoints/*.ckpt"))  # it stopped inside epoch 0, before any save


class PoisonRunningStats(pl.Callback):
    """Sets one BatchNorm running_var to inf after each training epoch, before the checkpoint
    callback (Lightning runs ModelCheckpoint last) saves: the losses stay finite."""

    def on_train_epoch_end(self, trainer, pl_module):
        next(m for m in pl_module.modules() if isinstance(m, nn.BatchNorm2d)).running_var[0] = float("inf")


def test_no_best_or_last_checkpoint_of_a_non_finite_state(tmp_path):
    dm = SyntheticContextDataModule(train_size=32, val_size=16, image_size=(16, 32), batch_size=16)
    task = ClassificationTask(num_classes=dm.num_classes, block="none", backbone_options={"width": 8})

    def fit(callbacks):
        folder = tmp_path / str(len(callbacks))
        checkpoint = BestAndLastCheckpoint(dirpath=folder, monitor="val/acc1", mode="max", save_last=True)
        pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   callbacks=[*callbacks, checkpoint], default_root_dir=tmp_path).fit(task, datamodule=dm)
        return sorted(p.name for p in folder.glob("*.ckpt"))

    assert fit([]) == ["epoch=0-step=2.ckpt", "last.ckpt"]  # a finite state is saved, best and last
    assert fit([PoisonRunningStats()]) == []


def test_finite_state_sees_batchnorm_running_stats():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert finite_state(net)
    net[1].running_var[0] = float("inf")  # what the food baseline at 32 px reached
    assert not finite_state(net)


def _checkpoint(megabytes: float) -> dict:
    return {"state_dict": {"w": torch.ones(int(megabytes * 2**20 / 4))}, "pytorch-lightning_version": "x"}


def test_atomic_save_writes_beside_the_target_and_leaves_no_temp_file(tmp_path, monkeypatch):
    tmpdir = tmp_path / "elsewhere"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    io = AtomicCheckpointIO()
    io.save_checkpoint(_checkpoint(0.1), tmp_path / "ckpt" / "last.ckpt")
    io.save_checkpoint(_checkpoint(0.2), tmp_path / "ckpt" / "last.ckpt")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.ckpt"] and list(tmpdir.iterdir()) == []
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]["w"].numel() == int(0.2 * 2**18)


def test_orphaned_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".last.ckpt.tmp-{dead.stdout.strip()}"
    mine = tmp_path / f".best.ckpt.tmp-{os.getpid()}"
    orphan.write_bytes(b"half")
    mine.write_bytes(b"in progress")
    assert remove_orphans(tmp_path) == [orphan]
    assert mine.exists() and not orphan.exists()


def _mount_tmpfs(mount: Path, size: str) -> str | None:
    """Mount a tmpfs at ``mount``; None if done, else why not."""
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip() or f"exit {result.returncode}")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MB tmpfs (a full disk at hand); skipped where this process may not mount."""
    why_not = _mount_tmpfs(tmp_path / "small", "4m")
    if why_not:
        pytest.skip(f"cannot mount a tmpfs here: {why_not}")
    yield tmp_path / "small"
    subprocess.run(["umount", str(tmp_path / "small")], check=False)


@pytest.fixture
def other_tmpdir(tmp_path):
    """$TMPDIR on another filesystem than tmp_path (a tmpfs) where mounting is allowed; a plain
    folder elsewhere otherwise (the saves never use $TMPDIR, so the test still holds)."""
    why_not = _mount_tmpfs(tmp_path / "tmpdir", "64m")
    yield tmp_path / "tmpdir"
    if why_not is None:
        subprocess.run(["umount", str(tmp_path / "tmpdir")], check=False)


def test_a_full_disk_keeps_the_previous_checkpoint(small_tmpfs):
    io = AtomicCheckpointIO()
    target = small_tmpfs / "last.ckpt"
    io.save_checkpoint(_checkpoint(1), target)
    with pytest.raises(TrainingFailed, match=r"could not write checkpoint .*last.ckpt: No space left on device; "
                                             r"the previous last.ckpt, if any, is kept"):
        io.save_checkpoint(_checkpoint(3), target)
    assert torch.load(target, weights_only=True)["state_dict"]["w"].numel() == 2**18
    assert [p.name for p in small_tmpfs.iterdir()] == ["last.ckpt"]


SAVE_LOOP = """
import sys, torch
from ctxlit.tasks.faults import AtomicCheckpointIO
io, state = AtomicCheckpointIO(), {"state_dict": {"w": torch.randn(4 * 2**20)}, "pytorch-lightning_version": "x"}
print("ready", flush=True)
for i in range(10**6):
    io.save_checkpoint(state, sys.argv[1])
"""


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_an_unloadable_checkpoint(tmp_path, other_tmpdir):
    """16 MB saves in a loop, killed 8 times at varying moments, with $TMPDIR on another
    filesystem (a tmpfs, where it can be mounted) than the checkpoint: every file loads, and no temp file is left in
    $TMPDIR or, after the next save, beside the checkpoint."""
    target = tmp_path / "ckpt" / "last.ckpt"
    env = {**os.environ, "TMPDIR": str(other_tmpdir), "PYTHONPATH": str(ROOT)}
    for kill in range(8):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(target)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3 + 0.21 * kill)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            assert torch.load(target, weights_only=True)["state_dict"]["w"].numel() == 4 * 2**20, kill
    # torch 2.6 writes its own _remote_module_non_scriptable.py into a fresh $TMPDIR folder at import,
    # which a SIGKILL leaves behind; any other file there would be ours.
    left = [p for p in other_tmpdir.rglob("*") if p.is_file() and p.name != "_remote_module_non_scriptable.py"]
    assert target.exists() and left == []
    AtomicCheckpointIO().save_checkpoint(_checkpoint(0.1), target)
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_sigterm_exits_non_zero_and_the_run_is_marked_interrupted(tmp_path, offline_env):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in offline_env.items() if k != "WANDB_SERVICE"}
    env.update(WANDB_MODE="offline", CTXLIT_RUN_DIR=str(run_dir))
    proc = subprocess.Popen([sys.executable, "-m", "ctxlit.fit", *TINY, "--trainer.max_epochs=500"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "error: stopped by SIGTERM; resume with --ckpt_path" in err and "Traceback" not in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] < 499
    # last.ckpt is the state at the signal, not the last epoch boundary
    step = int(re.search(r"\[ctxlit\] SIGTERM at step (\d+): saved (.*last\.ckpt)", err).group(1))
    assert checkpoint["global_step"] == step
