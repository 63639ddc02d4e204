"""A run pre-empted inside an epoch (SIGTERM) saves its state, and resuming from that
checkpoint trains on exactly the batches, and the augmentations, the uninterrupted run did:
the final weights are equal (issue 11, items 4 and 9)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from ctxlit.fit import main
from tests.conftest import TINY, run_fit
from tests.data.conftest import make_class_tree

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def _straight_then_preempted(base: list[str], step: int, resumed_extra: list[str], capsys) -> tuple[dict, dict, dict]:
    assert main([*base, "--checkpoint.dirpath=straight"]) == 0
    sigterm = ["--trainer.callbacks+=tests.conftest.SigtermAtStep", f"--trainer.callbacks.step={step}"]
    assert main([*base, "--checkpoint.dirpath=split", *sigterm]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"[ctxlit] SIGTERM at step {step}: saved " in err and "split/last.ckpt" in err
    interrupted = torch.load("split/last.ckpt", map_location="cpu", weights_only=False)
    assert interrupted["global_step"] == step
    stopped = interrupted["state_dict"]
    assert main([*base, *resumed_extra, "--checkpoint.dirpath=split", "--ckpt_path=split/last.ckpt"]) == 0
    return _weights(Path("straight/last.ckpt")), stopped, _weights(Path("split/last.ckpt"))


def _assert_equal_runs(straight: dict, stopped: dict, resumed: dict) -> None:
    assert straight.keys() == resumed.keys()
    assert any(not torch.equal(stopped[k], straight[k]) for k in straight)  # the resume did train
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = [*TINY, "--trainer.logger=false", "--trainer.max_epochs=3"]  # 4 steps per epoch
    straight, stopped, resumed = _straight_then_preempted(base, 6, [], capsys)  # 2 batches into epoch 1
    _assert_equal_runs(straight, stopped, resumed)


@pytest.mark.slow
def test_food_resume_mid_epoch_is_exact_with_its_augmentation_and_any_worker_count(tmp_path, monkeypatch, capsys):
    """Random crops and flips come from a generator seeded per sample and epoch, so the resumed
    run, here with two DataLoader workers where the first had none, draws the same ones."""
    root = make_class_tree(tmp_path / "food", {"burger": 12, "noodles": 6, "salad": 3})
    monkeypatch.chdir(tmp_path)
    base = ["--config", str(EXPERIMENTS / "food" / "resnet18_112.yaml"), f"--data.init_args.root={root}",
            "--data.init_args.image_size=32", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
            "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options={width: 8, stem: cifar}",
            "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
            "--trainer.max_epochs=3", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    straight, stopped, resumed = _straight_then_preempted(base, 5, ["--data.init_args.num_workers=2"], capsys)
    _assert_equal_runs(straight, stopped, resumed)


@pytest.mark.slow
def test_resume_from_an_every_n_train_steps_checkpoint_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """The finding of issue 11: a mid-epoch checkpoint resumed with weights up to 0.03 off."""
    monkeypatch.chdir(tmp_path)
    base = [*TINY, "--trainer.logger=false", "--trainer.max_epochs=3"]  # 4 steps per epoch
    keep = ["--checkpoint.every_n_train_steps=5", "--checkpoint.save_top_k=-1", "--checkpoint.filename=step{step}",
            "--checkpoint.monitor=null"]
    assert main([*base, *keep, "--checkpoint.dirpath=straight"]) == 0
    mid = torch.load("straight/step5.ckpt", map_location="cpu", weights_only=False)
    assert mid["global_step"] == 5 and mid["epoch"] == 1  # one batch into epoch 1
    assert main([*base, "--checkpoint.dirpath=resumed", "--ckpt_path=straight/step5.ckpt"]) == 0
    _assert_equal_runs(_weights(Path("straight/last.ckpt")), mid["state_dict"], _weights(Path("resumed/last.ckpt")))


@pytest.mark.slow
def test_ddp_resume_mid_epoch_reads_each_ranks_remaining_shard(tmp_path, offline_env):
    """Two CPU processes: each rank skips its own trained batches of the step checkpoint."""
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    base = [*TINY, *ddp, "--trainer.logger=false", "--trainer.max_epochs=3"]  # 2 steps per epoch and rank
    keep = ["--checkpoint.every_n_train_steps=3", "--checkpoint.save_top_k=-1", "--checkpoint.filename=step{step}",
            "--checkpoint.monitor=null"]
    straight = run_fit([*base, *keep, "--checkpoint.dirpath=straight"], cwd=tmp_path, env=offline_env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    mid = torch.load(tmp_path / "straight" / "step3.ckpt", map_location="cpu", weights_only=False)
    assert mid["global_step"] == 3 and mid["epoch"] == 1
    resumed = run_fit([*base, "--checkpoint.dirpath=resumed", "--ckpt_path=straight/step3.ckpt"],
                      cwd=tmp_path, env=offline_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_equal_runs(_weights(tmp_path / "straight" / "last.ckpt"), mid["state_dict"],
                       _weights(tmp_path / "resumed" / "last.ckpt"))
