"""``python -m ctxlit.fit`` end to end on the synthetic benchmark, as a user runs it."""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from ctxlit.blocks import GlobalContext
from ctxlit.fit import DEFAULT_CONFIG, main, with_defaults
from ctxlit.tasks import classification
from tests.conftest import TINY, run_fit


def test_experiments_default_is_the_builtin_default():
    linked = Path(__file__).parents[1] / "experiments" / "synthetic" / "default.yaml"
    assert linked.resolve() == DEFAULT_CONFIG.resolve()
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert config["model"]["init_args"]["block"]["class_path"] == "ctxlit.blocks.GlobalContext"
    assert config["data"]["class_path"] == "ctxlit.data.SyntheticContextDataModule"


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], ["fit", "--config", str(DEFAULT_CONFIG)]),
        (["--trainer.max_epochs=1"], ["fit", "--config", str(DEFAULT_CONFIG), "--trainer.max_epochs=1"]),
        (["fit", "--config", "x.yaml"], ["fit", "--config", "x.yaml"]),
        (["validate", "--config=x.yaml"], ["validate", "--config=x.yaml"]),
        (["--config", "x.yaml", "--trainer.devices=2"], ["fit", "--config", "x.yaml", "--trainer.devices=2"]),
        (["-c", "x.yaml"], ["fit", "-c", "x.yaml"]),  # the short flag: the default must not merge in
        (["-c=x.yaml"], ["fit", "-c=x.yaml"]),
    ],
)
def test_with_defaults_inserts_only_what_is_missing(argv, expected):
    assert with_defaults(argv) == expected
    # Lightning's DDP launcher re-runs the command with the same argv: applying it twice is a no-op.
    assert with_defaults(with_defaults(argv)) == expected


