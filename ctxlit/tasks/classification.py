"""Image classification: a backbone from the zoo, one block under study, placed by config.

The network is ``build_backbone(backbone, num_classes=..., plugins=[...], **backbone_options)``.
The block under study and where it goes are plain values, so every ablation knob is one
dotted key on the command line, in a YAML config and in a W&B sweep::

    --model.init_args.block=none                                   # the baseline
    --model.init_args.block=gc                                     # registry name, defaults
    --model.init_args.block=ctxlit.blocks.GlobalContext \
        --model.init_args.block.init_args.fusion=mul               # any option of the block
    --model.init_args.placement.stages=[3,4]
    --model.init_args.placement.position=after_add

Further placements (several blocks in one network) go in ``extra_plugins`` in the format
of :func:`ctxlit.backbones.build_backbone`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Union

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ctxlit.backbones import Placement, build_backbone, load_weights, study_plugins
from ctxlit.errors import ConfigError
from ctxlit.blocks import BLOCKS
from ctxlit.tasks.optim import (
    OptimizerName, budgeted_warmup, build_optimizer, resume_schedule, step_schedule, warmup_cosine,
)
from ctxlit.tasks.speed import apply_speed_switches

#: A block registry name (built with its defaults), "none" for the baseline, or a block class
#: given as ``class_path`` + ``init_args`` (the CLI turns it into ``channels -> module``).
BlockName = Literal.__getitem__(("none", *BLOCKS))
BlockArg = Union[BlockName, Callable[[int], nn.Module], None]


def load_pretrained(network: nn.Module, path: str, freeze: bool) -> frozenset[int]:
    """Load ``path`` (torchvision, timm or ctxlit weights) into ``network`` and report what was
    new (plugins, a classifier of another size) and what was ignored; returns the ids of the
    loaded parameters. Only the classifier may differ in shape (another ``num_classes``: it
    keeps its initialisation); with ``freeze`` the loaded parameters stop training."""
    report = load_weights(network, path, strict_shapes=False)
    print(f"[ctxlit] backbone weights: {report}")
    classifier = {n for n, m in network.named_modules() if m is _classifier(network)}
    other = [k for k, *_ in report.shape_mismatch if k.rsplit(".", 1)[0] not in classifier]
    if other:
        raise ConfigError(f"weights in {path} do not fit this network beyond its classifier: {', '.join(other[:5])}")
    if report.shape_mismatch:
        print("[ctxlit] classifier: the checkpoint's has another number of classes; it starts from its initialisation")
    loaded = set(report.loaded)
    params = [p for n, p in network.named_parameters() if n in loaded]
    for p in params if freeze else ():
        p.requires_grad_(False)
    return frozenset(id(p) for p in params)


def _classifier(network: nn.Module) -> nn.Module | None:
    """The final linear layer (ResNet ``fc``, HRNet ``classifier``)."""
    return getattr(network, "fc", None) or getattr(network, "classifier", None)


class ClassificationTask(pl.LightningModule):
    """Cross-entropy classification with top-1/top-5 accuracy, SGD or AdamW, warmup + cosine.

    Args:
        num_classes: number of classes; the CLI links it from the data module.
        backbone: a name from ``ctxlit.backbones.list_backbones()``.
        backbone_options: keyword options of that backbone (``width``, ``stem``, ...).
        block: the block under study; ``"none"`` (or null) trains the plain backbone.
        placement: where ``block`` goes.
        extra_plugins: further plugin specs, in ``build_backbone``'s format.
        label_smoothing: cross-entropy label smoothing.
        optimizer: ``"sgd"`` (Nesterov off, momentum ``momentum``) or ``"adamw"``.
        lr: peak learning rate, reached after warmup.
        warmup_epochs: linear warmup length in epochs (fractions allowed), at most a tenth of
            the run's steps (``optim.MAX_WARMUP_FRACTION``).
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio``.
        use_class_weights: weight the loss by the data module's ``class_weights`` if it has them.
        backbone_weights: a local checkpoint (torchvision ``.pth``, timm, ctxlit ``.ckpt``) loaded
            into the network with :func:`ctxlit.backbones.load_weights`; what is new (plugins,
            a classifier for another ``num_classes``) and what is ignored is printed.
        freeze_backbone: keep the loaded parameters fixed (train only the new ones).
        pretrained_lr_ratio: the loaded parameters train at ``lr * pretrained_lr_ratio``.
        compile: ``torch.compile`` the network in place (state-dict names unchanged; see
            :mod:`ctxlit.tasks.speed`).
        channels_last: parameters and input images in channels_last memory format.
    """

    #: what ``predict_step`` returns, for :class:`ctxlit.tasks.predictions.PredictionWriter`
    predicts = "probabilities"

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        backbone_options: dict[str, Any] | None = None,
        block: BlockArg = "none",
        placement: Placement = Placement(),
        extra_plugins: list[dict[str, Any]] | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.0,
        use_class_weights: bool = True,
        backbone_weights: str | None = None,
        freeze_backbone: bool = False,
        pretrained_lr_ratio: float = 1.0,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.network = build_backbone(
            backbone,
            num_classes=num_classes,
            plugins=study_plugins(block, placement, extra_plugins),
            **(backbone_options or {}),
        )
        self.pretrained: frozenset[int] = frozenset()  # ids of the parameters loaded from backbone_weights
        if backbone_weights:
            self.pretrained = load_pretrained(self.network, backbone_weights, freeze_backbone)
        elif freeze_backbone:
            raise ConfigError("freeze_backbone=true needs backbone_weights (a checkpoint to keep fixed)")
        if not pretrained_lr_ratio > 0:
            raise ConfigError(f"pretrained_lr_ratio must be > 0; got {pretrained_lr_ratio!r}")
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        # top-5 of 5 classes or fewer is always 1: not measured there.
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=5, average="micro") if num_classes > 5 else None
        self.class_weights: torch.Tensor | None = None
        apply_speed_switches(self, self.network, compile=compile, channels_last=channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    # -- steps -------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        weights = getattr(self.trainer.datamodule, "class_weights", None)  # None without a data module
        if self.hparams.use_class_weights and weights is not None:
            self.class_weights = torch.as_tensor(weights, dtype=torch.float32)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = self._loss(logits, targets)
        self.train_acc1(logits, targets)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Class probabilities (N, K): ``ctxlit.tasks.predictions.PredictionWriter`` writes them."""
        return self(batch[0]).softmax(dim=1)

    def _evaluate(self, batch, split: str) -> None:
        """``<split>/loss``, ``<split>/acc1`` (and ``acc5``); validation and test never run at
        once, so they share the metric objects."""
        images, targets = batch
        logits = self(images)
        # Metric objects (not floats) so Lightning syncs exact counts across DDP ranks.
        self.val_acc1(logits, targets)
        self.log(f"{split}/loss", F.cross_entropy(logits, targets), sync_dist=True)
        self.log(f"{split}/acc1", self.val_acc1, prog_bar=True)
        if self.val_acc5 is not None:
            self.val_acc5(logits, targets)
            self.log(f"{split}/acc5", self.val_acc5)

    # -- optimisation --------------------------------------------------------------------------

    def on_train_start(self) -> None:
        resume_schedule(self.trainer)  # a resume with a larger max_epochs: the new schedule from its first step

    def configure_optimizers(self):
        hp = self.hparams
        opt = build_optimizer(self, hp.optimizer, hp.lr, hp.momentum, hp.weight_decay,
                              self.pretrained, hp.pretrained_lr_ratio)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        # estimated_stepping_batches has loaded the train dataloader, so its length is known.
        per_epoch = self.trainer.num_training_batches / self.trainer.accumulate_grad_batches
        per_epoch = per_epoch if math.isfinite(per_epoch) and per_epoch > 0 else total
        warmup = budgeted_warmup(int(round(hp.warmup_epochs * per_epoch)), total)
        return step_schedule(opt, warmup_cosine(warmup, total, hp.min_lr_ratio))
