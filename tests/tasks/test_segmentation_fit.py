"""``python -m ctxlit.fit`` on the Cityscapes experiment configs, end to end on a tiny tree."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
import yaml

from ctxlit.fit import main
from ctxlit.tasks import SegmentationTask
from tests.data.conftest import cityscapes_tree  # noqa: F401  (the tiny two-city tree, a fixture)

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "cityscapes"


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
def test_fcn_resnet50_config_trains_a_gc_head_and_keeps_the_best_miou(tmp_path, monkeypatch, capsys, cityscapes_tree):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    args = [
        "--config", str(EXPERIMENTS / "fcn_resnet50.yaml"), f"--data.init_args.root={cityscapes_tree}",
        "--data.init_args.crop_height=32", "--data.init_args.crop_width=32", "--data.init_args.num_workers=0",
        "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options.width=8",
        "--model.init_args.head_channels=16", "--model.init_args.head_block=gc",
        "--trainer.max_steps=2", "--trainer.check_val_every_n_epoch=1", "--trainer.precision=32",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--checkpoint.dirpath=ckpt",
    ]
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0
    assert "validation mIoU" in out and "best checkpoint" in out
    # per-class IoU in the summary: the 19 train classes in train-id order, wrapped
    iou_lines = out[out.index("IoU per class"):].split("\nparameters")[0]
    cells = re.split(r",\s*|\n\s*", iou_lines[len("IoU per class"):].strip())
    names = [cell.rsplit(" ", 1)[0] for cell in cells]
    assert len(names) == 19 and names[0] == "road" and names[-1] == "bicycle" and "traffic light" in names
    assert all(len(line) <= 72 for line in iou_lines.splitlines())
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "last.ckpt" in files and any(f.startswith("best-") for f in files), files
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    monitor = next(v for k, v in ckpt["callbacks"].items() if k.startswith(("ModelCheckpoint", "BestAndLastCheckpoint")))
    assert monitor["monitor"] == "val/miou" and 0.0 <= float(monitor["best_model_score"]) <= 1.0
    hp = ckpt["hyper_parameters"]
    assert hp["num_classes"] == 19 and hp["head_block"] == "gc" and hp["backbone_options"]["output_stride"] == 8
    assert any(k.startswith("head.block.") for k in ckpt["state_dict"])  # the GC block is in the head
    assert any(k.startswith("aux_head.") for k in ckpt["state_dict"])
    # `test` on the last checkpoint: the data module has no test split, so its validation split,
    # said on stdout; test/miou equals the last validation's val/miou (the checkpoint's, at step 2)
    # The metrics come from the CSV logger's file, not Lightning's printed table (drawn with rich
    # where it is installed).
    val_miou = float(re.search(r"validation mIoU\s+([0-9.]+)", out).group(1))
    csv_logger = '{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "csv"}}'
    assert main(["test", *args, f"--trainer.logger={csv_logger}", "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "[ctxlit] CityscapesDataModule has no test split: testing on the validation split" in out
    (metrics_file,) = (tmp_path / "csv").rglob("metrics.csv")
    (tested,) = [row for row in csv.DictReader(metrics_file.open()) if row.get("test/miou")]
    assert float(tested["test/miou"]) == pytest.approx(val_miou, abs=1e-4) and 0 <= float(tested["test/iou/road"]) <= 1


def test_hrnet_config_builds_hrnetv2_with_a_1x1_head():
    config = yaml.safe_load((EXPERIMENTS / "hrnet_w18.yaml").read_text())
    assert config["checkpoint"] == {"monitor": "val/miou", "mode": "max"}
    args = config["model"]["init_args"]
    assert config["model"]["class_path"] == "ctxlit.tasks.SegmentationTask" and args["backbone"] == "hrnet_w18"
    task = SegmentationTask(19, **args).eval()
    assert task.head.conv_in[0].in_channels == 18 + 36 + 72 + 144 and task.aux_head is None
    with torch.no_grad():
        assert task(torch.randn(1, 3, 32, 32)).shape == (1, 19, 32, 32)
