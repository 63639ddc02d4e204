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
