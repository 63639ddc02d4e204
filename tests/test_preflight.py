"""Bad input found before anything exists: one ``error:`` line naming the culprit, exit 2, no
traceback, and no run folder, checkpoint or W&B run (issue 11's probed cases)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from ctxlit.fit import DEFAULT_CONFIG, main
from tests.conftest import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A one-epoch baseline run to resume from: its folder and its last checkpoint."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("CTXLIT_RUN_DIR", str(run_dir))
        mp.chdir(run_dir.parent)
        assert main([*TINY, "--model.init_args.block=none", "--trainer.max_epochs=1"]) == 0
    return {"dir": run_dir, "last": run_dir / "checkpoints" / "last.ckpt"}


def fails_cleanly(argv, tmp_path, capsys, monkeypatch, culprit: str) -> str:
    """Run ``argv`` with its run folder in ``tmp_path/run``; exit 2, the one line, nothing written."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("CTXLIT_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = main(argv)
    except SystemExit as exit_:  # the parser's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    assert culprit in err.strip().splitlines()[-1], err[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(("flag", "culprit"), [
    ("--model.init_args.lr=-0.1", "--model.init_args.lr: must be a number > 0; got -0.1"),
    ("--model.init_args.lr=0", "--model.init_args.lr: must be a number > 0; got 0.0"),
    ("--model.init_args.momentum=-1", "--model.init_args.momentum: must be a number in [0, 1); got -1.0"),
    ("--model.init_args.label_smoothing=2", "--model.init_args.label_smoothing: must be a number in [0, 1); got 2.0"),
    ("--model.init_args.warmup_epochs=-3", "--model.init_args.warmup_epochs: must be a number >= 0; got -3.0"),
    ("--model.init_args.weight_decay=-1e-4", "--model.init_args.weight_decay: must be a number >= 0"),
    ("--trainer.max_epochs=-5", "--trainer.max_epochs: must be -1 (no limit) or an integer >= 0; got -5"),
    ("--trainer.max_steps=-2", "--trainer.max_steps: must be -1 (no limit) or an integer >= 0; got -2"),
    ("--data.init_args.batch_size=0", "--data.init_args.batch_size: must be an integer >= 1; got 0"),
    ("--threads=0", "--threads: must be an integer >= 1; got 0"),
    ("--trainer.max_epoch=3", "--trainer.max_epoch: no such option; did you mean --trainer.max_epochs?"),  # no abbreviations
    ("--checkpoint.dirpath=/etc/passwd/x", "--checkpoint.dirpath /etc/passwd/x: /etc/passwd is a file, not a folder"),
])
def test_a_bad_option_is_one_error_before_anything_is_written(flag, culprit, tmp_path, capsys, monkeypatch):
    fails_cleanly([*TINY, flag], tmp_path, capsys, monkeypatch, culprit)


def test_a_food_image_size_below_the_backbone_stride_is_one_error(tmp_path, capsys, monkeypatch):
    food = Path(__file__).parents[1] / "experiments" / "food" / "resnet18_112.yaml"
    fails_cleanly(["--config", str(food), "--data.init_args.root=.", "--data.init_args.image_size=1"],
                  tmp_path, capsys, monkeypatch,
                  "--data.init_args.image_size: must be an integer >= 32 (the backbones downsample 32x); got 1")


def test_a_null_number_from_a_sweep_json_is_one_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "args.json").write_text(json.dumps({"model.init_args.lr": None}))
    fails_cleanly(["--config", str(DEFAULT_CONFIG), "--config", str(tmp_path / "args.json"), *TINY],
                  tmp_path, capsys, monkeypatch, "--model.init_args.lr: must be a number > 0; got null")


def test_an_unwritable_run_folder_is_one_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("CTXLIT_RUN_DIR", str(tmp_path / "file" / "run"))
    monkeypatch.chdir(tmp_path)
    assert main(TINY) == 2
    assert f"CTXLIT_RUN_DIR {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file" in capsys.readouterr().err


