"""The data sections of experiments/{food,imagenet,cityscapes}/*.yaml build the real data modules."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _data_sections():
    for folder in ("food", "imagenet", "cityscapes"):
        for path in sorted((EXPERIMENTS / folder).glob("*.yaml")):
            yield pytest.param(path, id=f"{folder}/{path.name}")


@pytest.mark.parametrize("path", list(_data_sections()))
def test_data_section_builds(path, request):
    data = yaml.safe_load(path.read_text())["data"]
    module, _, name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    options = dict(data["init_args"])
    assert set(options) <= set(inspect.signature(cls).parameters), "unknown option in the YAML"
    fixture = {"FoodDeliveryDataModule": "food_split", "ImageNetDataModule": "imagenet_tree",
               "CityscapesDataModule": "cityscapes_tree"}[name]
    root = request.getfixturevalue(fixture)
    options.update(root=str(root), num_workers=0)
    dm = cls(**options)
    assert dm.num_classes > 0 and len(dm.class_names) == dm.num_classes and len(dm.input_shape) == 3


@pytest.mark.parametrize(
    "config, fixture",
    [("food/resnet18_112.yaml", "food_split"), ("food/resnet18_112.yaml", "food_flat"),
     ("imagenet/resnet50.yaml", "imagenet_tree")],
    ids=["food-train-val", "food-one-folder", "imagenet"],
)
def test_experiment_trains_through_the_cli(config, fixture, request, tmp_path, monkeypatch):
    """``python -m ctxlit.fit --config experiments/...`` on a tiny tree in the real layout,
    with the experiment's model shrunk so two steps take seconds on a CPU."""
    from ctxlit.fit import main

    root = request.getfixturevalue(fixture)
    monkeypatch.chdir(tmp_path)
    code = main([
        "--config", str(EXPERIMENTS / config),
        f"--data.init_args.root={root}",
        "--data.init_args.image_size=32", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
        "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options={width: 8, stem: cifar}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=2", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--checkpoint.dirpath=ckpt",
    ])
    assert code == 0
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    state = __import__("torch").load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    # num_classes came from the data module, not from the YAML.
    classes = request.getfixturevalue(fixture)
    assert state["hyper_parameters"]["num_classes"] == len(
        [p for p in (classes / "train" if (classes / "train").is_dir() else classes).iterdir() if p.is_dir()])
