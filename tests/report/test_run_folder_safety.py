"""The report reads run folders as data: it rebuilds a checkpoint only when every class it names
is ctxlit's own (checked before anything is imported), and opens no checkpoint outside the run."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from ctxlit.report.attention import latest_maps, refusal, run_checkpoint
from ctxlit.report.runs import Run
from ctxlit.runs import RunFolder

#: the hyper-parameters of a `python -m ctxlit.fit` checkpoint (the default config, width 8)
CTXLIT_CHECKPOINT = {
    "state_dict": {}, "pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": 1,
    "hyper_parameters": {
        "_class_path": "ctxlit.tasks.ClassificationTask", "_instantiator": "ctxlit.cli.instantiate_module",
        "backbone": "resnet10", "backbone_options": {"stem": "cifar", "width": 8}, "backbone_weights": None,
        "block": {"class_path": "ctxlit.blocks.GlobalContext",
                  "init_args": {"fusion": "add", "layernorm": True, "pooling": "att", "ratio": 0.25}},
        "extra_plugins": None, "lr": 0.2, "num_classes": 4, "optimizer": "sgd",
        "placement": {"blocks": "all", "position": None, "stages": [2, 3, 4]}},
    "datamodule_hyper_parameters": {
        "_class_path": "ctxlit.data.SyntheticContextDataModule",
        "_instantiator": "pytorch_lightning.cli.instantiate_module", "batch_size": 16, "image_size": [16, 32]},
}
EVIL = "ctxlit_test_payload"  # a module on sys.path whose import writes a marker file


@pytest.fixture
def payload(tmp_path, monkeypatch) -> Path:
    """``ctxlit_test_payload`` importable from sys.path; importing it creates the returned marker."""
    marker = tmp_path / "imported"
    (tmp_path / f"{EVIL}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import pytorch_lightning as pl\n"
        "class Task(pl.LightningModule): pass\n"
        "def make(channels): return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, EVIL, raising=False)
    return marker


def _with(section: str, key: str, value) -> dict:
    checkpoint = copy.deepcopy(CTXLIT_CHECKPOINT)
    checkpoint[section][key] = value
    return checkpoint


def test_a_ctxlit_checkpoint_is_accepted():
    assert refusal(CTXLIT_CHECKPOINT) is None
    seg = _with("hyper_parameters", "_class_path", "ctxlit.tasks.segmentation.SegmentationTask")
    assert refusal(seg) is None


@pytest.mark.parametrize(("section", "key", "value", "said"), [
    ("hyper_parameters", "_class_path", f"{EVIL}.Task",
     f"its hyper_parameters name '{EVIL}.Task', not one of ctxlit's LightningModule classes"),
    ("hyper_parameters", "_class_path", "ctxlit.data.SyntheticContextDataModule",
     "its hyper_parameters name 'ctxlit.data.SyntheticContextDataModule', not one of ctxlit's LightningModule"),
    ("hyper_parameters", "_instantiator", "os.system",
     "its hyper_parameters name 'os.system' to rebuild it, not a Lightning or ctxlit instantiator"),
    ("datamodule_hyper_parameters", "_class_path", "subprocess.Popen",
     "its datamodule_hyper_parameters name 'subprocess.Popen', not one of ctxlit's LightningDataModule"),
    ("hyper_parameters", "block", {"class_path": f"{EVIL}.Task", "init_args": {}},
     f"its hyper_parameters.block.class_path names '{EVIL}.Task', not one of ctxlit's classes"),
    ("hyper_parameters", "block", f"{EVIL}.make",
     f"its hyper_parameters.block names '{EVIL}.make', not one of ctxlit's classes"),
], ids=["task", "data-as-task", "instantiator", "data", "block-class", "block-function"])
def test_a_checkpoint_naming_other_code_is_refused_before_any_import(
        section, key, value, said, payload, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(_with(section, key, value), run_dir / "checkpoints" / "last.ckpt")
    assert latest_maps(Run(RunFolder(dir=run_dir, summary={}))) is None
    assert not payload.exists() and EVIL not in sys.modules
    err = capsys.readouterr().err
    assert err.startswith(f"[ctxlit] report: no attention figure for {run_dir}: ") and said in err, err


@pytest.mark.parametrize("named", ["/etc/passwd", "../other/checkpoints/last.ckpt", "link.ckpt"])
def test_a_checkpoint_outside_the_run_folder_is_not_opened(named, tmp_path, capsys, monkeypatch):
    run_dir, other = tmp_path / "run", tmp_path / "other" / "checkpoints"
    run_dir.mkdir()
    other.mkdir(parents=True)
    torch.save(CTXLIT_CHECKPOINT, other / "last.ckpt")
    (run_dir / "link.ckpt").symlink_to(other / "last.ckpt")
    monkeypatch.chdir(run_dir)
    run = Run(RunFolder(dir=run_dir, summary={"last_checkpoint": named}))
    assert run_checkpoint(run) is None
    assert f"its summary's checkpoint {named} lies outside the run folder; not opened" in capsys.readouterr().err
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").symlink_to(other / "last.ckpt")  # a link out, in the usual place
    assert run_checkpoint(run) is None


def test_a_checkpoint_the_summary_names_inside_the_run_folder_is_found(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "one"
    (run_dir / "ckpt").mkdir(parents=True)
    torch.save(CTXLIT_CHECKPOINT, run_dir / "ckpt" / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    assert run_checkpoint(Run(RunFolder(dir=run_dir, summary={"last_checkpoint": "runs/one/ckpt/last.ckpt"}))) == run_dir / "ckpt" / "last.ckpt"
