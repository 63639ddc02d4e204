"""What a study reads from one run: ``summary.json``, the run folder and W&B group a sweep runner
sets through the environment, and a sweep metric at the last step of a ``max_steps`` trial."""

from __future__ import annotations

import csv
import json

import pytest
import pytorch_lightning as pl
import torch
import yaml

from ctxlit.fit import main
from tests.conftest import TINY


def val_rows(metrics_csv) -> list[dict]:
    return [r for r in csv.DictReader(metrics_csv.open()) if r.get("val/acc1")]


def test_run_dir_and_group_from_the_environment(tmp_path, offline_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trial = tmp_path / "runs" / "sweeps" / "demo" / "trial-003"
    monkeypatch.setenv("CTXLIT_RUN_DIR", str(trial))
    monkeypatch.setenv("WANDB_RUN_GROUP", "demo")
    # 64 images / 16 = 4 steps an epoch: max_steps=6 stops inside epoch 2.
    assert main([*TINY, "--trainer.max_steps=6", "--trainer.log_every_n_steps=1"]) == 0
    assert {"metrics.csv", "config.yaml", "summary.json", "checkpoints", "wandb"} <= {p.name for p in trial.iterdir()}
    assert not (tmp_path / "runs" / "synthetic").exists()  # nothing went to the config's own folder
    (wandb_run,) = (trial / "wandb").glob("offline-run-*")
    summary = json.loads((trial / "summary.json").read_text())
    assert summary["wandb"]["group"] == "demo"  # over the config's `group: synthetic`
    assert summary["wandb"]["dir"] == str(wandb_run)
    assert summary["best_checkpoint"].startswith(str(trial / "checkpoints"))
    # The last-step validation: one at the end of epoch 1 (step 4) and one at step 6.
    rows = val_rows(trial / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [3, 5]
    assert summary["metrics"]["val/acc1"] == pytest.approx(float(rows[-1]["val/acc1"]))
    assert summary["best"] == pytest.approx(max(float(r["val/acc1"]) for r in rows))
    assert summary["status"] == "finished" and summary["steps"] == 6
    assert summary["monitor"] == "val/acc1" and summary["task"] == "ClassificationTask"
    # The costs are the trained network's: recounted here from its own checkpoint.
    from torch.utils.flop_counter import FlopCounterMode

    task = pl.LightningModule.load_from_checkpoint(summary["last_checkpoint"], map_location="cpu")
    assert summary["params"] == sum(p.numel() for p in task.network.parameters())
    with FlopCounterMode(display=False) as counter:
        task.network.eval()(torch.zeros(1, *summary["input_shape"]))
    assert summary["flops"] == counter.get_total_flops()  # the default GC network has no SDPA
    assert summary["images_per_sec"] == pytest.approx(summary["train_images"] / summary["train_seconds"])
    # each epoch counts from the end of its first batch: (4 - 1) + (2 - 1) batches of 16
    assert summary["train_images"] == (3 + 1) * 16
    assert yaml.safe_load((trial / "config.yaml").read_text())["trainer"]["max_steps"] == 6


def test_summary_is_written_for_a_default_run_folder(tmp_path, offline_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--trainer.max_epochs=1"]) == 0
    version = tmp_path / "runs" / "synthetic" / "version_0"
    summary = json.loads((version / "summary.json").read_text())
    rows = val_rows(version / "metrics.csv")
    assert len(rows) == 1  # an epoch-end validation is not repeated at the last step
    assert summary["metrics"]["val/acc1"] == pytest.approx(float(rows[0]["val/acc1"]))
    assert summary["wandb"]["group"] == "synthetic"  # no WANDB_RUN_GROUP: the config's group


def test_failed_fit_writes_a_failed_summary(tmp_path, offline_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trial = tmp_path / "trial"
    monkeypatch.setenv("CTXLIT_RUN_DIR", str(trial))
    # An optimizer LR that turns the loss into NaN is not an error; a crash inside fit is:
    # a callback class that raises at the first batch.
    callback = "{class_path: tests.test_run_dir_and_summary.RaiseAtFirstBatch}"
    with pytest.raises(RuntimeError, match="boom"):
        main([*TINY, "--trainer.max_epochs=1", f"--trainer.callbacks=[{callback}]"])
    summary = json.loads((trial / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: boom"


class RaiseAtFirstBatch(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        raise RuntimeError("boom")
