"""A few real training steps through Lightning with the real ClassificationTask."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from ctxlit.data import FoodDeliveryDataModule, ImageNetDataModule
from ctxlit.tasks import ClassificationTask


class Recorder(pl.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((batch[0].dtype, tuple(batch[0].shape), batch[1].dtype, float(batch[0].mean())))


def _fit(dm, tmp_path, steps=4):
    task = ClassificationTask(dm.num_classes, backbone="resnet10", backbone_options={"width": 8, "stem": "cifar"}, lr=0.05)
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder], default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=dm)
    metrics = trainer.validate(task, datamodule=dm, verbose=False)[0]
    return task, recorder, metrics


@pytest.mark.slow
def test_food_training_steps_with_loss_weights(food_flat, tmp_path):
    dm = FoodDeliveryDataModule(str(food_flat), batch_size=4, num_workers=0, image_size=32, balance="loss_weights")
    task, recorder, metrics = _fit(dm, tmp_path)
    assert len(recorder.batches) == 4
    dtype, shape, target_dtype, mean = recorder.batches[0]
    assert dtype == torch.float32 and shape == (4, 3, 32, 32) and target_dtype == torch.int64
    assert abs(mean) < 3  # normalised, not 0..255
    # The task picked the data module's class weights up for its loss.
    assert torch.allclose(task.class_weights, dm.class_weights)
    assert 0.0 <= metrics["val/acc1"] <= 1.0 and torch.isfinite(torch.tensor(metrics["val/loss"]))


@pytest.mark.slow
def test_imagenet_training_steps(imagenet_tree, tmp_path):
    dm = ImageNetDataModule(str(imagenet_tree), batch_size=6, num_workers=0, image_size=48, resize_size=56)
    task, recorder, metrics = _fit(dm, tmp_path, steps=3)
    assert [b[1] for b in recorder.batches] == [(6, 3, 48, 48)] * 3
    assert task.class_weights is None
    assert "val/acc5" not in metrics  # 3 classes: top-5 is only measured above 5
