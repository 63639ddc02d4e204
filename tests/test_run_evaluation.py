"""``validate``/``test``/``predict --ckpt_path=RUN/checkpoints/X.ckpt`` with no ``--config``:
the run's own config, a training-only change accepted with a note, the results in the run
folder and, with W&B, the run's own W&B run continued (ctxlit.run_evaluation)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ctxlit.fit import main, with_defaults
from tests.conftest import offline_run_ids
from tests.data.conftest import make_class_tree, write_cityscapes_pair

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CSV_ONLY = "[{class_path: pytorch_lightning.loggers.CSVLogger, init_args: {save_dir: runs, name: cs}}]"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _wandb_ids(folder: Path) -> list[str]:
    return offline_run_ids(folder / "wandb")


def in_plain_folder(tmp_path: Path, monkeypatch) -> None:
    """Work in ``tmp_path`` as a user would: runs under ./runs (no sweep's run folder), W&B offline."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("CTXLIT_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
def test_a_food_runs_checkpoint_is_tested_in_its_run_folder_and_its_wandb_run(tmp_path, monkeypatch, capsys):
    in_plain_folder(tmp_path, monkeypatch)
    make_class_tree(tmp_path / "food", {"burger": 6, "noodles": 4, "salad": 3}, size=(40, 40))
    assert main(["--config", str(EXPERIMENTS / "food" / "resnet18_112.yaml"), "--data.init_args.root=food",
                 "--data.init_args.image_size=32", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
                 "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options.width=8",
                 "--trainer.max_epochs=1", "--trainer.precision=32", "--trainer.enable_progress_bar=false"]) == 0
    run = tmp_path / "runs" / "food" / "version_0"
    (wandb_id,) = _wandb_ids(tmp_path / "runs")
    assert json.loads((run / "summary.json").read_text())["wandb"]["id"] == wandb_id
    capsys.readouterr()

    # no --config: the run's own (the food one, lr 0.1); a new lr is a training option: a note
    assert main(["test", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--model.init_args.lr=0.02"]) == 0
    err = capsys.readouterr().err
    assert "[ctxlit] test: training-only options differ from the checkpoint's (lr 0.1 -> 0.02); not used here" in err
    assert f"results in {run / 'test'}; W&B run {wandb_id} continued" in err
    (tested,) = [r for r in _rows(run / "test" / "metrics.csv") if r.get("test/acc1")]
    record = json.loads((run / "test-metrics.json").read_text())
    assert record["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert record["metrics"]["test/acc1"] == pytest.approx(float(tested["test/acc1"]))
    assert record["metrics"]["test/loss"] == pytest.approx(float(tested["test/loss"]))
    assert (run / "test" / "config.yaml").is_file()
    # no new run folder and no new W&B run: the same id, continued in a second offline folder
    assert [p.name for p in (tmp_path / "runs" / "food").iterdir()] == ["version_0"]
    assert _wandb_ids(tmp_path / "runs") == [wandb_id, wandb_id]

    assert main(["predict", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--trainer.logger=false"]) == 0
    predictions = _rows(run / "predictions" / "predictions.csv")
    assert len(predictions) == 3 and {r["label"] for r in predictions} <= {"burger", "noodles", "salad"}
    assert [p.name for p in (tmp_path / "runs" / "food").iterdir()] == ["version_0"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
def test_a_cityscapes_runs_checkpoint_is_tested_and_predicted_in_its_run_folder(tmp_path, monkeypatch, capsys):
    in_plain_folder(tmp_path, monkeypatch)
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        for frame in range(2):
            write_cityscapes_pair(tmp_path / "cityscapes", split, city, frame)
    assert main(["--config", str(EXPERIMENTS / "cityscapes" / "gc_resnet50.yaml"), "--data.init_args.root=cityscapes",
                 "--data.init_args.crop_height=32", "--data.init_args.crop_width=32", "--data.init_args.num_workers=0",
                 "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options.width=8",
                 "--model.init_args.head_channels=16", "--trainer.max_steps=2", "--trainer.check_val_every_n_epoch=1",
                 "--trainer.precision=32", f"--trainer.logger={CSV_ONLY}", "--trainer.enable_progress_bar=false"]) == 0
    run = tmp_path / "runs" / "cs" / "version_0"
    val_row = [r for r in _rows(run / "metrics.csv") if r.get("val/miou")][-1]
    capsys.readouterr()

    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["test", "--ckpt_path", str(ckpt), "--model.init_args.lr=0.05"]) == 0
    err = capsys.readouterr().err
    assert "[ctxlit] test: training-only options differ from the checkpoint's (lr 0.01 -> 0.05)" in err
    record = json.loads((run / "test-metrics.json").read_text())
    # the last checkpoint's weights on the validation split (no test split): the fit's last val/miou
    assert record["metrics"]["test/miou"] == pytest.approx(float(val_row["val/miou"]), abs=1e-5)
    assert float(_rows(run / "test" / "metrics.csv")[-1]["test/miou"]) == pytest.approx(record["metrics"]["test/miou"])

    assert main(["predict", "--ckpt_path", str(ckpt)]) == 0
    pngs = sorted(p.name for p in (run / "predictions").glob("*.png"))
    assert pngs == [f"frankfurt_00000{i}_000019_{kind}.png" for i in range(2) for kind in ("color", "trainIds")]
    assert [p.name for p in (tmp_path / "runs" / "cs").iterdir()] == ["version_0"]


def test_only_an_evaluation_of_a_checkpoint_in_a_run_folder_takes_the_runs_config(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert with_defaults(["test", f"--ckpt_path={ckpt}"])[1:3] == ["--config", str(run / "config.yaml")]
    assert with_defaults(["predict", "--ckpt_path", ckpt])[1:3] == ["--config", str(run / "config.yaml")]
    assert with_defaults(["fit", f"--ckpt_path={ckpt}"])[2] != str(run / "config.yaml")  # a resume: its own config
    assert with_defaults(["test", "--config", "x.yaml", f"--ckpt_path={ckpt}"])[1:3] == ["--config", "x.yaml"]
    (run / "config.yaml").unlink()  # not a run folder: the default config, as before
    assert with_defaults(["test", f"--ckpt_path={ckpt}"])[2] != str(run / "config.yaml")
