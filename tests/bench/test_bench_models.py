"""``python -m ctxlit.bench models``: whole networks from configs, run folders, sweep files,
backbone names and timm, timed side by side; tiny shapes so each test takes seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ctxlit.backbones import describe_plugins
from ctxlit.bench.__main__ import main as bench_main
from ctxlit.bench.models import (
    TIMM_MISSING, Settings, _pick_baseline, config_networks, main, measure_networks, preset_gpu_imagenet, resolve,
)

REPO = Path(__file__).resolve().parents[2]
TINY = ["--batch", "2", "--size", "32", "--rounds", "2", "--warmup", "1"]


def experiment(path: Path, width: int, **init_args) -> Path:
    """A ctxlit classification config: ResNet-10 of ``width`` on the synthetic data (4 classes)."""
    config = {
        "model": {"class_path": "ctxlit.tasks.ClassificationTask", "init_args": {
            "backbone": "resnet10", "backbone_options": {"width": width, "stem": "cifar"}, "block": "none", **init_args}},
        "data": {"class_path": "ctxlit.data.SyntheticContextDataModule",
                 "init_args": {"image_size": [16, 32], "train_size": 8, "val_size": 8}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def test_wider_network_is_slower_and_its_ratios_are_printed_and_written(tmp_path, capsys):
    """Width 8 -> 24 is ~9x the conv FLOPs: the wider network must come out slower in both steps,
    with ratios to the first network in the table and the JSON."""
    narrow, wide = experiment(tmp_path / "narrow.yaml", 8), experiment(tmp_path / "wide.yaml", 24)
    out_json = tmp_path / "out" / "models.json"
    assert main([str(narrow), str(wide), *TINY, "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    rows = {r["network"]: r for r in data["networks"]}
    assert list(rows) == ["narrow", "wide"] and data["threads"] == 1 and data["batch"] == 2
    assert rows["narrow"]["train_ratio"] == rows["narrow"]["infer_ratio"] == 1.0
    wide_row = rows["wide"]
    assert wide_row["reference"] == "narrow"
    assert wide_row["train_ratio"] == wide_row["train_ms"]["median"] / rows["narrow"]["train_ms"]["median"]
    assert wide_row["flop_ratio"] > 7 and wide_row["params"] > 7 * rows["narrow"]["params"]
    assert wide_row["train_ratio"] > 1.5 and wide_row["infer_ratio"] > 1.5
    assert wide_row["saved_bytes"] > 2 * rows["narrow"]["saved_bytes"] and wide_row["peak_bytes"] is None
    assert wide_row["input_shape"] == [2, 3, 32, 32]
    assert wide_row["train_images_per_s"] == pytest.approx(2 / wide_row["train_ms"]["median"] * 1e3)
    for row in rows.values():  # forward + backward + step is several forwards' work
        assert row["train_ms"]["median"] > 1.5 * row["infer_ms"]["median"]
    t = wide_row["train_ms"]
    assert t["min"] <= t["q1"] <= t["median"] <= t["q3"] <= t["max"]
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("wide "))
    assert f"{wide_row['train_ratio']:.2f}x" in line and f"{wide_row['infer_ratio']:.2f}x" in line
    assert "threads 1" in printed and "wrote" in printed


def test_config_size_classes_and_baseline_by_position(tmp_path):
    """Without --size a config runs at its own image_size; its classes come from the data module;
    --baseline 2 makes the second network the reference (a run folder is labelled by its name)."""
    run = tmp_path / "version_3"
    experiment(run / "config.yaml", 8)
    nets = resolve(str(run))
    assert [n.label for n in nets] == ["version_3"] and nets[0].image_size == (16, 32)
    assert nets[0].build().fc.out_features == 4  # SyntheticContextDataModule's num_shapes default
    settings = Settings(batch=2, rounds=1, warmup=1)
    rows = measure_networks(["resnet10", str(run)], settings, baseline=2)
    assert [r["input_shape"] for r in rows] == [[2, 3, 224, 224], [2, 3, 16, 32]]
    assert rows[1]["train_ratio"] == 1.0 and rows[0]["reference"] == "version_3"
    assert rows[0]["train_ratio"] > 1  # 224x224 ResNet-10 (width 64) vs a width-8 one at 16x32


def test_baseline_is_a_label_or_a_one_based_position():
    labels = ["none", "gc", "se"]
    assert [_pick_baseline(labels, b) for b in (None, "gc", 3, "1")] == [0, 1, 2, 0]


@pytest.mark.slow  # ctxlit's CLI parses each configuration (seconds each)
def test_sweep_file_gives_one_network_per_configuration(tmp_path):
    """Seeds and trainer keys do not make another network; blocks do, labelled by their values."""
    sweep = {
        "program": "ctxlit/fit.py", "method": "grid", "metric": {"name": "val/acc1", "goal": "maximize"},
        "parameters": {
            "model.init_args.block": {"values": ["none", "se", *(
                {"class_path": "ctxlit.blocks.GlobalContext", "init_args": {"ratio": 0.25, "fusion": f}}
                for f in ("add", "mul"))]},
            "seed_everything": {"values": [0, 1]},
            "trainer.max_epochs": {"value": 1},
        },
        "command": ["${env}", "${interpreter}", "-m", "ctxlit.fit", "--config",
                    str(REPO / "experiments/synthetic/default.yaml"), "--config", "${args_json_file}"],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    nets = config_networks(str(path))
    # a block's label keeps only the options that vary (not the ratio all GC values share)
    assert [n.label for n in nets] == ["none", "se", "GlobalContext(fusion=add)", "GlobalContext(fusion=mul)"]
    assert all(n.image_size == (16, 64) for n in nets)  # the default config's own shape
    plain, se, _, gc_mul = (n.build() for n in nets)
    assert not describe_plugins(plain) and {p.block for p in describe_plugins(se)} == {"se"}
    assert {(p.module_class, p.options["fusion"], p.options["ratio"]) for p in describe_plugins(gc_mul)} == {
        ("GlobalContext", "mul", 0.25)}
    assert plain.fc.out_features == se.fc.out_features == 4


@pytest.mark.parametrize("argv, message", [
    (["resnet5"], "unknown network 'resnet5' (did you mean resnet50"),
    (["no/such/config.yaml"], "no/such/config.yaml: no such file or folder"),
    (["{tmp}"], "not a run folder (no config.yaml)"),
    (["{tmp}/plain.yaml"], "no model.init_args.backbone"),
    (["resnet10", "--baseline", "resnet18"], "--baseline 'resnet18' is none of the networks: resnet10"),
    (["resnet10", "--baseline", "2"], "--baseline 2: give a position from 1 to 1"),
])
def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, capsys, argv, message):
    (tmp_path / "plain.yaml").write_text("trainer:\n  max_epochs: 1\n")
    out_json = tmp_path / "models.json"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, *TINY, "--json", str(out_json)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out_json.exists()


def test_bad_option_values_are_usage_errors(capsys):
    for argv, message in ((["resnet10", "--batch", "0"], "--batch must be at least 1"),
                          ([], "give one or more networks"),
                          (["resnet10", "--device", "tpu"], "invalid choice: 'tpu'")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_without_timm_one_line_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError, as where it is absent
    assert main(["timm:resnet18", *TINY]) == 2
    assert capsys.readouterr().err.strip() == f"error: {TIMM_MISSING}"
    networks, notes = preset_gpu_imagenet()
    assert notes == [f"preset gpu-imagenet: timm models left out ({TIMM_MISSING})"]
    assert not any(n.label.startswith("timm:") for n in networks)


def test_timm_resnet18_measured_beside_ctxlits_with_the_same_size():
    pytest.importorskip("timm", reason="timm not installed (optional: pip install timm)")
    rows = measure_networks(["resnet18", "timm:resnet18"], Settings(batch=2, size=(32, 32), rounds=1, warmup=1))
    ctxlit_row, timm_row = rows
    assert timm_row["network"] == "timm:resnet18" and timm_row["source"].startswith("timm ")
    # same layout (torchvision's ResNet-18): same parameters and FLOPs, both timed
    assert timm_row["params"] == ctxlit_row["params"] and timm_row["gflops"] == ctxlit_row["gflops"]
    assert timm_row["train_ms"]["median"] > 0 and timm_row["reference"] == "resnet18"


def test_unknown_timm_model_names_close_ones(capsys):
    pytest.importorskip("timm", reason="timm not installed (optional: pip install timm)")
    assert main(["timm:seresnet5", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: timm has no model 'seresnet5'; close:") and "seresnet50" in err


def test_gpu_imagenet_preset_places_the_papers_blocks():
    networks, _ = preset_gpu_imagenet()
    by_label = {n.label: n for n in networks}
    assert list(by_label)[:8] == ["resnet50", "gc-r50 (c3-c5, r16)", "gc-r50 (all blocks, r16)", "se-r50", "sknet50",
                                  "nl-r50 (5 blocks)", "lrnet50", "hrnet_w18"]
    assert all(by_label[k].reference == "resnet50" for k in list(by_label)[1:8])
    gc = describe_plugins(by_label["gc-r50 (c3-c5, r16)"].build())
    assert len(gc) == 4 + 6 + 3 and {p.position for p in gc} == {"after_conv3"}
    assert {p.path.split(".")[0] for p in gc} == {"layer2", "layer3", "layer4"}
    assert {p.options["ratio"] for p in gc} == {1 / 16}
    nl = describe_plugins(by_label["nl-r50 (5 blocks)"].build())
    assert sorted(p.path.split(".plugins")[0] for p in nl) == [
        "layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"]
    if any(n.label.startswith("timm:") for n in networks):
        assert by_label["timm:gcresnet33ts"].reference == "timm:resnet33ts"
        assert by_label["timm:resnet50"].reference == "resnet50"


def test_channels_last_and_bf16_autocast_run_on_cpu(tmp_path):
    rows = measure_networks(["resnet10"], Settings(batch=2, size=(32, 32), rounds=1, warmup=1,
                                                   channels_last=True, dtype="bf16"))
    assert rows[0]["train_ms"]["median"] > 0 and rows[0]["saved_bytes"] > 0


def test_command_line_entry_point_dispatches(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_main(["models", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "timm:NAME" in out and "--preset" in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last_compile_and_peak_memory(tmp_path):
    out_json = tmp_path / "gpu.json"
    assert main(["resnet18", "resnet50", "--device", "cuda", "--batch", "8", "--size", "64", "--rounds", "3",
                 "--dtype", "bf16", "--channels-last", "--compile", "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())["networks"]
    assert [(r["network"], r["variant"]) for r in rows] == [
        ("resnet18", "eager"), ("resnet18", "compiled"), ("resnet50", "eager"), ("resnet50", "compiled")]
    assert all(r["peak_bytes"] > r["params"] * 4 for r in rows)  # at least the fp32 weights
    assert rows[2]["train_ratio"] > 1 and rows[3]["reference"] == "resnet18" and rows[1]["compile_speedup"] > 0
