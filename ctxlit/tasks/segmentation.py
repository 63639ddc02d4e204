"""Semantic segmentation: a dilated backbone, an FCN head with an optional context block.

The Cityscapes study is a dilated ResNet-50 with an FCN, GC, Non-local, GloRe or strip-pooling
head: ``backbone_options: {output_stride: 8}`` and ``head_block`` picks the
context block inside the head (see :class:`ctxlit.heads.FCNHead`)::

    --model.init_args.head_block=none        # plain FCN
    --model.init_args.head_block=gc          # GC head (registry name, defaults)
    --model.init_args.head_block=ctxlit.blocks.NonLocal --model.init_args.head_block.init_args.mode=dot_product

``block``/``placement``/``extra_plugins`` put blocks inside the backbone exactly as in
:class:`ctxlit.tasks.ClassificationTask`. HRNet backbones read the HRNetV2 representation
(all branches upsampled to stride 4 and concatenated, ``features="concat"``).

Evaluation (validation, test and predict alike, :meth:`SegmentationTask.predict_logits`): the
whole image or ``window``-sized crops (``sliding_window``), optionally averaged with the mirrored
image (``flip``), at each of ``scales`` (``[1.0]``: the input size only; the papers' multi-scale
test is ``[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]``): each scale resizes the image (bilinear), runs
that inference, resizes the logits back to the input size and turns them into probabilities;
the probabilities are averaged over the scales.

Metrics (validation): a running confusion matrix (torchmetrics ``MulticlassJaccardIndex``,
255 ignored) gives per-class IoU ``val/iou/<class name>``; a class with no pixel in the
ground truth *and* none predicted has no IoU (NaN) and is left out of ``val/miou``, the mean
over the other classes (a class predicted but absent from the ground truth counts as 0).
This is the Cityscapes/MMSegmentation convention; on the full Cityscapes val set every class
is present, so it equals the plain mean over 19 classes. ``val/pixel_acc`` counts the
non-ignored pixels predicted right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ctxlit.backbones import Placement, build_backbone, load_weights, study_plugins
from ctxlit.data.transforms import IGNORE_INDEX  # the label of unlabelled pixels, one value for data and loss
from ctxlit.errors import ConfigError
from ctxlit.heads import HEADS, FCNHead
from ctxlit.tasks.classification import BlockArg
from ctxlit.tasks.optim import (
    OptimizerName, budgeted_warmup, build_optimizer, resume_schedule, step_schedule, warmup_poly,
)
from ctxlit.tasks.speed import apply_speed_switches


class SegmentationTask(pl.LightningModule):
    """Per-pixel cross-entropy (255 ignored, optional OHEM), poly LR, mIoU; see the module docstring.

    Args:
        num_classes: number of classes; the CLI links it from the data module.
        backbone: a name from ``ctxlit.backbones.list_backbones()``.
        backbone_options: options of that backbone, e.g. ``{"output_stride": 8}``; HRNet gets
            ``features="concat"`` unless given.
        head: the head family (``ctxlit.heads.HEADS``): ``fcn`` (FCN, optionally with
            ``head_block``) or ``spnet`` (SPNet's head: 1x1 reduction, two Mixed Pooling Modules).
        head_block: context block inside the head (``"none"``: plain FCN head).
        head_channels: width of the head's convolutions.
        head_kernel_size: kernel of the head's convolutions (1 gives HRNetV2's 1x1 head).
        head_num_convs: convolutions in the head before the classifier (HRNetV2: 1).
        backbone_weights: a torchvision or ctxlit checkpoint (e.g. ImageNet) loaded into the
            backbone with :func:`ctxlit.backbones.load_weights`; what is missing is reported.
        block, placement, extra_plugins: blocks inside the backbone, as in ClassificationTask.
        aux_weight: weight of the auxiliary FCN head on stage 3 (0 disables it; it needs a
            backbone with at least 3 feature maps, i.e. not HRNet's concatenated features).
        ohem_thresh: with a value, online hard example mining: only pixels whose predicted
            probability of their true class is below it count, but at least ``ohem_min_kept``.
        optimizer, lr, momentum, weight_decay: SGD (momentum) or AdamW at peak ``lr``.
        warmup_steps: linear warmup (optimizer steps, at most a tenth of the run), then
            ``lr * (1 - t) ** poly_power``.
        sliding_window: evaluate on ``window``-sized crops every ``stride`` pixels, averaging
            the logits where they overlap, instead of on the whole image.
        flip: also evaluate the mirrored image and average the logits.
        scales: evaluate at each of these sizes (relative to the input) and average the
            probabilities; ``[1.0]`` is single-scale (the logits as they are).
        compile: ``torch.compile`` the backbone in place (state-dict names unchanged).
        channels_last: parameters and input images in channels_last (see :mod:`ctxlit.tasks.speed`).
    """

    #: what ``predict_step`` returns, for :class:`ctxlit.tasks.predictions.PredictionWriter`
    predicts = "label_maps"

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_options: dict[str, Any] | None = None,
        head: Literal["fcn", "spnet"] = "fcn",
        head_block: BlockArg = "none",
        head_channels: int = 512,
        head_kernel_size: int = 3,
        head_num_convs: int = 2,
        backbone_weights: str | None = None,
        block: BlockArg = "none",
        placement: Placement = Placement(),
        extra_plugins: list[dict[str, Any]] | None = None,
        aux_weight: float = 0.4,
        ohem_thresh: float | None = None,
        ohem_min_kept: int = 100_000,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_steps: int = 0,
        poly_power: float = 0.9,
        sliding_window: bool = False,
        window: tuple[int, int] = (512, 1024),
        stride: tuple[int, int] = (341, 682),
        flip: bool = False,
        scales: list[float] = [1.0],  # noqa: B006  (jsonargparse shows the default; never mutated)
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        options = dict(backbone_options or {})
        if backbone.startswith("hrnet"):
            options.setdefault("features", "concat")
        self.backbone = build_backbone(
            backbone, plugins=study_plugins(block, placement, extra_plugins), **options
        )
        if backbone_weights:
            print(f"[ctxlit] backbone weights: {load_weights(self.backbone, backbone_weights)}")
        channels = list(self.backbone.out_channels)
        self.head = HEADS[head](channels[-1], num_classes, channels=head_channels, block=head_block,
                                num_convs=head_num_convs, kernel_size=head_kernel_size)
        self.aux_head = auxiliary_head(backbone, channels, num_classes, aux_weight, head_channels)
        if ohem_thresh is not None and not 0 < ohem_thresh <= 1:
            raise ConfigError(f"ohem_thresh must be in (0, 1], got {ohem_thresh}")
        if sliding_window and (min(window) < 1 or min(stride) < 1):
            raise ConfigError(f"sliding window needs positive window and stride, got {window} and {stride}")
        check_scales(scales)
        self.val_iou = MulticlassJaccardIndex(num_classes, average=None, ignore_index=IGNORE_INDEX,
                                              zero_division=float("nan"))
        self.val_pixel_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
        self.class_names: list[str] | None = None
        apply_speed_switches(self, self.backbone, compile=compile, channels_last=channels_last)

    # -- network ----------------------------------------------------------------------------

    def forward_heads(self, images: Tensor, aux: bool = True) -> tuple[Tensor, Tensor | None]:
        """Main and auxiliary logits (None without an aux head or with ``aux=False``), both
        upsampled to the input size."""
        feats = self.backbone(images)
        size = images.shape[-2:]
        logits = F.interpolate(self.head(feats[-1]), size=size, mode="bilinear", align_corners=False)
        if not aux or self.aux_head is None:
            return logits, None
        return logits, F.interpolate(self.aux_head(feats[2]), size=size, mode="bilinear", align_corners=False)

    def forward(self, images: Tensor) -> Tensor:
        """Main-head logits ``(N, num_classes, H, W)`` at the input size."""
        return self.forward_heads(images, aux=False)[0]

    def predict_logits(self, images: Tensor) -> Tensor:
        """Evaluation logits ``(N, num_classes, H, W)`` at the input size (see the module
        docstring). Single-scale: the logits themselves. Several scales: the log of the
        probabilities averaged over the scales, so argmax, softmax and cross-entropy read them
        as logits."""
        scales = self.hparams.get("scales") or [1.0]  # checkpoints from before the option: [1.0]
        if list(scales) == [1.0]:
            return self.single_scale_logits(images)
        size = images.shape[-2:]
        # Probabilities, not logits, are averaged over scales, as MMSegmentation's aug_test (its
        # inference() returns softmax) and SPNet's tool/test.py do: each scale's logits have their
        # own magnitude (a scale that sees objects at their training size is more confident), and
        # a mean of logits lets the largest win regardless; probabilities are all in [0, 1].
        # Shapes: (N, 3, s*H, s*W) -> logits (N, K, s*H, s*W) -> resized (N, K, H, W) -> softmax.
        probs = sum(F.interpolate(self.single_scale_logits(rescale(images, scale)), size=size, mode="bilinear",
                                  align_corners=False).softmax(1) for scale in scales)
        return (probs / len(scales)).log()

    def single_scale_logits(self, images: Tensor) -> Tensor:
        """Whole image or sliding window at the size given, optionally averaged with the flip."""
        hp = self.hparams
        if hp.sliding_window:
            infer = lambda x: sliding_window_logits(self, x, hp.num_classes, hp.window, hp.stride)  # noqa: E731
        else:
            infer = self
        logits = infer(images)
        if hp.flip:
            logits = (logits + infer(images.flip(-1)).flip(-1)) / 2
        return logits

    # -- steps -------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        names = getattr(self.trainer.datamodule, "class_names", None) if self._trainer else None
        if names is not None and len(names) == self.hparams.num_classes:
            self.class_names = list(names)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        hp = self.hparams
        if hp.ohem_thresh is None:
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        return ohem_cross_entropy(logits, targets, hp.ohem_thresh, hp.ohem_min_kept)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets = batch[0], batch[1]
        logits, aux = self.forward_heads(images)
        loss = main = self.loss(logits, targets)
        if aux is not None:
            aux_loss = self.loss(aux, targets)
            loss = main + self.hparams.aux_weight * aux_loss
            self.log("train/aux_loss", aux_loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/main_loss", main)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """Train-id label maps ``(N, H, W)`` uint8, by the validation's inference (scales, flip,
        sliding window); :class:`ctxlit.tasks.predictions.PredictionWriter` writes them as PNGs."""
        return self.predict_logits(batch[0]).argmax(1).to(torch.uint8)

    def on_validation_epoch_end(self) -> None:
        self._log_ious("val")

    def on_test_epoch_end(self) -> None:
        self._log_ious("test")

    def _evaluate(self, batch, split: str) -> None:
        """Validation and test never run at once, so they share the metric objects."""
        images, targets = batch[0], batch[1]
        logits = self.predict_logits(images)
        preds = logits.argmax(1)
        self.val_iou.update(preds, targets)
        self.val_pixel_acc(preds, targets)
        if (targets != IGNORE_INDEX).any():  # an all-ignore batch has no loss (NaN)
            self.log(f"{split}/loss", F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX), sync_dist=True)
        self.log(f"{split}/pixel_acc", self.val_pixel_acc)

    def _log_ious(self, split: str) -> None:
        ious = self.val_iou.compute()  # synced over DDP ranks: the same on every rank
        self.val_iou.reset()
        names = self.class_names or [str(i) for i in range(len(ious))]
        # sync_dist averages equal values (every rank needs them for ModelCheckpoint).
        self.log(f"{split}/miou", mean_iou(ious), prog_bar=True, sync_dist=True)
        self.log_dict({f"{split}/iou/{name}": iou for name, iou in zip(names, ious)}, sync_dist=True)

    # -- optimisation --------------------------------------------------------------------------

    def on_train_start(self) -> None:
        resume_schedule(self.trainer)  # a resume with a larger max_epochs: the new schedule from its first step

    def configure_optimizers(self):
        hp = self.hparams
        opt = build_optimizer(self, hp.optimizer, hp.lr, hp.momentum, hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = budgeted_warmup(hp.warmup_steps, total)
        return step_schedule(opt, warmup_poly(warmup, total, hp.poly_power))


def auxiliary_head(backbone: str, channels: list[int], num_classes: int, aux_weight: float,
                   head_channels: int) -> FCNHead | None:
    """The auxiliary FCN head on stage-3 features (``channels[2]``), or None when ``aux_weight`` is 0."""
    if aux_weight <= 0:
        return None
    if len(channels) < 3:
        raise ConfigError(f"aux_weight={aux_weight} needs stage-3 features, but backbone {backbone!r} gives "
                          f"{len(channels)} feature map(s); set aux_weight: 0")
    return FCNHead(channels[2], num_classes, channels=max(head_channels // 2, 1), num_convs=1)


def check_scales(scales: Sequence[float]) -> None:
    """A non-empty list of finite numbers > 0, or one ConfigError naming the option."""
    ok = isinstance(scales, Sequence) and len(scales) > 0 and all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in scales)
    if not ok:
        raise ConfigError(f"--model.init_args.scales: must be a non-empty list of numbers > 0 (e.g. [1.0], or "
                          f"[0.5,0.75,1.0,1.25,1.5,1.75] for the papers' multi-scale test); got {scales!r}")


def rescale(images: Tensor, scale: float) -> Tensor:
    """``images`` resized by ``scale`` (bilinear; each side rounded, at least 1 pixel)."""
    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def mean_iou(ious: Tensor) -> Tensor:
    """Mean of the per-class IoUs that exist (NaN: class neither in ground truth nor predicted);
    NaN only if none exists."""
    present = ~torch.isnan(ious)
    return ious[present].mean() if present.any() else ious.new_tensor(float("nan"))


def ohem_cross_entropy(logits: Tensor, targets: Tensor, thresh: float, min_kept: int) -> Tensor:
    """Cross-entropy over the hard pixels: those whose probability of the true class is below
    ``thresh``; when fewer than ``min_kept`` are, the ``min_kept`` lowest-probability pixels
    instead (pixels labelled 255 never count). Mean over the kept pixels."""
    losses = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none").flatten()
    valid = targets.flatten() != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0  # no labelled pixel: zero loss that keeps the graph
    losses = losses[valid]
    probs = torch.exp(-losses.detach())  # softmax probability of the true class
    keep = probs < thresh
    if int(keep.sum()) < min_kept:
        keep = torch.zeros_like(keep)
        keep[torch.topk(probs, min(min_kept, probs.numel()), largest=False).indices] = True
    return losses[keep].mean() if keep.any() else losses.sum() * 0.0


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` every ``stride`` covering ``0..size``; the last
    one is moved back to end at ``size`` (one start, 0, when the window covers it all)."""
    if window >= size:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})


def sliding_window_logits(
    model: Callable[[Tensor], Tensor], images: Tensor, num_classes: int,
    window: Sequence[int], stride: Sequence[int],
) -> Tensor:
    """``model``'s logits over ``window``-sized crops every ``stride`` pixels, averaged where
    crops overlap. ``model`` maps ``(N, 3, h, w)`` to ``(N, num_classes, h, w)``; windows larger
    than the image shrink to it."""
    height, width = images.shape[-2:]
    (wh, ww), (sh, sw) = window, stride
    total = images.new_zeros(images.shape[0], num_classes, height, width)
    count = images.new_zeros(1, 1, height, width)
    for y in window_starts(height, wh, sh):
        for x in window_starts(width, ww, sw):
            crop = images[..., y:y + wh, x:x + ww]
            total[..., y:y + wh, x:x + ww] += model(crop)
            count[..., y:y + wh, x:x + ww] += 1
    return total / count
