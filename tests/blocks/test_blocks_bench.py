"""The block benchmark runs end to end (quick mode) and writes the documented JSON."""

from __future__ import annotations

import json

import pytest

from ctxlit.bench.blocks import main
from ctxlit.blocks import BLOCKS


def test_quick_benchmark_writes_json(tmp_path, capsys):
    path = tmp_path / "out" / "blocks.json"
    assert main(["--quick", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["device"] == "cpu" and data["batch_size"] == 2
    assert "saved_tensors_hooks" in data["memory_note"]
    assert data["malloc"].startswith("malloc: ")  # the allocator a fit has (ctxlit.utils.malloc), said
    assert [r["block"] for r in data["blocks"]] == list(BLOCKS)
    for row in data["blocks"]:
        assert row["shape"] == [2, 64, 28, 28]
        assert row["time_ms"] > 0 and row["conv3x3"]["time_ms"] > 0
        assert row["cpu_ms"] > 0 and row["conv3x3"]["cpu_ms"] > 0
        assert row["cpu_ratio"] == row["cpu_ms"] / row["conv3x3"]["cpu_ms"]
        assert row["time_ratio"] == row["time_median_ms"] / row["conv3x3"]["time_median_ms"]
        assert row["flop_ratio"] == row["flops"] / row["conv3x3"]["flops"]
        assert row["saved_bytes"] > 0 and row["peak_bytes"] is None
        assert row["time_ms"] <= row["time_median_ms"]
    nl = next(r for r in data["blocks"] if r["block"] == "nl")
    # NL's attention matmuls are counted: 2 * (2 * L^2 * Ci) per image on top of the 1x1 convs
    assert nl["flops"] > 2 * 2 * (2 * 784 * 784 * 32)
    fast = {r["block"]: r for r in data["fast_paths"]}
    assert set(fast) == {"nl", "lr"}
    assert fast["nl"]["saved_reduction"] > 1  # SDPA keeps no L x L matrix
    assert fast["lr"]["saved_reduction"] > 6  # no k^2 copy of the input kept for backward
    assert fast["nl"]["mmcv"]["cpu_ms"] > 0 and fast["nl"]["vs_mmcv_cpu"] > 0
    out = capsys.readouterr().out
    assert "fast paths vs explicit references" in out and "wrote" in out


def test_unknown_block_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--blocks", "gc,xyz"])
    assert "unknown block(s) xyz" in capsys.readouterr().err
    assert "gc" in BLOCKS


def test_optional_columns_and_baseline_from_another_checkout(tmp_path):
    """--channels-last and --baseline add their columns; the baseline here is this checkout."""
    from pathlib import Path

    import ctxlit

    path = tmp_path / "blocks.json"
    root = Path(ctxlit.__file__).parent.parent
    argv = ["--blocks", "se,sk", "--shapes", "64x8x8", "--batch-size", "2", "--repeats", "1",
            "--channels-last", "--baseline", str(root), "--no-fast-paths", "--nl-shapes", "", "--json", str(path)]
    assert main(argv) == 0
    data = json.loads(path.read_text())
    assert data["options"]["channels_last"] and data["fast_paths"] == []
    for row in data["blocks"]:
        assert row["channels_last"]["cpu_ratio"] > 0 and row["baseline"]["speedup_cpu"] > 0


def test_nl_shapes_compare_with_the_mmcv_style_reference(tmp_path):
    path = tmp_path / "blocks.json"
    argv = ["--blocks", "se", "--shapes", "64x8x8", "--batch-size", "1", "--repeats", "1",
            "--nl-shapes", "1x128x6x5", "--json", str(path)]
    assert main(argv) == 0
    rows = [r for r in json.loads(path.read_text())["fast_paths"] if r["shape"] == [1, 128, 6, 5]]
    assert len(rows) == 1 and rows[0]["block"] == "nl" and rows[0]["vs_mmcv_cpu"] > 0


def test_mmcv_style_reference_equals_the_block():
    import torch

    from ctxlit.bench.blocks import mmcv_style_non_local
    from ctxlit.blocks import NonLocal

    torch.manual_seed(0)
    block = NonLocal(32)
    torch.nn.init.ones_(block.bn.weight)  # make the attention branch count
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(mmcv_style_non_local(block, x), block._reference_forward(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block(x), block._reference_forward(x), rtol=1e-5, atol=1e-5)
