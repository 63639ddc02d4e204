"""A truncated validation image (header intact, end cut off) stops a fit before it trains, not
after a whole epoch at the first validation: the validation files' tails are checked at setup."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctxlit.data.decode import check_image_header
from ctxlit.errors import DatasetError
from tests.data.conftest import write_image

FOOD = Path(__file__).resolve().parents[2] / "experiments" / "food" / "resnet18_112.yaml"


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_truncated_image_is_named_by_the_cheap_check_and_a_whole_one_passes(ext, tmp_path):
    whole = write_image(tmp_path / f"whole{ext}")
    check_image_header(whole)
    data = whole.read_bytes()
    (tmp_path / f"cut{ext}").write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(DatasetError, match=rf"cut\{ext}: image file is truncated"):
        check_image_header(tmp_path / f"cut{ext}")
    # bytes after JPEG's end marker (a camera's trailer) are not a truncation
    (tmp_path / f"trailer{ext}").write_bytes(data + b"\x00" * 100)
    check_image_header(tmp_path / f"trailer{ext}")


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_fit_with_a_truncated_validation_image_stops_before_training(ext, food_split, tmp_path, monkeypatch, capsys):
    from ctxlit.fit import main

    # the last validation file: past the sanity check's batches, read only by the first validation
    data = write_image(tmp_path / f"whole{ext}").read_bytes()
    (food_split / "val" / "salad" / f"zz_cut{ext}").write_bytes(data[: len(data) // 2])
    monkeypatch.chdir(tmp_path)
    code = main(["--config", str(FOOD), f"--data.init_args.root={food_split}", "--data.init_args.image_size=32",
                 "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=1", "--data.init_args.num_workers=0",
                 "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options={width: 8, stem: cifar}",
                 "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.logger=false",
                 "--trainer.enable_progress_bar=false", "--checkpoint.dirpath=ckpt",
                 "--trainer.callbacks+=tests.data.test_food.StepsAtFailure", "--trainer.callbacks.path=steps.txt"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: cannot decode image file ") and f"zz_cut{ext}: image file is truncated" in line
    assert (tmp_path / "steps.txt").read_text() == "0"  # not a step was trained
