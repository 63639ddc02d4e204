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
from ctxlit.tasks.optim import budgeted_warmup, parameter_groups, warmup_cosine

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


class RecordLR(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_fit_follows_warmup_then_cosine_and_updates_weights(tmp_path):
    pl.seed_everything(0)
    dm = SyntheticContextDataModule(train_size=64, val_size=16, image_size=(16, 32), batch_size=16)
    task = ClassificationTask(num_classes=dm.num_classes, block="gc", lr=0.1, warmup_epochs=1, min_lr_ratio=0.1, **SMALL)
    record = RecordLR()
    trainer = pl.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[record])
    before = {k: v.clone() for k, v in task.state_dict().items()}
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 40
    # 4 steps per epoch: warmup over epoch 1 (a tenth of the run), cosine to 0.1 * lr over the other 36.
    expected = [0.1 * warmup_cosine(4, 40, 0.1)(step) for step in range(40)]
    assert record.lrs == pytest.approx(expected)
    # val/acc1 is the trained network's top-1 on the validation set, recomputed by hand
    task.eval()
    with torch.no_grad():
        pairs = [(task(x).argmax(1), y) for x, y in dm.val_dataloader()]
    correct = sum(int((p == y).sum()) for p, y in pairs)
    assert float(trainer.callback_metrics["val/acc1"]) == pytest.approx(correct / sum(len(y) for _, y in pairs))
    assert any(not torch.equal(before[k], v) for k, v in task.state_dict().items())


@pytest.mark.parametrize(("requested", "total", "expected"), [
    (64, 640, 64),   # the default run: one epoch of ten, at the cap
    (4, 4, 0),       # a one-epoch trial with warmup_epochs=1: no longer all warm-up
    (64, 64, 6),
    (5, 1000, 5),
    (-3, 100, 0),
])
def test_warmup_is_at_most_a_tenth_of_the_run(requested, total, expected):
    assert budgeted_warmup(requested, total) == expected


def test_short_trial_spends_most_steps_after_warmup(tmp_path):
    """One epoch with warmup_epochs=1 used to end at peak LR; now 90% of it decays."""
    dm = SyntheticContextDataModule(train_size=160, val_size=16, image_size=(16, 32), batch_size=16)
    task = ClassificationTask(num_classes=dm.num_classes, block="none", lr=0.1, warmup_epochs=1, **SMALL)
    record = RecordLR()
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[record])
    trainer.fit(task, datamodule=dm)
    assert len(record.lrs) == 10
    assert record.lrs[0] == pytest.approx(0.05) and record.lrs[1] == pytest.approx(0.1)
    assert record.lrs[-1] < 0.01


def test_no_weight_decay_on_biases_and_norms():
    extra = [{"block": "nl", "options": {"mode": "concatenation"}, "stages": [4], "position": "after_add"}]
    task = ClassificationTask(num_classes=4, block="gc", extra_plugins=extra, **SMALL)
    decay, no_decay = parameter_groups(task, 0.05, lr=0.1)
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


@pytest.mark.parametrize("num_classes, has_top5", [(4, False), (5, False), (6, True), (1000, True)])
def test_top5_is_measured_only_when_it_can_be_below_one(num_classes, has_top5):
    task = ClassificationTask(num_classes=num_classes, **SMALL)
    assert (task.val_acc5 is not None) == has_top5
    if has_top5:
        logits = torch.arange(num_classes, dtype=torch.float32).repeat(2, 1)  # ranks: last class first
        task.val_acc5(logits, torch.tensor([num_classes - 5, num_classes - 6]))
        assert float(task.val_acc5.compute()) == pytest.approx(0.5)


def test_throughput_leaves_out_startup_and_mid_epoch_validation(monkeypatch):
    from types import SimpleNamespace

    from ctxlit.tasks import callbacks

    ticks = iter([0.0, 1.0, 1.0, 11.0, 12.0, 13.0, 20.0, 30.0])  # 2nd-4th batch: 3 s, validation: 10 s
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(ticks))
    logged = {}
    trainer = SimpleNamespace(world_size=2)
    module = SimpleNamespace(log=lambda name, value, **kw: logged.__setitem__(name, value))
    batch = (torch.zeros(8, 3, 4, 4), torch.zeros(8))
    summary = callbacks.RunSummary()
    summary.on_train_epoch_start(trainer, module)
    summary.on_train_batch_end(trainer, module, None, batch, 0)  # t=0: start of timing
    summary.on_train_batch_end(trainer, module, None, batch, 1)  # t=1
    summary.on_validation_start(trainer, module)  # t=1
    summary.on_validation_end(trainer, module)  # t=11
    summary.on_train_batch_end(trainer, module, None, batch, 2)  # t=12
    summary.on_train_batch_end(trainer, module, None, batch, 3)  # t=13
    summary.on_validation_start(trainer, module)  # t=20: the epoch-end validation, after timing
    summary.on_validation_end(trainer, module)  # t=30
    summary.on_train_epoch_end(trainer, module)
    assert logged["train/images_per_sec"] == pytest.approx(3 * 8 * 2 / 3.0)  # 3 batches x 8 x 2 ranks in 3 s
    assert summary.images_per_sec == pytest.approx(16.0)
