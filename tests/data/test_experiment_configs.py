"""The data sections of experiments/{food,imagenet,cityscapes}/*.yaml build the real data modules."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

import ctxlit.data

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _data_sections():
    for folder in ("food", "imagenet", "cityscapes"):
        for path in sorted((EXPERIMENTS / folder).glob("*.yaml")):
            yield pytest.param(path, id=f"{folder}/{path.name}")


def cli_options(cls) -> set[str]:
    """The options the CLI offers for ``cls``: jsonargparse follows ``**kwargs`` into the bases."""
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data", fail_untyped=False)
    return {a.dest.removeprefix("data.") for a in parser._actions if a.dest.startswith("data.")}


@pytest.mark.parametrize("path", list(_data_sections()))
def test_data_section_builds(path, request):
    data = yaml.safe_load(path.read_text())["data"]
    module, _, name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    options = dict(data["init_args"])
    assert set(options) <= cli_options(cls), "unknown option in the YAML"
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
    args = [
        "--config", str(EXPERIMENTS / config),
        f"--data.init_args.root={root}",
        "--data.init_args.image_size=32", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
        "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options={width: 8, stem: cifar}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=2", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--checkpoint.dirpath=ckpt",
    ]
    assert main(args) == 0
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    state = __import__("torch").load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    # num_classes came from the data module, not from the YAML.
    classes = request.getfixturevalue(fixture)
    assert state["hyper_parameters"]["num_classes"] == len(
        [p for p in (classes / "train" if (classes / "train").is_dir() else classes).iterdir() if p.is_dir()])
    # predict: one row per validation image, its real path and label, the top-3 classes by probability
    assert main(["predict", *args, "--ckpt_path", "ckpt/last.ckpt", "--predictions.top_k=3",
                 "--predictions.path=pred.csv"]) == 0
    rows = list(csv.DictReader((tmp_path / "pred.csv").open()))
    data_class = yaml.safe_load((EXPERIMENTS / config).read_text())["data"]["class_path"].rsplit(".", 1)[1]
    dm = getattr(ctxlit.data, data_class)(str(root), num_workers=0)
    assert [r["image"] for r in rows] == [str(p) for p in dm.validation_files()]
    assert all(Path(r["image"]).is_file() and r["label"] == Path(r["image"]).parent.name for r in rows)
    for r in rows:
        probs = [float(r[f"p{j}"]) for j in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert len({r["top1"], r["top2"], r["top3"]}) == 3 and r["top1"] in dm.class_names


@pytest.mark.parametrize(
    "name, own, inherited",
    [
        ("FoodDeliveryDataModule", {"batch_size": "64", "image_size": "112", "balance": "none"},
         {"resize_size": "null", "cache_dir": "null", "num_workers": "null", "skip_unreadable": "False"}),
        ("ImageNetDataModule", {"batch_size": "256"},
         {"image_size": "224", "min_scale": "0.08", "hflip": "True", "val_batch_size": "null", "pin_memory": "null"}),
        ("CityscapesDataModule", {"batch_size": "8", "val_batch_size": "1", "crop_width": "1024"},
         {"num_workers": "null", "skip_unreadable": "False"}),
    ],
)
def test_help_shows_every_option_once_with_its_type_and_default(name, own, inherited, capsys):
    """Options declared once, in the class that owns them, reach ``--data.help`` through
    ``**kwargs``: a subclass's own default, and each base option with the base's default."""
    from ctxlit.fit import main

    with pytest.raises(SystemExit):
        main([f"--data.help=ctxlit.data.{name}"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in {**own, **inherited}.items():
        assert text.count(f"--data.{option} ") >= 1, option
        entry = text.split(f"--data.{option} ", 2)[-1]  # the help entry, after the usage line
        assert f"default: {default})" in entry.split("--data.")[0], (option, entry[:200])


@pytest.mark.parametrize("name", ["FoodDeliveryDataModule", "ImageNetDataModule", "CityscapesDataModule"])
def test_print_config_shows_every_option_of_the_class_chain(name, capsys):
    from ctxlit.fit import main

    with pytest.raises(SystemExit):
        main([f"--data=ctxlit.data.{name}", "--data.init_args.root=/nowhere", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    assert set(printed) == cli_options(getattr(ctxlit.data, name))
    assert {"num_workers", "skip_unreadable", "root", "batch_size"} <= set(printed)
