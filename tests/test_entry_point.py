"""``python -m ctxlit <command>``: the one entry point, run in subprocesses as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from ctxlit.__main__ import COMMANDS
from ctxlit.fit import main as fit_main
from tests.conftest import TINY


def ctxlit(*args: str, cwd=None, env=None, module: str = "ctxlit", importtime: bool = False):
    flags = ["-X", "importtime"] if importtime else []
    if env is not None:
        env = {k: v for k, v in env.items() if k != "WANDB_SERVICE"}  # see conftest.run_fit
    return subprocess.run([sys.executable, *flags, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def imported(importtime_stderr: str) -> set[str]:
    """The modules a ``python -X importtime`` run imported (its stderr's last column)."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_help_lists_every_command_without_importing_torch():
    result = ctxlit("--help", importtime=True)
    assert result.returncode == 0
    for name in COMMANDS:
        assert f"\n  {name} " in result.stdout, name
    assert "torch" not in imported(result.stderr) and "pytorch_lightning" not in imported(result.stderr)


@pytest.mark.parametrize("args, message", [
    (["tset"], "error: unknown command 'tset' (did you mean 'test'?); choose from fit, validate, test"),
    (["--trainer.max_epochs=1"], "error: name a command before the options, e.g. `python -m ctxlit fit --trainer"),
    ([], "usage: python -m ctxlit <command> [options]"),
])
def test_a_missing_or_unknown_command_is_one_clear_error(args, message):
    result = ctxlit(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_fit_through_ctxlit_is_fit_through_ctxlit_fit(tmp_path, capsys, monkeypatch):
    """``python -m ctxlit fit`` (a subprocess) prints the config ``ctxlit.fit`` without the
    subcommand prints."""
    flags = ["--print_config", "--trainer.max_epochs=3", "--model.init_args.block=se"]
    result = ctxlit("fit", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        fit_main(flags)
    config = yaml.safe_load(result.stdout)
    assert config == yaml.safe_load(capsys.readouterr().out) and config["model"]["init_args"]["block"] == "se"


def test_other_commands_get_their_own_arguments():
    sweep = ctxlit("sweep", "--help")
    assert sweep.returncode == 0 and "{validate,plan,run}" in sweep.stdout
    report = ctxlit("report", "--help")
    assert report.returncode == 0 and "usage: python -m ctxlit.report" in report.stdout
    missing = ctxlit("report", "no-such-folder")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")


@pytest.mark.slow
def test_ddp_ranks_rerun_the_ctxlit_command(tmp_path, offline_env):
    """Lightning's launcher starts rank 1 as ``python -m ctxlit.__main__ <argv>``: it must run
    the same fit (two processes, one finished run, one W&B run)."""
    result = ctxlit("fit", *TINY, "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
                    "--trainer.max_epochs=1", cwd=tmp_path, env=offline_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    assert len(list((tmp_path / "runs" / "wandb").glob("offline-run-*"))) == 1
    assert (tmp_path / "runs" / "synthetic" / "version_0" / "checkpoints" / "last.ckpt").exists()
