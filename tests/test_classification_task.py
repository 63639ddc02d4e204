"""The classification LightningModule: network assembly, loss, metrics, schedule."""

from __future__ import annotations

import functools
import math

import pytest
import pytorch_lightning as pl
import torch

from ctxlit.blocks import GlobalContext
from ctxlit.data import SyntheticContextDataModule
from ctxlit.tasks import ClassificationTask, Placement
from ctxlit.tasks.optim import parameter_groups, warmup_cosine

SMALL = dict(backbone="resnet10", backbone_options={"width": 8, "stem": "cifar"})


def count_modules(model: torch.nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def test_warmup_then_cosine_to_min_ratio():
    f = warmup_cosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [round(f(s), 4) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "block, placement, expected",
    [
        ("none", Placement(), 0),
        (None, Placement(), 0),
        ("gc", Placement(), 3),  # one block in each of stages 2, 3, 4 of a ResNet-10
        ("gc", Placement(stages=[4]), 1),
        (functools.partial(GlobalContext, fusion="mul", ratio=0.25), Placement(stages="all"), 4),
        ("gc", Placement(stages=[3, 4], position="after_add"), 2),
    ],
)
def test_block_and_placement_build_the_expected_network(block, placement, expected):
    task = ClassificationTask(num_classes=4, block=block, placement=placement, **SMALL)
    assert count_modules(task.network, GlobalContext) == expected
    if callable(block):
        assert all(m.fusion == "mul" for m in task.network.modules() if isinstance(m, GlobalContext))
    logits = task(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 4)


def test_extra_plugins_are_added_after_the_block_under_study():
    extra = [{"block": "se", "stages": [4], "position": "after_add"}]
    task = ClassificationTask(num_classes=4, block="gc", placement=Placement(stages=[4]), extra_plugins=extra, **SMALL)
    names = [type(m).__name__ for m in task.network.modules() if type(m).__name__ in {"GlobalContext", "SqueezeExcite"}]
    assert names == ["GlobalContext", "SqueezeExcite"]


def test_training_step_loss_uses_label_smoothing_and_class_weights():
    task = ClassificationTask(num_classes=4, label_smoothing=0.1, **SMALL)
    logits = torch.randn(6, 4)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1)
    torch.testing.assert_close(task._loss(logits, targets), expected)
    task.class_weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weighted = torch.nn.functional.cross_entropy(logits, targets, weight=task.class_weights, label_smoothing=0.1)
    torch.testing.assert_close(task._loss(logits, targets), weighted)


def test_fit_learns_and_logs_lr_schedule(tmp_path):
    pl.seed_everything(0)
    dm = SyntheticContextDataModule(train_size=64, val_size=16, image_size=32, glyph_size=5, batch_size=16)
    task = ClassificationTask(num_classes=dm.num_classes, block="gc", lr=0.1, warmup_epochs=1, **SMALL)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 8
    # Warmup (4 steps = 1 epoch) then cosine: the LR peaked at lr and came back down.
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.get_last_lr()[0] < 0.1
    assert 0 <= float(trainer.callback_metrics["val/acc1"]) <= 1
    assert any(not torch.equal(before[k], v) for k, v in task.state_dict().items())


def test_no_weight_decay_on_biases_and_norms():
    extra = [{"block": "nl", "options": {"mode": "concatenation"}, "stages": [4], "position": "after_add"}]
    task = ClassificationTask(num_classes=4, block="gc", extra_plugins=extra, **SMALL)
    decay, no_decay = parameter_groups(task, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in task.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    ln = "network.layer4.0.plugins.after_conv2.0.transform_add.1.weight"  # GC's LayerNorm([C, 1, 1])
    assert task.get_parameter(ln).ndim == 3 and ln in exempt
    assert all(n.endswith("bias") or ".bn" in n or "downsample.1" in n or "transform_add.1" in n for n in exempt)
    concat = [n for n in decayed if "concat_project" in n]
    assert concat and all(task.get_parameter(n).ndim == 1 for n in concat)  # a 1-D weight, decayed
    assert all(n.endswith(("weight", "concat_project")) for n in decayed)
