"""The summary command / functions and load_weights."""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from ctxlit.backbones import build_backbone, load_weights
from ctxlit.backbones.weights import CONVERT_COMMAND
from ctxlit.summary import main, summarize, summary_dict
from ctxlit.utils.complexity import NOTE_NOT_COUNTED

GC = {"block": "gc", "options": {"ratio": 0.0625}, "stages": [2, 3, 4], "blocks": "last", "position": "after_conv3"}


def test_summarize_reports_params_flops_note_and_plugins():
    model = build_backbone("resnet50", num_classes=1000, width=16, plugins=[GC])
    text = summarize(model, (1, 3, 64, 64))
    d = summary_dict(model, (1, 3, 64, 64))
    assert f"{d['params']:,}" in text and f"{d['flops']:,}" in text
    assert NOTE_NOT_COUNTED in text
    assert d["params"] == sum(p.numel() for p in model.parameters())
    assert [p["path"] for p in d["plugins"]] == [f"layer{s}.{i}.plugins.after_conv3.0" for s, i in ((2, 3), (3, 5), (4, 2))]
    assert "GlobalContext (gc; ratio=0.0625)" in text
    assert d["plugin_params"] == sum(p["params"] for p in d["plugins"]) > 0
    assert summary_dict(build_backbone("resnet50", num_classes=1000, width=16), (1, 3, 64, 64))["flops"] < d["flops"]