def _read_only_folder(tmp_path) -> Path:
    """A folder no file can be created in: mode 0o555, or (root ignores mode bits) sysfs."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_a_read_only_default_root_dir_is_one_error(tmp_path, capsys, monkeypatch):
    folder = _read_only_folder(tmp_path)
    monkeypatch.delenv("CTXLIT_RUN_DIR", raising=False)
    fails_cleanly([*TINY, f"--trainer.default_root_dir={folder / 'runs'}"], tmp_path, capsys, monkeypatch,
                  f"--trainer.default_root_dir {folder / 'runs'}: {folder} is not writable")


def test_a_predictions_path_that_cannot_take_the_csv_is_one_error_before_predicting(trained, tmp_path, capsys,
                                                                                     monkeypatch):
    predict = ["predict", *TINY, "--model.init_args.block=none", f"--ckpt_path={trained['last']}"]
    (tmp_path / "a-folder").mkdir()
    fails_cleanly([*predict, f"--predictions.path={tmp_path / 'a-folder'}"], tmp_path, capsys, monkeypatch,
                  f"--predictions.path {tmp_path / 'a-folder'}: a folder; classification writes one CSV file")
    folder = _read_only_folder(tmp_path)
    fails_cleanly([*predict, f"--predictions.path={folder / 'p.csv'}"], tmp_path, capsys, monkeypatch,
                  f"--predictions.path {folder / 'p.csv'}: {folder} is not writable")


def _bad_checkpoints(folder):
    (folder / "random.ckpt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    (folder / "empty.ckpt").write_bytes(b"")
    torch.save({"conv.weight": torch.zeros(1)}, folder / "weights.pt")
    (folder / "folder.ckpt").mkdir()


@pytest.mark.parametrize(("name", "culprit"), [
    ("missing.ckpt", "missing.ckpt: no such file"),
    ("empty.ckpt", "empty.ckpt: the file is empty"),
    ("random.ckpt", "random.ckpt: not a readable PyTorch checkpoint"),
    ("weights.pt", "weights.pt: a PyTorch file, but not a Lightning checkpoint"),
    ("folder.ckpt", "folder.ckpt: not a file"),
])
def test_a_bad_checkpoint_is_one_error_naming_it(name, culprit, tmp_path, capsys, monkeypatch):
    files = tmp_path / "files"
    files.mkdir()
    _bad_checkpoints(files)
    line = fails_cleanly([*TINY, f"--ckpt_path={files / name}"], tmp_path, capsys, monkeypatch, culprit)
    assert line.startswith(f"error: --ckpt_path {files / name}")
    assert "weights_only" not in line  # torch's advice to unpickle an untrusted file


def test_resume_refuses_to_change_the_model(trained, tmp_path, capsys, monkeypatch):
    line = fails_cleanly([*TINY, "--model.init_args.block=nl", "--model.init_args.lr=0.01",
                          f"--ckpt_path={trained['last']}"], tmp_path, capsys, monkeypatch,
                         "this command line changes its model")
    assert 'block: "none" in the checkpoint, "nl" here' in line and "lr: 0.2 in the checkpoint, 0.01 here" in line
    assert "--resume.allow_changed=[block,lr]" in line


def test_resume_with_other_classes_is_one_error(trained, tmp_path, capsys, monkeypatch):
    fails_cleanly([*TINY, "--model.init_args.block=none", "--data.init_args.num_shapes=3",
                   f"--ckpt_path={trained['last']}"], tmp_path, capsys, monkeypatch,
                  "--ckpt_path was trained for 4 classes and this data has 3")


def test_resume_may_change_what_allow_changed_names(trained, tmp_path, monkeypatch):
    """The allowed change is the one the run uses (not silently the checkpoint's lr)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("CTXLIT_RUN_DIR", str(tmp_path / "resumed"))
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--model.init_args.block=none", "--model.init_args.lr=0.01", "--trainer.max_epochs=2",
                 "--resume.allow_changed=[lr]", f"--ckpt_path={trained['last']}"]) == 0
    config = yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())
    assert config["model"]["init_args"]["lr"] == 0.01 and config["model"]["init_args"]["block"] == "none"
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["hyper_parameters"]["lr"] == 0.01


