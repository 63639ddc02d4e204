"""``python -m ctxlit.bench data --quick`` runs every pipeline and writes its JSON."""

from __future__ import annotations

import json
import math

import pytest

from ctxlit.bench.__main__ import main


@pytest.mark.slow
def test_data_benchmark_quick(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert main(["data", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    pipelines = [row["pipeline"] for row in report["results"]]
    assert pipelines == ["food train 112", "food train 112 cached", "food val 112 cached", "imagenet train 224",
                         "imagenet val 256/224", "cityscapes train 64x128 crop"]
    for row in report["results"]:
        assert row["images_per_s"] > 0 and row["reference_images_per_s"] > 0
        assert math.isclose(row["speedup"], row["images_per_s"] / row["reference_images_per_s"])
    printed = capsys.readouterr().out
    assert "PIL ref/s" in printed and "imagenet val 256/224" in printed
