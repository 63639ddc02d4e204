"""``--cost``: each group's network measured side by side (ctxlit.bench.models) on the CPU, its
ratios to the baseline in the table, the answers and the JSON."""

from __future__ import annotations

import json

import pytest

from ctxlit.report.__main__ import main
from tests.report.written_runs import config, write_run


@pytest.mark.slow
def test_cost_orders_a_block_above_none_and_the_json_carries_the_ratios(tmp_path, capsys):
    pytest.importorskip("ctxlit.bench.models", reason="--cost measures through ctxlit.bench.models (bench models)")
    for seed in range(2):
        write_run(tmp_path / f"none-{seed}", config("none", seed), 0.40 + 0.01 * seed)
        write_run(tmp_path / f"nl-{seed}", config({"class_path": "ctxlit.blocks.NonLocal"}, seed), 0.50 + 0.01 * seed)
    # at 64x128 Non-local's attention over 32x64 positions in stage 2 is most of the step (~3x the
    # FLOPs of no block), a difference no load on shared cores can reverse
    assert main([str(tmp_path), "--cost", "--cost-batch", "2", "--cost-size", "64x128", "--format", "json"]) == 0
    (study,) = json.loads(capsys.readouterr().out)["studies"]
    cost = {g["label"]: g["cost"] for g in study["groups"]}
    assert cost["none"]["train_ratio"] == 1.0 and cost["none"]["inference_ratio"] == 1.0
    # Non-local in every block of stages 2-4: more FLOPs and more time than no block, measured here
    assert cost["NonLocal"]["flop_ratio"] > 2.0 and cost["NonLocal"]["train_ratio"] > 1.5
    assert cost["NonLocal"]["input_shape"] == [2, 3, 64, 128]
    assert "Timing noise: the baseline's training step moved by" in cost["NonLocal"]["how"]
    (effect,) = study["effects"]
    assert effect["cost_ratio"] == pytest.approx(cost["NonLocal"]["train_ms"] / cost["none"]["train_ms"])


@pytest.mark.parametrize("argv, message", [
    (["--cost-batch", "0"], "--cost-batch 0: give a batch of 1 or more"),
    (["--cost-rounds", "0"], "--cost-rounds 0: give 1 or more rounds"),
])
def test_bad_cost_options_are_one_error(tmp_path, capsys, argv, message):
    write_run(tmp_path / "none-0", config("none", 0), 0.4)
    assert main([str(tmp_path), "--cost", *argv, "--format", "md"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