def test_fast_dev_run_writes_no_checkpoint_or_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("CTXLIT_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--trainer.fast_dev_run=true"]) == 0
    assert list(tmp_path.iterdir()) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wandb_online_without_a_key_is_one_error(offline_env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.chdir(tmp_path)
    assert main(TINY) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: WANDB_MODE=online, but no W&B API key for ") and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["home"]  # the fixture's HOME alone


def test_wandb_online_with_no_route_fails_within_its_bound(offline_env, tmp_path, capsys, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(TINY) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} not reachable within 3 s" in err and "Traceback" not in err


def test_a_netrc_login_counts_for_the_host_wandb_uses(offline_env, capsys, monkeypatch):
    """``wandb login`` writes the key under wandb's own host, whatever it is today."""
    import os

    from ctxlit.fit import server_address, wandb_base_url, wandb_has_key, wandb_mode_and_notice

    host = server_address(wandb_base_url())[0]
    assert host and not wandb_has_key(host)
    netrc = offline_env["NETRC"]

    def login(machine: str) -> None:
        with open(netrc, "w") as f:
            f.write(f"machine {machine}\n  login user\n  password {'k' * 40}\n")
        os.chmod(netrc, 0o600)

    login(host)
    assert wandb_has_key(host) and not wandb_has_key("api.example.org")
    # The mode choice asks for the key of the server wandb resolves (here WANDB_BASE_URL's):
    # a login for it gets past "no key" to the probe.
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    login("127.0.0.1")
    mode, notice = wandb_mode_and_notice()
    assert mode == "offline" and "not reachable within 3 s" in notice


def _lr_at(run_dir, step: int) -> float:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        return next(float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr") and int(r["step"]) == step)


def test_extending_max_epochs_on_resume_follows_the_new_schedule_from_its_first_step(trained, tmp_path, monkeypatch):
    """The first resumed step's LR is the 2-epoch schedule's, as in a run of 2 epochs from the
    start, not the 1-epoch schedule's last (0 at the end of the cosine)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    flags = [*TINY, "--model.init_args.block=none", "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1"]
    monkeypatch.setenv("CTXLIT_RUN_DIR", str(tmp_path / "resumed"))
    assert main([*flags, f"--ckpt_path={trained['last']}"]) == 0
    monkeypatch.setenv("CTXLIT_RUN_DIR", str(tmp_path / "straight"))
    assert main(flags) == 0
    first = torch.load(trained["last"], weights_only=True)["global_step"]  # 4 steps an epoch
    # train/lr is logged at the step it was used for, before the scheduler steps
    assert _lr_at(tmp_path / "resumed", first) == pytest.approx(_lr_at(tmp_path / "straight", first))
    assert _lr_at(tmp_path / "resumed", first) > 0.05


def test_an_allowed_lr_change_on_resume_is_the_lr_the_resumed_steps_use(trained, tmp_path, monkeypatch, capsys):
    """--resume.allow_changed=[lr] with half the lr: every resumed step's logged lr is half the
    one of the same resume without the change (the schedule is rebuilt from the new base)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    flags = [*TINY, "--model.init_args.block=none", "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1",
             f"--ckpt_path={trained['last']}"]
    monkeypatch.setenv("CTXLIT_RUN_DIR", str(tmp_path / "same"))
    assert main(flags) == 0
    assert "[ctxlit] resume: the schedule" not in capsys.readouterr().err
    monkeypatch.setenv("CTXLIT_RUN_DIR", str(tmp_path / "halved"))
    assert main([*flags, "--model.init_args.lr=0.1", "--resume.allow_changed=[lr]"]) == 0
    assert ("[ctxlit] resume: the schedule goes on from this step with this run's learning rate "
            "(the checkpoint's -> this run's: 0.2 -> 0.1)") in capsys.readouterr().err
    first = torch.load(trained["last"], weights_only=True)["global_step"]
    for step in range(first, first + 4):
        assert _lr_at(tmp_path / "halved", step) == pytest.approx(_lr_at(tmp_path / "same", step) / 2)
    assert _lr_at(tmp_path / "same", first) > 0.05
    resumed = torch.load(tmp_path / "halved" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["lr_schedulers"][0]["base_lrs"] == [0.1] * len(resumed["lr_schedulers"][0]["base_lrs"])


def test_default_root_dir_holds_the_logs_too(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("CTXLIT_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path / 'elsewhere'}"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["elsewhere"]
    assert (tmp_path / "elsewhere" / "runs" / "synthetic" / "version_0" / "metrics.csv").is_file()
    assert list((tmp_path / "elsewhere" / "runs" / "wandb").glob("offline-run-*"))


class RecordThreads(pl.Callback):
    """Writes ``torch.get_num_threads()`` at the start of training to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        Path(self.path).write_text(str(torch.get_num_threads()))


def test_threads_sets_the_intra_op_thread_count_of_the_fit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    record = ["--trainer.callbacks+=tests.test_preflight.RecordThreads", "--trainer.callbacks.path=threads.txt"]
    try:
        for threads in (1, 2):
            args = [*TINY, "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.logger=false",
                    "--trainer.enable_checkpointing=false", f"--threads={threads}", *record]
            assert main(args) == 0
            assert (tmp_path / "threads.txt").read_text() == str(threads)
    finally:
        torch.set_num_threads(before)


def test_evaluation_and_training_options_may_change_outside_fit_only():
    from jsonargparse import Namespace

    from ctxlit.errors import ConfigError
    from ctxlit.preflight import check_resume

    saved = {"_class_path": "ctxlit.tasks.SegmentationTask", "lr": 0.01, "scales": [1.0], "flip": False}
    given = Namespace(class_path="ctxlit.tasks.SegmentationTask",
                      init_args=Namespace(lr=0.01, scales=[0.5, 1.0, 1.5], flip=True))
    for subcommand in ("validate", "test", "predict"):
        check_resume(saved, given, [], subcommand)
    with pytest.raises(ConfigError, match=r"^--ckpt_path resumes a run, .*scales: \[1.0\] in the checkpoint, \[0.5, 1.0, 1.5\] "
                                          r"here; flip: false in the checkpoint, true here\."):
        check_resume(saved, given, [], "fit")
    # how the weights were trained does not matter to an evaluation: returned for a note
    given.init_args.lr = 0.1
    assert check_resume(saved, given, [], "test") == {"lr": (0.01, 0.1)}
    with pytest.raises(ConfigError, match=r"^--ckpt_path resumes a run, .*lr: 0.01 in the checkpoint, 0.1 here"):
        check_resume(saved, given, [], "fit")
    # what the weights compute does
    saved["head_block"], given.init_args.head_block = "gc", "none"
    with pytest.raises(ConfigError, match=r"^--ckpt_path loads the model that test runs, .*head_block: \"gc\" in the "
                                          r"checkpoint, \"none\" here\. .*allow_changed=\[head_block\]"):
        check_resume(saved, given, [], "test")
