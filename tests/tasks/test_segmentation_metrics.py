"""Segmentation loss (255 ignored, OHEM), mIoU / per-class IoU against a hand-computed
confusion matrix, and the poly learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ctxlit.tasks import SegmentationTask
from ctxlit.tasks.optim import warmup_poly
from ctxlit.tasks.segmentation import mean_iou, ohem_cross_entropy

TINY = {"backbone": "resnet10", "backbone_options": {"width": 8}, "head_channels": 8}


def _by_hand(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax of the true class over the pixels not labelled 255."""
    logp = logits.log_softmax(1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    t = targets.flatten()
    keep = t != 255
    return -logp[keep, t[keep]].mean()


def test_loss_ignores_255_pixels():
    torch.manual_seed(0)
    task = SegmentationTask(4, **TINY)
    logits = torch.randn(2, 4, 3, 5)
    targets = torch.randint(0, 4, (2, 3, 5))
    targets[0, 0, :] = 255
    targets[1, 2, 1:4] = 255
    loss = task.loss(logits, targets)
    torch.testing.assert_close(loss, _by_hand(logits, targets))
    # Whatever the network says at ignored pixels changes nothing.
    changed = logits.clone()
    changed[0, :, 0, :] = 100 * torch.randn(4, 5)
    torch.testing.assert_close(task.loss(changed, targets), loss)
    # ...while the mean over all pixels (255 mapped to a class) differs.
    assert not torch.isclose(loss, F.cross_entropy(logits, targets.clamp(max=3)))


def test_ohem_keeps_hard_pixels_but_at_least_min_kept():
    # One image, 6 pixels, 2 classes; probabilities of the true class set by hand.
    probs = torch.tensor([0.95, 0.9, 0.6, 0.3, 0.2, 0.99])
    targets = torch.tensor([[[0, 1, 0, 1, 0, 255]]])
    p_true = probs.clone()
    logit_true = torch.log(p_true / (1 - p_true))  # two classes: sigmoid(logit_true) = p_true
    logits = torch.zeros(1, 2, 1, 6)
    logits[0, targets[0, 0].clamp(max=1), 0, torch.arange(6)] = logit_true
    losses = -torch.log(probs[:5])
    # thresh 0.7: pixels with p < 0.7 are 0.6, 0.3, 0.2 (the 255 pixel never counts).
    torch.testing.assert_close(ohem_cross_entropy(logits, targets, 0.7, min_kept=2), losses[2:5].mean())
    # min_kept 4 > 3 hard pixels: the 4 lowest probabilities.
    torch.testing.assert_close(ohem_cross_entropy(logits, targets, 0.7, min_kept=4), losses[1:5].mean())
    # min_kept above the labelled count: every labelled pixel, i.e. plain cross-entropy.
    torch.testing.assert_close(ohem_cross_entropy(logits, targets, 0.7, min_kept=100),
                               F.cross_entropy(logits, targets, ignore_index=255))
    task = SegmentationTask(2, ohem_thresh=0.7, ohem_min_kept=2, **TINY)
    torch.testing.assert_close(task.loss(logits, targets), losses[2:5].mean())
    all_ignored = torch.full_like(targets, 255)
    assert ohem_cross_entropy(logits.requires_grad_(), all_ignored, 0.7, 2).item() == 0.0


# Two validation batches (1 image of 2x3 each); 255 = ignore. Confusion matrix by hand
# (rows: ground truth, columns: prediction), the ignored pixels left out:
#   t0: p0 2, p1 1          IoU0 = 2 / (3 + 2 - 2) = 2/3
#   t1: p1 3                IoU1 = 3 / (3 + 4 - 3) = 3/4
#   t2: p2 2, p3 1          IoU2 = 2 / (3 + 2 - 2) = 2/3
#   t3: -  (predicted once) IoU3 = 0 / (0 + 1 - 0) = 0
#   t4: -  (never predicted) IoU4 undefined: left out of the mean
TARGETS = [torch.tensor([[0, 0, 1], [1, 2, 255]]), torch.tensor([[0, 2, 2], [255, 255, 1]])]
PREDS = [torch.tensor([[0, 1, 1], [1, 2, 0]]), torch.tensor([[0, 2, 3], [3, 1, 1]])]
NAMES = ["road", "sidewalk", "building", "wall", "fence"]


class FixedPredictions(pl.LightningDataModule):
    class_names = NAMES

    def __init__(self, batches: int = 2) -> None:
        super().__init__()
        self.batches = batches

    def val_dataloader(self):
        # The "image" carries the prediction; the task below turns it into one-hot logits.
        batches = [(p[None, None].float(), t[None]) for p, t in zip(PREDS, TARGETS)][: self.batches]
        return DataLoader(batches, batch_size=None)  # already batched: one image each


class Oracle(SegmentationTask):
    def predict_logits(self, images):
        return F.one_hot(images[:, 0].long(), self.hparams.num_classes).permute(0, 3, 1, 2).float()


def test_miou_and_per_class_iou_from_the_running_confusion_matrix():
    task = Oracle(5, **TINY)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.validate(task, datamodule=FixedPredictions())
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    expected = {"road": 2 / 3, "sidewalk": 3 / 4, "building": 2 / 3, "wall": 0.0}
    for name, iou in expected.items():
        assert m[f"val/iou/{name}"] == pytest.approx(iou), name
    assert math.isnan(m["val/iou/fence"])
    assert m["val/miou"] == pytest.approx(sum(expected.values()) / 4)  # not / 5
    assert m["val/pixel_acc"] == pytest.approx(7 / 9)
    # Validating again starts from an empty confusion matrix (no carry-over between epochs):
    # the first batch alone gives IoU 1/2, 2/3, 1 for classes 0-2 and none for 3 and 4.
    trainer.validate(task, datamodule=FixedPredictions(batches=1))
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert m["val/miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert math.isnan(m["val/iou/wall"]) and m["val/iou/building"] == pytest.approx(1.0)


def test_mean_iou_skips_nan_only():
    assert mean_iou(torch.tensor([0.5, float("nan"), 0.0])).item() == pytest.approx(0.25)
    assert math.isnan(mean_iou(torch.tensor([float("nan")])).item())


def test_warmup_poly():
    f = warmup_poly(4, 104, power=0.9)
    assert [f(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f(4) == 1.0
    assert f(54) == pytest.approx(0.5 ** 0.9)
    assert f(104) == 0.0 and f(200) == 0.0
    assert warmup_poly(0, 10, 1.0)(5) == pytest.approx(0.5)
