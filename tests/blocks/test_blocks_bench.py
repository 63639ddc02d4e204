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
    assert [r["block"] for r in data["blocks"]] == list(BLOCKS)
    for row in data["blocks"]:
        assert row["shape"] == [2, 64, 16, 16]
        assert row["time_ms"] > 0 and row["conv3x3"]["time_ms"] > 0
        assert row["flop_ratio"] == row["flops"] / row["conv3x3"]["flops"]
        assert row["saved_bytes"] > 0 and row["peak_bytes"] is None
        assert row["time_ms"] <= row["time_median_ms"]
    nl = next(r for r in data["blocks"] if r["block"] == "nl")
    # NL's attention matmuls are counted: 2 * (2 * L^2 * Ci) per image on top of the 1x1 convs
    assert nl["flops"] > 2 * 2 * (2 * 256 * 256 * 32)
    fast = {r["block"]: r for r in data["fast_paths"]}
    assert set(fast) == {"nl", "lr"}
    assert fast["nl"]["saved_reduction"] > 1  # SDPA keeps no L x L matrix
    assert fast["lr"]["saved_reduction"] > 4  # no k^2 copy of the input kept for backward
    out = capsys.readouterr().out
    assert "fast paths vs explicit references" in out and "wrote" in out


def test_unknown_block_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--blocks", "gc,xyz"])
    assert "unknown block(s) xyz" in capsys.readouterr().err
    assert "gc" in BLOCKS
