"""Startup cost: ``--help`` does not import what only a run, a sweep or a report needs, and a
run imports W&B's launch models before torch (see ``ctxlit.fit.preload_wandb_launch``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ctxlit.cli
from ctxlit import fit
from ctxlit.bench import startup
from tests.test_entry_point import imported

#: what ``python -m ctxlit.fit --help`` must never import: W&B's launch models (preloaded for
#: runs only), W&B's sweep engine and its scipy/sklearn stack, the report and sweep commands
NOT_FOR_HELP = ("wandb.sdk.launch", "wandb.apis.public", "sweeps", "sklearn", "ctxlit.report", "ctxlit.sweep",
                "ctxlit.bench")


def test_fit_help_imports_nothing_only_a_run_or_another_command_needs(tmp_path, offline_env):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ctxlit.fit", "--help"], cwd=tmp_path,
                            env=offline_env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "--model.init_args.lr" in result.stdout and "--help=full" in result.stdout
    modules = imported(result.stderr)
    assert "pytorch_lightning" in modules  # the parser is Lightning's: the measurement saw it
    assert not [m for m in modules if m.startswith(NOT_FOR_HELP)]


@pytest.mark.parametrize("argv, preloaded", [
    ([], True), (["--trainer.max_epochs=1"], True), (["test", "--ckpt_path=x.ckpt"], True),
    (["--help"], False), (["--print_config"], False), (["--model.help", "ctxlit.tasks.ClassificationTask"], False),
])
def test_wandb_launch_is_preloaded_for_runs_only(argv, preloaded, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    calls = []
    monkeypatch.setattr(fit, "preload_wandb_launch", calls.append)
    monkeypatch.setattr(ctxlit.cli, "run_cli", lambda *args, **kwargs: 0)
    assert fit.main(argv) == 0
    assert calls == (["offline"] if preloaded else [])


def test_startup_bench_prints_one_row_per_case(capsys):
    assert startup.main(["--cases", "ctxlit --help", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| ctxlit --help | " in out and "failed" not in out


def test_startup_bench_refuses_a_baseline_that_is_not_a_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        startup.main(["--baseline", str(tmp_path)])
    assert stop.value.code == 2 and "not a ctxlit checkout" in capsys.readouterr().err
