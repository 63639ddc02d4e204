"""The speed switches of both tasks (``compile``, ``channels_last``) and EMA through Lightning's
``EMAWeightAveraging`` callback: they change how fast a step runs, never what it computes or
the names a checkpoint holds."""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ctxlit.errors import ConfigError
from ctxlit.fit import DEFAULT_CONFIG, main
from ctxlit.preflight import check_resume
from ctxlit.tasks import ClassificationTask, SegmentationTask
from tests.conftest import TINY

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
SMALL = {
    ClassificationTask: dict(num_classes=4, backbone="resnet10", backbone_options={"width": 8, "stem": "cifar"},
                             block="gc"),
    SegmentationTask: dict(num_classes=3, backbone="resnet18", backbone_options={"output_stride": 8},
                           head_channels=16, aux_weight=0.4, head_block="gc"),
}


def build(task_class, **switches):
    torch.manual_seed(0)  # the same initial weights for every switch setting
    return task_class(**SMALL[task_class], **switches)


def loss_of(task, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # the same dropout masks (the segmentation heads' dropout)
    if isinstance(task, SegmentationTask):
        logits, aux = task.forward_heads(images)
        return task.loss(logits, targets) + task.hparams.aux_weight * task.loss(aux, targets)
    return F.cross_entropy(task(images), targets)


@pytest.mark.parametrize("task_class", [ClassificationTask, SegmentationTask])
def test_both_switches_are_task_options_listed_in_the_docstring(task_class):
    params = inspect.signature(task_class).parameters
    for name in ("compile", "channels_last"):
        assert params[name].default is False and params[name].annotation in (bool, "bool")
        assert f"        {name}: " in task_class.__doc__


def test_switches_are_plain_dotted_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["--model.init_args.compile=true", "--model.init_args.channels_last=true", "--print_config"])
    options = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert options["compile"] is True and options["channels_last"] is True


@pytest.mark.parametrize("task_class", [ClassificationTask, SegmentationTask])
def test_channels_last_parameters_inputs_and_the_same_loss(task_class):
    plain, fast = build(task_class), build(task_class, channels_last=True)
    weights = [p for p in fast.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in plain.parameters() if p.dim() == 4)
    first_conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    seen = []
    first_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = torch.randn(2, 3, 32, 48)  # made in the default (NCHW) order, as a data loader gives them
    targets = torch.randint(0, 3, (2, 32, 48)) if task_class is SegmentationTask else torch.tensor([1, 3])
    losses = [loss_of(task.train(), images, targets) for task in (plain, fast)]
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for loss in losses:
        loss.backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("task_class", [ClassificationTask, SegmentationTask])
def test_compile_keeps_the_state_dict_names(task_class):
    plain, compiled = build(task_class), build(task_class, compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert not any("_orig_mod" in name for name in compiled.state_dict())
    compiled.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(compiled.state_dict(), strict=True)


def test_a_resume_may_change_the_speed_switches_and_nothing_else():
    from jsonargparse import Namespace

    saved = {"_class_path": "ctxlit.tasks.ClassificationTask", "lr": 0.1, "compile": False, "channels_last": False}
    given = Namespace(class_path="ctxlit.tasks.ClassificationTask",
                      init_args=Namespace(lr=0.1, compile=True, channels_last=True))
    check_resume(saved, given, [])  # the switches alone: no error
    given.init_args.lr = 0.2
    with pytest.raises(ConfigError, match=r"changes its model: lr: 0.1 in the checkpoint, 0.2 here\. "):
        check_resume(saved, given, [])


def documented_callbacks(config: Path) -> str:
    """The commented ``trainer.callbacks`` example of ``config``, uncommented, as a YAML file."""
    lines = config.read_text().splitlines()
    start = lines.index("  # callbacks:")
    block = [lines[start]] + [line for line in itertools.takewhile(lambda x: x.startswith("  #   "), lines[start + 1:])]
    return "trainer:\n" + "\n".join(line.replace("  # ", "  ", 1) for line in block) + "\n"


@pytest.mark.parametrize("config", [DEFAULT_CONFIG, *sorted(EXPERIMENTS.glob("*/*.yaml"))], ids=lambda p: p.stem)
def test_every_config_documents_ema_as_a_working_callback_example(config):
    callbacks = yaml.safe_load(documented_callbacks(config))["trainer"]["callbacks"]
    assert callbacks[0]["class_path"] == "pytorch_lightning.callbacks.EMAWeightAveraging"
    assert 0 < callbacks[0]["init_args"]["decay"] < 1 and "bf16-mixed" in config.read_text()


def test_ema_callback_averages_and_its_weights_are_the_checkpoints_state_dict(tmp_path, monkeypatch):
    """Lightning's EMAWeightAveraging, added as a trainer callback: the checkpoint's state_dict
    holds the averaged weights, ``current_model_state`` the raw ones (Lightning's layout), and
    the two differ after a few steps."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ema.yaml").write_text(documented_callbacks(DEFAULT_CONFIG))
    ema = ["--config", "ema.yaml"]  # the default config's commented example, uncommented
    assert main(["--config", str(DEFAULT_CONFIG), *ema, *TINY, "--trainer.logger=false", "--trainer.max_steps=4",
                 "--checkpoint.dirpath=ck"]) == 0
    checkpoint = torch.load(tmp_path / "ck" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 4  # one update per optimizer step
    weights = [k for k, v in raw.items() if v.is_floating_point() and k.endswith("weight")]
    assert any(not torch.equal(averaged[k], raw[k]) for k in weights)
    # The averaged state is a whole task: it loads strictly, also into a compiled one.
    task = ClassificationTask.load_from_checkpoint(tmp_path / "ck" / "last.ckpt", compile=True)
    torch.testing.assert_close(task.state_dict(), {k: v for k, v in averaged.items()}, rtol=0, atol=0)


@pytest.mark.slow
def test_a_compiled_channels_last_fit_checkpoint_loads_into_a_plain_task(tmp_path, monkeypatch):
    """A real fit with ``compile`` and ``channels_last`` (CPU inductor: tens of seconds): its
    checkpoint has the plain names and loads strictly into a task with both switches off."""
    monkeypatch.chdir(tmp_path)
    switches = ["--model.init_args.compile=true", "--model.init_args.channels_last=true",
                "--model.init_args.block=none"]  # no block: a smaller graph to compile
    assert main([*TINY, "--trainer.logger=false", "--trainer.max_steps=1", "--checkpoint.dirpath=ck", *switches]) == 0
    saved = torch.load(tmp_path / "ck" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["compile"] is True
    assert not any("_orig_mod" in name for name in saved["state_dict"])
    task = ClassificationTask.load_from_checkpoint(tmp_path / "ck" / "last.ckpt", compile=False, channels_last=False)
    torch.testing.assert_close(task.state_dict(), saved["state_dict"], rtol=0, atol=0)
