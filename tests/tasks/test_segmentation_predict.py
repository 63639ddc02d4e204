"""``python -m ctxlit.fit predict`` on a Cityscapes checkpoint: train-id and colour PNGs per
validation image, by the validation's inference (multi-scale + flip here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctxlit.data.cityscapes import CityscapesDataModule
from ctxlit.fit import main
from ctxlit.tasks import SegmentationTask
from ctxlit.tasks.predictions import cityscapes_palette, prediction_stem
from tests.data.conftest import cityscapes_tree  # noqa: F401  (the tiny two-city tree, a fixture)

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "cityscapes"
MODEL = {"backbone": "resnet10", "backbone_options": {"width": 8, "output_stride": 8}, "head_channels": 16,
         "head": "spnet", "scales": [0.75, 1.0, 1.5], "flip": True}
# A few rows of the official table (cityscapesScripts labels.py), written out independently.
OFFICIAL_COLOURS = {0: (128, 64, 128), 1: (244, 35, 232), 10: (70, 130, 180), 13: (0, 0, 142), 18: (119, 11, 32)}


def test_palette_is_the_official_one():
    palette = cityscapes_palette()
    for train_id, colour in OFFICIAL_COLOURS.items():
        assert tuple(palette[train_id]) == colour
    assert len({tuple(c) for c in palette[:19]}) == 19 and not palette[19:].any()
    assert prediction_stem("/d/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png") == \
        "frankfurt_000000_000294"


@pytest.mark.slow  # a fit and a predict through the CLI
@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
def test_predict_writes_train_id_and_colour_pngs_named_after_each_image(cityscapes_tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    args = [
        "--config", str(EXPERIMENTS / "spnet_resnet50.yaml"), f"--data.init_args.root={cityscapes_tree}",
        "--data.init_args.crop_height=32", "--data.init_args.crop_width=32", "--data.init_args.num_workers=0",
        *[f"--model.init_args.{k}={v}" for k, v in MODEL.items() if k != "backbone_options"],
        "--model.init_args.backbone_options={width: 8, output_stride: 8}",
        "--trainer.max_steps=1", "--trainer.precision=32", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--checkpoint.dirpath=ckpt",
    ]
    assert main(args) == 0
    assert main(["predict", *args, "--ckpt_path", "ckpt/last.ckpt", "--predictions.path=pred"]) == 0
    assert "[ctxlit] predictions: 2 label maps (train ids and colours) -> pred" in capsys.readouterr().out
    # How a checkpoint is evaluated may change outside fit (no --resume.allow_changed), never in fit.
    single_scale = ["--model.init_args.scales=[1.0]", "--model.init_args.flip=false", "--ckpt_path", "ckpt/last.ckpt"]
    assert main(["test", *args, *single_scale]) == 0
    assert main(["fit", *args, *single_scale, "--trainer.max_steps=2"]) == 2
    assert "scales: [0.75, 1.0, 1.5] in the checkpoint, [1.0] here" in capsys.readouterr().err

    dm = CityscapesDataModule(str(cityscapes_tree), num_workers=0)
    dm.setup("validate")
    stems = [p.name.removesuffix("_leftImg8bit.png") for p in dm.val_images]
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(
        f"{s}_{kind}.png" for s in stems for kind in ("trainIds", "color"))  # no temp file left over
    task = SegmentationTask.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", map_location="cpu").eval()
    assert task.hparams.scales == [0.75, 1.0, 1.5] and task.hparams.flip and task.hparams.block == "spm"
    palette = cityscapes_palette()
    for i, stem in enumerate(stems):
        train_ids = Image.open(tmp_path / "pred" / f"{stem}_trainIds.png")
        colour = Image.open(tmp_path / "pred" / f"{stem}_color.png")
        assert train_ids.mode == "L" and colour.mode == "RGB" and train_ids.size == colour.size == (64, 32)
        ids = np.asarray(train_ids)
        assert ids.dtype == np.uint8 and ids.max() <= 18  # every pixel a class, no 255
        assert np.array_equal(np.asarray(colour), palette[ids])
        # the validation's inference: multi-scale + flip of the checkpoint's weights
        image = dm.normalize(dm.val_dataset[i][0][None])
        with torch.no_grad():
            expected = task.predict_logits(image).argmax(1)[0].numpy()
        assert np.array_equal(ids, expected)


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    from ctxlit.errors import ConfigError
    from ctxlit.tasks.predictions import PredictionWriter

    (tmp_path / "pred").write_text("not a folder")
    callback = PredictionWriter(path=str(tmp_path / "pred"))
    trainer = type("T", (), {"log_dir": str(tmp_path)})()
    with pytest.raises(ConfigError, match=r"--predictions.path .*pred: a file; segmentation writes a folder of PNGs"):
        callback.on_predict_start(trainer, SegmentationTask(3, backbone="resnet10", backbone_options={"width": 8},
                                                            head_channels=8))