def test_fit_end_to_end_writes_logs_checkpoints_and_summary(tmp_path, offline_env):
    result = run_fit([*TINY, "--trainer.max_epochs=2", "--trainer.log_every_n_steps=2"], cwd=tmp_path, env=offline_env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "ctxlit run summary" in out
    # torch's deprecation of Lightning's LeafSpec use is filtered (Lightning's, printed at every fetch)
    assert "LeafSpec" not in result.stderr
    # W&B's two warnings that no config can act on are removed at their cause (cli.prepare_wandb_loggers)
    assert "anonymous setting" not in result.stderr and "git root" not in result.stderr, result.stderr[-3000:]
    for needle in ("validation accuracy", "parameters", "FLOPs", "training throughput", "best checkpoint",
                   "last checkpoint", "CSV log", "W&B run"):
        assert needle in out, needle
    version = tmp_path / "runs" / "synthetic" / "version_0"
    ckpts = sorted(p.name for p in (version / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(name.startswith("best-") for name in ckpts)
    assert (version / "config.yaml").is_file()
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    columns = set(rows[0])
    assert {"val/acc1", "train/loss", "train/lr", "train/images_per_sec"} <= columns
    assert "val/acc5" not in columns  # 4 classes: top-5 would always be 1
    val_acc = [float(r["val/acc1"]) for r in rows if r.get("val/acc1")]
    # exact counts over the 24 validation samples, not a mean of batch means (batches of 16 and 8)
    assert len(val_acc) == 2 and all(abs(a * 24 - round(a * 24)) < 1e-4 for a in val_acc), val_acc
    # No network and no API key: W&B chose offline mode by itself and wrote a run.
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = read_wandb_run(runs[0])
    assert run["state"] == "finished" and run["summary"]["val/acc1"] == pytest.approx(val_acc[-1])


def read_wandb_run(run_dir: Path) -> dict:
    """An offline run as W&B's own reader sees it (``wandb leet inspect --summary --json``:
    config, summary, state), not by grepping its binary log."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path, offline_env, monkeypatch):
    # fast_dev_run would drop the loggers, so a short max_steps run exercises real logging.
    monkeypatch.chdir(tmp_path)
    loggers = ("[{class_path: pytorch_lightning.loggers.WandbLogger, init_args: {save_dir: wb, project: ctxlit}},"
               " {class_path: pytorch_lightning.loggers.CSVLogger, init_args: {save_dir: csv}}]")
    args = [*TINY, "--trainer.max_steps=4", "--trainer.log_every_n_steps=1", f"--trainer.logger={loggers}"]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    run = read_wandb_run(run_dir)
    (summary_file,) = (tmp_path / "csv").rglob("summary.json")
    summary = json.loads(summary_file.read_text())
    assert run["state"] == "finished" and run["project"] == "ctxlit"
    # the same numbers as the run's own summary and CSV log
    assert run["config"]["model/params"] == summary["params"] > 0
    assert run["config"]["model/flops"] == summary["flops"] > 0
    assert run["config"]["block"]["class_path"] == "ctxlit.blocks.GlobalContext"
    (metrics_file,) = (tmp_path / "csv").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and run["summary"]["train/loss"] == pytest.approx(losses[-1]) == summary["metrics"]["train/loss"]
    assert run["summary"]["trainer/global_step"] == 4 - 1


def test_test_and_predict_subcommands_give_the_final_validation_metrics(tmp_path, capsys, monkeypatch):
    """``python -m ctxlit.fit test --ckpt_path last.ckpt``: the synthetic data has no test split,
    so the validation split, said on stdout; test/acc1 and test/loss equal the fit's last
    validation (metrics.csv)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--trainer.max_epochs=2", "--checkpoint.dirpath=ck"]) == 0
    rows = list(csv.DictReader((tmp_path / "runs" / "synthetic" / "version_0" / "metrics.csv").open()))
    last_val = [r for r in rows if r.get("val/acc1")][-1]
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["test", *TINY, "--ckpt_path", "ck/last.ckpt"]) == 0
    # the checkpoint callback's folder (runs/.../version_1) is not the checkpoint's (ck): said at
    # every evaluation by Lightning, though nothing is saved
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    assert "[ctxlit] SyntheticContextDataModule has no test split: testing on the validation split" in capsys.readouterr().out
    (tested,) = [r for r in csv.DictReader((tmp_path / "runs" / "synthetic" / "version_1" / "metrics.csv").open())
                 if r.get("test/acc1")]
    assert float(tested["test/acc1"]) == pytest.approx(float(last_val["val/acc1"]), abs=1e-6)
    assert float(tested["test/loss"]) == pytest.approx(float(last_val["val/loss"]), rel=1e-5)
    # predict: a row per validation sample; the share whose top-1 is its label is the accuracy
    assert main(["predict", *TINY, "--ckpt_path", "ck/last.ckpt", "--predictions.top_k=2"]) == 0
    (predictions,) = (tmp_path / "runs" / "synthetic" / "version_2").glob("predictions.csv")
    rows = list(csv.DictReader(predictions.open()))
    assert [r["image"] for r in rows] == [f"val/{i}" for i in range(24)] and list(rows[0])[2:] == ["top1", "p1", "top2", "p2"]
    assert sum(r["top1"] == r["label"] for r in rows) / 24 == pytest.approx(float(last_val["val/acc1"]), abs=1e-6)


def test_print_config_round_trips(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--print_config", "--model.init_args.block=se", "--trainer.max_epochs=3"])
    assert exit_info.value.code in (0, None)
    first = capsys.readouterr().out
    config_file = tmp_path / "printed.yaml"
    config_file.write_text(first)
    with pytest.raises(SystemExit):
        main(["--config", str(config_file), "--print_config"])
    second = capsys.readouterr().out
    assert yaml.safe_load(first) == yaml.safe_load(second)
    parsed = yaml.safe_load(second)
    assert parsed["model"]["init_args"]["block"] == "se"
    assert parsed["trainer"]["max_epochs"] == 3
    assert not (tmp_path / "runs").exists()


def test_block_options_are_single_dotted_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["--model.init_args.block=ctxlit.blocks.GlobalContext", "--model.init_args.block.init_args.fusion=mul",
              "--model.init_args.block.init_args.layernorm=false", "--model.init_args.placement.stages=[3,4]",
              "--print_config"])
    block = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["block"]
    assert block["class_path"] == "ctxlit.blocks.GlobalContext"
    assert block["init_args"]["fusion"] == "mul" and block["init_args"]["layernorm"] is False


LOAD_CHECKPOINT = """
import sys, torch
from ctxlit.tasks import ClassificationTask  # all a user imports to load a ctxlit checkpoint
from ctxlit.backbones import describe_plugins
task = ClassificationTask.load_from_checkpoint(sys.argv[1], map_location="cpu")
(info, *_) = describe_plugins(task.network)
saved = torch.load(sys.argv[1], weights_only=True)["hyper_parameters"]
print(saved["_instantiator"], info.block, info.options["fusion"], info.position)
"""


def test_a_class_path_block_reaches_the_backbone_as_a_plain_partial_also_from_its_checkpoint(tmp_path, monkeypatch):
    """The CLI gives the task functools.partial(GlobalContext, ...), not jsonargparse's wrapper,
    so the backbone records the class and its options; Lightning's load_from_checkpoint, in a
    fresh process that imports only ctxlit.tasks, rebuilds the same through ctxlit's instantiator.
    The saved config keeps the class_path form."""
    monkeypatch.chdir(tmp_path)
    seen = {}
    real = classification.study_plugins
    monkeypatch.setattr(classification, "study_plugins", lambda block, *rest: seen.setdefault("block", block) and real(block, *rest))
    args = [*TINY, "--model.init_args.block=ctxlit.blocks.GlobalContext", "--model.init_args.block.init_args.fusion=mul",
            "--trainer.max_steps=2", "--checkpoint.dirpath=ckpt", "--trainer.default_root_dir=out"]
    assert main(args) == 0
    block = seen["block"]
    assert type(block) is functools.partial and block.func is GlobalContext and block.keywords["fusion"] == "mul"
    (config,) = (tmp_path / "out").rglob("config.yaml")
    assert yaml.safe_load(config.read_text())["model"]["init_args"]["block"]["class_path"] == "ctxlit.blocks.GlobalContext"
    out = subprocess.run([sys.executable, "-c", LOAD_CHECKPOINT, str(tmp_path / "ckpt" / "last.ckpt")],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ctxlit.cli.instantiate_module", "GlobalContext", "mul", "after_conv2"]


def test_sweep_json_args_file_sets_nested_block_options(tmp_path, capsys, monkeypatch):
    """The form a W&B agent uses: ``--config base.yaml --config args.json`` with dotted keys."""
    monkeypatch.chdir(tmp_path)
    args_json = tmp_path / "args.json"
    args_json.write_text('{"model.init_args.block.init_args.fusion": "both", "model.init_args.lr": 0.05,'
                         ' "model.init_args.block.init_args.layernorm": false}')
    base = tmp_path / "base.yaml"
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["model"]["init_args"]["block"] = {"class_path": "ctxlit.blocks.GlobalContext"}
    base.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        main(["--config", str(base), "--config", str(args_json), "--print_config"])
    model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert model["lr"] == 0.05
    assert model["block"]["init_args"]["fusion"] == "both" and model["block"]["init_args"]["layernorm"] is False


@pytest.mark.parametrize(
    "args, line",
    [
        (["--model.init_args.no_such_option=1"],
         "error: --model.init_args.no_such_option: no such option of ctxlit.tasks.ClassificationTask (its options: "),
        (["--model.init_args.blok=gc"],
         "error: --model.init_args.blok: no such option of ctxlit.tasks.ClassificationTask; "
         "did you mean --model.init_args.block?"),
        (["--data.init_args.batchsize=3"], "error: --data.init_args.batchsize: no such option of "
         "ctxlit.data.SyntheticContextDataModule; did you mean --data.init_args.batch_size?"),
        (["--trainer.max_epochs=three"], "error: --trainer.max_epochs=three: expected int or null"),
        (["--model.init_args.block=nonexistent"],
         "error: --model.init_args.block=nonexistent: allowed values are none, se, gc, snl, nl, glore, spm, mpm, sk, "
         "lr, or a block class by its class_path (e.g. ctxlit.blocks.GlobalContext)"),
        (["--model.init_args.block=ctxlit.blocks.GlobalContext", "--model.init_args.block.init_args.pooling=max"],
         "error: --model.init_args.block.init_args.pooling=max: allowed values are att, avg"),
        (["--model.init_args.placement.position=middle"], "error: --model.init_args.placement.position=middle: "
         "allowed values are after_conv1, after_conv2, after_conv3, after_last_conv, after_add, replace_conv1, "
         "replace_conv2"),
        (["--config", "does/not/exist.yaml"], "error: --config does/not/exist.yaml: no such file"),
    ],
    ids=["unknown-key", "typo-key", "typo-data-key", "wrong-type", "unknown-block", "bad-block-option",
         "bad-placement", "missing-config"],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys, monkeypatch, args, line):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as exit_info:  # the parser's own errors
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(line), err
    assert all(line.startswith(("error:", "tip:", "[ctxlit]")) for line in err), err  # no dump, no traceback
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("content", "line"), [
    ("", "is empty; a config file holds a mapping of options"),
    ("- a\n- b\n", "is a list; a config file holds a mapping of options"),
    ("model: [\n", "not valid YAML at line 2, column 1"),
])
def test_a_config_file_that_is_not_a_mapping_is_named(content, line, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(content)
    assert main(["--config", str(DEFAULT_CONFIG), "--config", "bad.yaml"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: --config bad.yaml: {line}")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]


def test_block_option_rejected_by_the_block_is_one_line_error(tmp_path, capsys, monkeypatch):
    # The type is right (a float) but the value leaves the block no hidden channel.
    monkeypatch.chdir(tmp_path)
    code = main([*TINY, "--model.init_args.block=ctxlit.blocks.GlobalContext",
                 "--model.init_args.block.init_args.ratio=0.001"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ratio" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_data_option_rejected_by_the_data_module_is_one_line_error(tmp_path, capsys, monkeypatch):
    # A synthetic strip too low to stack the two candidate glyphs.
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--data.init_args.image_size=[8,32]"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "error: data: image_size height (2 x glyph_size) must be >= 10; got 8"
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def _final_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_resume_from_last_checkpoint_matches_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [*TINY, "--trainer.logger=false", "--trainer.max_epochs=3"]  # 4 steps per epoch
    assert main([*base, "--checkpoint.dirpath=straight"]) == 0
    # Interrupt the same configuration after k=8 steps (the end of epoch 2), then resume.
    stop = ["--trainer.callbacks+=tests.conftest.StopAtStep", "--trainer.callbacks.step=8"]
    assert main([*base, "--checkpoint.dirpath=split", *stop]) == 0
    assert torch.load(tmp_path / "split" / "last.ckpt", weights_only=False)["global_step"] == 8
    stopped = _final_weights(tmp_path / "split" / "last.ckpt")
    assert main([*base, "--checkpoint.dirpath=split", "--ckpt_path=split/last.ckpt"]) == 0
    assert torch.load(tmp_path / "split" / "last.ckpt", weights_only=False)["global_step"] == 12
    straight = _final_weights(tmp_path / "straight" / "last.ckpt")
    resumed = _final_weights(tmp_path / "split" / "last.ckpt")
    assert straight.keys() == resumed.keys()
    assert any(not torch.equal(stopped[k], straight[k]) for k in straight)  # the resume did train
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_ddp_two_cpu_processes_make_one_wandb_run_and_exact_val_metrics(tmp_path, offline_env):
    result = run_fit(
        [*TINY, "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
         "--trainer.max_epochs=1", "--data.init_args.val_size=23"],  # 23: uneven over 2 ranks
        cwd=tmp_path, env=offline_env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("ctxlit run summary") == 1
    runs = list((tmp_path / "runs" / "wandb").glob("*run-*"))
    assert len(runs) == 1, runs
    versions = list((tmp_path / "runs" / "synthetic").iterdir())
    assert len(versions) == 1, versions
    rows = list(csv.DictReader((versions[0] / "metrics.csv").open()))
    ddp_acc = [float(r["val/acc1"]) for r in rows if r.get("val/acc1")][-1]
    # The same weights validated in one process over the same 23 samples give the same
    # accuracy: no sample was padded in twice.
    import pytorch_lightning as pl

    from ctxlit.data import SyntheticContextDataModule
    from ctxlit.tasks import ClassificationTask

    task = ClassificationTask.load_from_checkpoint(versions[0] / "checkpoints" / "last.ckpt", map_location="cpu")
    dm = SyntheticContextDataModule(train_size=64, val_size=23, image_size=(16, 32), batch_size=16)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = trainer.validate(task, datamodule=dm, verbose=False)[0]["val/acc1"]
    assert ddp_acc == pytest.approx(single, abs=1e-6)
    assert round(single * 23) == pytest.approx(single * 23, abs=1e-4)  # a count out of 23


@pytest.mark.slow
def test_ddp_with_fewer_validation_samples_than_processes_is_one_clear_error(tmp_path, offline_env):
    # Without the check, rank 1 stopped on a zero-length DataLoader and rank 0 on a lost connection.
    result = run_fit(
        [*TINY, "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
         "--trainer.max_epochs=1", "--data.init_args.val_size=1", "--trainer.logger=false"],
        cwd=tmp_path, env=offline_env,
    )
    assert result.returncode == 2, result.stderr[-4000:]
    assert "error: the validation set has 1 sample(s), fewer than the 2 processes" in result.stderr
    assert "Traceback" not in result.stderr and "ctxlit run summary" not in result.stdout


@pytest.mark.parametrize("block", ["none", *__import__("ctxlit.blocks", fromlist=["BLOCKS"]).BLOCKS])
def test_every_block_trains_in_the_default_experiment(block, tmp_path, monkeypatch):
    """What the synthetic sweep runs: each registry name with the default placement (add-on
    blocks after the last conv, spatial operators replacing conv2)."""
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--model.init_args.backbone_options.width=16", f"--model.init_args.block={block}",
            "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.logger=false",
            "--checkpoint.dirpath=ckpt"]
    assert main(args) == 0
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = state["state_dict"]
    plugin_keys = [k for k in keys if ".plugins." in k]
    conv2 = {stage: sorted(k for k in keys if k.startswith(f"network.layer{stage}.0.conv2.")) for stage in (1, 2, 3, 4)}
    operator_keys = {"sk": "conv2.convs.1.0.weight", "lr": "conv2.geometry.0.weight"}  # branch 2 / geometry MLP
    if block == "none":
        assert not plugin_keys and all(v == [f"network.layer{s}.0.conv2.weight"] for s, v in conv2.items())
    elif block in operator_keys:  # conv2 itself is the operator in stages 2-4, untouched in stage 1
        assert not plugin_keys and conv2[1] == ["network.layer1.0.conv2.weight"]
        assert all(f"network.layer{s}.0.{operator_keys[block]}" in keys for s in (2, 3, 4))
    else:
        assert {k.split(".plugins.")[0] for k in plugin_keys} == {f"network.layer{s}.0" for s in (2, 3, 4)}


@pytest.mark.parametrize("validation, best_step", [([], 8), (["--trainer.val_check_interval=2"], 6)],
                         ids=["epoch-end", "mid-epoch"])
def test_last_checkpoint_is_the_final_state_even_when_the_metric_stops_improving(
        validation, best_step, tmp_path, monkeypatch):
    # Monitor the learning rate: 1 epoch (4 steps, a tenth of the run) of warmup, then a cosine,
    # so its highest value at a validation is known. The logged LR is the one of the step before:
    # 0.8 x peak at step 4, 0.983 x at step 8 (epoch ends), 0.998 x at step 6 (every 2 steps).
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--trainer.logger=false", "--trainer.max_epochs=10", "--checkpoint.dirpath=ckpt",
            "--checkpoint.monitor=train/lr", "--checkpoint.mode=max", *validation]
    assert main(args) == 0
    steps = {p.name: torch.load(p, weights_only=False)["global_step"] for p in (tmp_path / "ckpt").iterdir()}
    best = [name for name in steps if name.startswith("best-")]
    assert steps["last.ckpt"] == 40 and len(best) == 1 and steps[best[0]] == best_step, steps


@pytest.mark.parametrize("flag", ["-c", "--config"])
def test_a_given_config_is_not_merged_with_the_default(flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    food = Path(__file__).parents[1] / "experiments" / "food" / "resnet18_112.yaml"
    with pytest.raises(SystemExit):
        main([flag, str(food), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["class_path"] == "ctxlit.data.FoodDeliveryDataModule"
    assert config["model"]["init_args"]["backbone"] == "resnet18_112"
    assert not config["model"]["init_args"].get("backbone_options")  # the synthetic width-16/cifar stem leaked in


def test_wandb_goes_offline_by_itself_and_says_why(offline_env, monkeypatch, capsys):
    from ctxlit.fit import choose_wandb_mode, wandb_mode_and_notice

    mode, notice = wandb_mode_and_notice()
    assert mode == "offline" and os.environ["WANDB_MODE"] == "offline" and "no W&B API key" in notice
    # A key, but the (self-hosted) server refuses connections: offline again, named.
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    mode, notice = wandb_mode_and_notice()
    assert mode == "offline" and "127.0.0.1:9 not reachable" in notice
    # Behind a proxy a direct probe proves nothing: leave it to W&B.
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert choose_wandb_mode() == "online" and "WANDB_MODE" not in os.environ
    # An explicit choice always wins.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode() == "disabled"


def test_checkpointing_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--checkpoint.dirpath=ckpt"]
    assert main(args) == 0
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("flag", ["--help", "--print_config", "--data.help=ctxlit.data.FoodDeliveryDataModule"])
def test_help_and_print_config_say_nothing_about_wandb(flag, offline_env, tmp_path, capsys, monkeypatch):
    """No run starts, so no "[ctxlit] W&B logs offline" line; a real run still says it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main([flag])
    assert "W&B logs offline" not in capsys.readouterr().err
    assert "WANDB_MODE" not in os.environ  # no mode was chosen: nothing will log


def test_the_offline_line_comes_when_a_run_starts_not_before_a_parse_error(offline_env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["--trainer.max_epoch=1"])  # a typo: no run starts
    err = capsys.readouterr().err
    assert "W&B logs offline" not in err and "--trainer.max_epoch" in err
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert main([*TINY, "--trainer.max_steps=1", "--trainer.logger=false", "--checkpoint.dirpath=ck"]) == 0
    assert "W&B logs offline" not in capsys.readouterr().err  # a run, but nothing goes to W&B
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert main([*TINY, "--trainer.max_steps=1", "--checkpoint.dirpath=ck2"]) == 0  # the config's CSV + W&B loggers
    err = capsys.readouterr().err
    assert err.count("[ctxlit] W&B logs offline (no W&B API key") == 1


def test_lightning_cloud_logger_advert_is_filtered_but_its_other_messages_stay(capsys, caplog):
    import logging

    import ctxlit.cli  # noqa: F401  (installs the filter)

    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("💡 Tip: For seamless cloud logging ... try installing [litlogger](https://pypi.org/project/litlogger/)")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_top_level_help_shows_the_options_of_fit_and_names_the_other_subcommands(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert out.startswith("python -m ctxlit.fit runs `fit` unless another subcommand comes first: "
                          "validate, test, predict (each with --help)")
    assert "usage: python -m ctxlit.fit [--config FILE]" in out and "--checkpoint.dirpath" in out
    # Lightning's Trainer list only under --help=full, named at the end of the page
    assert "--trainer.max_epochs" not in out
    assert out.rstrip().splitlines()[-1].startswith("Lightning's Trainer options (--trainer.*") and "--help=full" in out


@pytest.mark.parametrize("subcommand, tip", [([], "python -m ctxlit.fit --help"),
                                             (["validate"], "python -m ctxlit.fit validate --help")])
def test_the_tip_under_an_error_names_a_command_that_exists(subcommand, tip, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*subcommand, "--trainer.max_epoch=3"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert f"tip: For details of accepted options run: {tip}\n" in err and "fit fit" not in err


def test_help_lists_the_options_of_the_configs_task_and_data_as_configs_spell_them(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    task = out.index("Options of the task, ctxlit.tasks.ClassificationTask (from the config")
    data = out.index("Options of the data module, ctxlit.data.SyntheticContextDataModule (from the config")
    assert out.index("--seed_everything") < task < data < out.index("--checkpoint.dirpath")
    # the README's and the sweeps' spelling, with the values this run would use (default.yaml)
    lr = out[out.index("  --model.init_args.lr LR", task):]
    assert lr[:lr.index("\n  --")].replace("\n", " ").split()[-2:] == ["default:", "0.2)"]
    assert "--model.init_args.placement.stages" in out and "--data.init_args.batch_size BATCH_SIZE" in out
    assert "ctxlit.blocks.LocalRelation" in out and "torch.nn.Linear" not in out  # ours, not all of torch.nn


def test_help_shows_the_values_of_the_given_config_and_flags(capsys):
    config = Path(__file__).parents[1] / "experiments" / "food" / "resnet18_112.yaml"
    with pytest.raises(SystemExit):
        main(["validate", "--config", str(config), "--model.init_args.lr=0.05", "--help"])
    out = capsys.readouterr().out
    assert "Options of the data module, ctxlit.data.FoodDeliveryDataModule" in out and "--data.init_args.root" in out
    lr = out[out.index("  --model.init_args.lr LR"):]
    assert "default: 0.05)" in lr[:lr.index("\n  --")]


def _default_shown(page: str, option: str) -> str:
    """The ``default:`` an option's help entry shows."""
    entry = page[page.index(f"  {option} "):]
    entry = entry[:entry.index("\n  -", 1)] if "\n  -" in entry[1:] else entry
    return " ".join(entry.split()).rsplit("default: ", 1)[1].split(",")[0].split(")")[0]


def test_help_full_shows_this_runs_values_in_every_section_and_ctxlits_options_first(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("seed_everything: 7\ntrainer: {max_epochs: 3}\nattention: {every_n_epochs: 2}\n"
                      "checkpoint: {monitor: val/loss, mode: min}\n")
    with pytest.raises(SystemExit) as stop:
        main(["--config", str(DEFAULT_CONFIG), "--config", str(config), "--threads=2", "--help=full"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    shown = {option: _default_shown(out, option) for option in (
        "--seed_everything", "--trainer.max_epochs", "--attention.every_n_epochs", "--checkpoint.monitor",
        "--threads", "--model.init_args.lr")}
    assert shown == {"--seed_everything": "7", "--trainer.max_epochs": "3", "--attention.every_n_epochs": "2",
                     "--checkpoint.monitor": "val/loss", "--threads": "2", "--model.init_args.lr": "0.2"}
    # ctxlit's options (general, task, data, checkpoint, ...) before Lightning's Trainer list
    assert (out.index("--threads") < out.index("--model.init_args.lr") < out.index("--data.init_args.batch_size")
            < out.index("--checkpoint.monitor") < out.index("--trainer.accelerator") < out.index("--trainer.max_epochs"))


def test_help_piped_into_head_ends_without_a_broken_pipe_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    process = subprocess.Popen([sys.executable, "-m", "ctxlit.fit", "--help=full"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stdout.readline().startswith(b"python -m ctxlit.fit runs")
    process.stdout.close()  # as `| head -1` does after its line
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize(("flag", "line"), [
    ("--trainer.max_epoch=3", "error: --trainer.max_epoch: no such option; did you mean --trainer.max_epochs?"),
    ("--trainer.max_epoch", "error: --trainer.max_epoch: no such option; did you mean --trainer.max_epochs?"),
    ("--checkpoint.monitr=val/loss", "error: --checkpoint.monitr: no such option; did you mean --checkpoint.monitor?"),
    ("--threds=2", "error: --threds: no such option; did you mean --threads?"),
    ("--trainer.bogus=1", "error: --trainer.bogus: no such option"),
])
def test_a_typo_in_a_trainer_or_ctxlit_option_gets_the_closest_option(flag, line, capsys):
    with pytest.raises(SystemExit) as stop:
        main([flag, *(["3"] if "=" not in flag else [])])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.strip().splitlines()[-1].startswith(line), err[-2000:]
    if flag == "--trainer.bogus=1":
        assert "did you mean" not in err


@pytest.mark.parametrize("value, parsed", [("1", 1), ("1.0", 1.0), ("0.25", 0.25), ("3", 3)])
def test_batch_limits_given_as_integers_are_batch_counts(value, parsed, capsys):
    """Lightning reads int 1 as one batch and float 1.0 as all of them; jsonargparse got the
    union in the order typing had cached (float first), and "1" meant every batch."""
    with pytest.raises(SystemExit):
        main([f"--trainer.limit_val_batches={value}", f"--trainer.val_check_interval={value}", "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    for key in ("limit_val_batches", "val_check_interval"):
        assert trainer[key] == parsed and type(trainer[key]) is type(parsed), (key, trainer[key])