def test_summary_command_runs_as_module():
    out = subprocess.run(
        [sys.executable, "-m", "ctxlit.summary", "resnet18", "--input-size", "64", "--num-classes", "10",
         "--plugin", json.dumps({"block": "gc", "stages": 4, "blocks": "last"})],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    model = build_backbone("resnet18", num_classes=10, plugins=[{"block": "gc", "stages": 4, "blocks": "last"}])
    assert f"parameters: {sum(p.numel() for p in model.parameters()):,}" in out
    assert "FLOPs at 1x3x64x64" in out and NOTE_NOT_COUNTED in out
    assert "layer4.1.plugins.after_conv2.0" in out and "GlobalContext" in out


def test_summary_main_options_json_and_errors(capsys):
    assert main(["resnet10", "--input-size", "32x48", "--num-classes", "0", "--option", "width=8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["input_shape"] == [1, 3, 32, 48] and d["options"] == {"width": 8} and d["plugins"] == []
    assert main(["resnet10", "--option", "stem=vgg"]) == 2
    assert "resnet10: stem must be one of 'imagenet', 'deep', 'cifar', 'lr'; got 'vgg'" in capsys.readouterr().err
    assert main(["no_such_net"]) == 2
    assert "available backbones: resnet10" in capsys.readouterr().err


def test_summary_reads_an_experiment_yaml(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "model:\n  class_path: ctxlit.tasks.ClassificationTask\n  init_args:\n"
        "    backbone: resnet10\n    backbone_options: {width: 8, stem: cifar}\n"
        "    block:\n      class_path: ctxlit.blocks.GlobalContext\n      init_args: {fusion: mul}\n"
        "    placement: {stages: [3, 4], blocks: last, position: after_add}\n"
        "data:\n  init_args: {image_size: [16, 64]}\n"
    )
    assert main([str(cfg), "--num-classes", "4"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs at 1x3x16x64" in out
    assert "layer3.0.plugins.after_add.0" in out and "layer4.0.plugins.after_add.0" in out
    assert "fusion='mul'" in out
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


# --------------------------------------------------------------------------- load_weights


def test_load_torchvision_checkpoint_into_plugged_model(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = build_backbone("resnet18", num_classes=1000, plugins=[{"block": "gc", "stages": [3, 4]}])
    report = load_weights(model, path)
    assert report.clean and not report.missing and not report.unexpected
    assert report.missing_plugins and all(".plugins." in k for k in report.missing_plugins)
    assert "expected:" in str(report) and "plugin tensors" in str(report)
    torch.testing.assert_close(model.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)


def test_load_into_feature_extractor_reports_classifier_as_unexpected(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    report = load_weights(build_backbone("resnet18"), path)
    assert report.unexpected == ["fc.weight", "fc.bias"]
    assert "unexpected (ignored): 2: fc.weight, fc.bias" in str(report)
    with pytest.raises(ValueError, match="do not match the model strictly"):
        load_weights(build_backbone("resnet18"), path, strict=True)


def test_load_lightning_checkpoint_strips_prefix(tmp_path):
    src = build_backbone("resnet10", width=16, num_classes=3, plugins=[{"block": "gc", "stages": "all"}])
    state = {f"network.{k}": v for k, v in src.state_dict().items()}
    state["head_extra.weight"] = torch.zeros(2)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 0.1}}, path)
    dst = build_backbone("resnet10", width=16, num_classes=3, plugins=[{"block": "gc", "stages": "all"}])
    report = load_weights(dst, path)
    assert report.prefix == "network." and report.clean and not report.missing_plugins
    assert report.outside_prefix == ["head_extra.weight"]
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_load_refuses_shape_mismatch_listing_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = build_backbone("resnet18", num_classes=10)
    with pytest.raises(ValueError) as err:
        load_weights(model, path)
    msg = str(err.value)
    assert "fc.weight: checkpoint (1000, 512) vs model (10, 512)" in msg and "fc.bias" in msg
    report = load_weights(model, path, strict_shapes=False)
    assert [k for k, _, _ in report.shape_mismatch] == ["fc.weight", "fc.bias"]
    assert "shape mismatch (skipped" in str(report)


def test_load_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "w.pth"
    with pytest.raises(FileNotFoundError, match=str(path)):
        load_weights(build_backbone("resnet10", width=8), path)
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"bad.pth: not a PyTorch or safetensors file \(Unsupported operand"):
        load_weights(build_backbone("resnet10", width=8), bad)


def test_load_backbone_checkpoint_into_wrapper_module(tmp_path):
    path = tmp_path / "r10.pth"
    src = build_backbone("resnet10", width=8, num_classes=3)
    torch.save(src.state_dict(), path)
    wrapper = torch.nn.Module()
    wrapper.network = build_backbone("resnet10", width=8, num_classes=3)
    wrapper.head = torch.nn.Linear(3, 2)
    report = load_weights(wrapper, path)
    assert report.added_prefix == "network." and report.clean and len(report.loaded) == len(src.state_dict())
    torch.testing.assert_close(wrapper.network.fc.weight, src.fc.weight)


# --------------------------------------------------------------------------- weights files never run code


class _WritesAMarker:
    """Unpickling this calls ``open(marker, "w")``: stands for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_weights_file_whose_unpickling_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "code-ran"
    src = build_backbone("resnet10", width=8)
    path = tmp_path / "pretrained.pth"
    torch.save({"state_dict": src.state_dict(), "payload": _WritesAMarker(marker)}, path)
    assert not marker.exists()
    with pytest.raises(ValueError) as err:
        load_weights(build_backbone("resnet10", width=8), path)
    assert not marker.exists()  # the old fallback, weights_only=False, created it
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "(it names io.open)" in message
    assert "would run the code it names" in message and CONVERT_COMMAND.format(
        path=path, converted=tmp_path / "pretrained-tensors.pth") in message


def test_the_conversion_command_keeps_the_tensors_of_a_trusted_file(tmp_path):
    """The command the error gives (and the README quotes) turns a checkpoint with pickled
    objects, here a date among the hyper-parameters, into one that loads."""
    src = build_backbone("resnet10", width=8)
    path = tmp_path / "trusted.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()},
                "hyper_parameters": {"made": datetime.date(2024, 1, 1)}}, path)
    with pytest.raises(ValueError, match="datetime.date") as err:
        load_weights(build_backbone("resnet10", width=8), path)
    command = err.value.args[0].split("keep its tensors once with: ")[1]
    assert command == CONVERT_COMMAND.format(path=path, converted=tmp_path / "trusted-tensors.pth")
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    dst = build_backbone("resnet10", width=8)
    assert load_weights(dst, tmp_path / "trusted-tensors.pth").clean
    torch.testing.assert_close(dst.state_dict(), src.state_dict())
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert CONVERT_COMMAND.format(path="TRUSTED.ckpt", converted="weights.pth") in readme


def test_safetensors_and_plain_state_dict_files_load(tmp_path):
    from safetensors.torch import save_file

    src = build_backbone("resnet10", width=8, num_classes=3)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        dst = build_backbone("resnet10", width=8, num_classes=3)
        assert load_weights(dst, tmp_path / name).clean, name
        torch.testing.assert_close(dst.state_dict(), src.state_dict(), msg=name)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="bad.safetensors: not a valid safetensors file"):
        load_weights(build_backbone("resnet10", width=8), tmp_path / "bad.safetensors")


def test_a_lightning_checkpoint_with_namespace_hyper_parameters_loads(tmp_path):
    src = build_backbone("resnet10", width=8)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {f"network.{k}": v for k, v in src.state_dict().items()},
                "hyper_parameters": argparse.Namespace(lr=0.1, seed=1)}, path)
    assert load_weights(build_backbone("resnet10", width=8), path).clean
