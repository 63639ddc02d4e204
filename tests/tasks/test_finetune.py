"""Fine-tuning a classifier from a torchvision state dict file: the food config end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from ctxlit.errors import ConfigError
from ctxlit.fit import main
from ctxlit.tasks import ClassificationTask, Placement
from ctxlit.tasks.optim import parameter_groups
from tests.data.conftest import food_split  # noqa: F401  (the tiny train/val food tree, a fixture)

FOOD = Path(__file__).resolve().parents[2] / "experiments" / "food" / "resnet18_112.yaml"


@pytest.fixture
def torchvision_file(tmp_path) -> Path:
    """torchvision's ResNet-18 as its .pth files hold it (random weights, 1000 classes)."""
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_food_config_fine_tunes_from_torchvision_weights(tmp_path, monkeypatch, capsys, food_split, torchvision_file):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(FOOD), f"--data.init_args.root={food_split}", "--data.init_args.image_size=32",
            "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", "--model.init_args.backbone=resnet18",
            f"--model.init_args.backbone_weights={torchvision_file}", "--model.init_args.pretrained_lr_ratio=0.1",
            "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.max_steps=2",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--checkpoint.dirpath=ckpt"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[ctxlit] backbone weights: loaded 120 tensors" in out  # all but fc's 2 of torchvision's 122
    assert "fc.weight: checkpoint (1000, 512) vs model" in out and "layer3.1.plugins" in out  # the new GloRe
    assert "[ctxlit] classifier: the checkpoint's has another number of classes" in out
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    ref = torch.load(torchvision_file, weights_only=True)
    # two SGD steps moved the loaded conv, at lr * 0.1 (the optimiser groups in the checkpoint: the
    # loaded tensors' lr is a tenth of the new ones'); the new classifier is not the file's
    moved = (ckpt["state_dict"]["network.layer1.0.conv1.weight"] - ref["layer1.0.conv1.weight"]).abs().max()
    assert moved > 0 and ckpt["state_dict"]["network.fc.weight"].shape[0] == 3
    slow, fast = sorted({g["initial_lr"] for g in ckpt["optimizer_states"][0]["param_groups"]})
    assert fast > 0 and slow == pytest.approx(0.1 * fast)


def test_pretrained_parameters_get_their_own_lr_or_are_frozen(torchvision_file):
    """The loaded tensors train at lr * pretrained_lr_ratio, the new ones (SE, fc) at lr; with
    freeze_backbone only the new ones train; another shape outside the classifier is an error."""
    task = ClassificationTask(3, backbone="resnet18", block="se", placement=Placement(stages=[4], blocks="last"),
                              lr=0.1, backbone_weights=str(torchvision_file), pretrained_lr_ratio=0.1)
    names = {id(p): n for n, p in task.named_parameters()}
    groups = parameter_groups(task, 1e-4, 0.1, task.pretrained, 0.1)
    slow = {names[id(p)] for g in groups if g["lr"] == pytest.approx(0.01) for p in g["params"]}
    fast = {names[id(p)] for g in groups if g["lr"] == pytest.approx(0.1) for p in g["params"]}
    assert fast | slow == set(names.values()) and not fast & slow
    assert {n for n in fast if not n.startswith("network.layer4.1.plugins")} == {"network.fc.weight", "network.fc.bias"}
    assert "network.layer1.0.conv1.weight" in slow and len(slow) == 60  # of the 120 loaded tensors, 60 are BN buffers
    frozen = ClassificationTask(3, backbone="resnet18", backbone_weights=str(torchvision_file), freeze_backbone=True)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {"network.fc.weight", "network.fc.bias"}
    with pytest.raises(ConfigError, match="do not fit this network beyond its classifier: conv1.weight"):
        ClassificationTask(3, backbone="resnet18", backbone_weights=str(torchvision_file),
                           backbone_options={"width": 32})
    with pytest.raises(ConfigError, match="freeze_backbone=true needs backbone_weights"):
        ClassificationTask(3, backbone="resnet18", freeze_backbone=True)
