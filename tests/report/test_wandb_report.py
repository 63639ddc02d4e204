"""The W&B report and workspace as code (wandb-workspaces), built offline: their spec holds the
panels and metric names; nothing touches the network; a spec comes back as the same objects."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from ctxlit.report.__main__ import main
from ctxlit.report.wandb_report import from_spec, spec_of

KNOBS = ["model.init_args.block"]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test (offline means none is tried)."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise AssertionError(f"network call attempted offline: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    yield attempts
    assert attempts == []


def panel_types(panels) -> list[str]:
    return [p["__type__"].rsplit(":", 1)[1] for p in panels]


@pytest.mark.parametrize("mode", ["offline", "no key"])
def test_offline_writes_the_spec_with_the_expected_panels(study_runs, tmp_path, monkeypatch, capsys, no_network, mode):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    if mode == "offline":
        monkeypatch.setenv("WANDB_MODE", "offline")
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    spec_path = tmp_path / "spec.json"
    assert main(["--wandb", "me/ctxlit", "--group", "tiny", str(study_runs / "study"), "--spec", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "nothing sent" in out and f"python -m ctxlit.report --publish {spec_path}" in out
    spec = json.loads(spec_path.read_text())
    report, workspace = spec["report"], spec["workspace"]
    assert (report["entity"], report["project"]) == ("me", "ctxlit")
    grid = next(b for b in report["blocks"] if b["__type__"].endswith(":PanelGrid"))
    expected = ["MarkdownPanel", "ParallelCoordinatesPlot", "BarPlot", "ScatterPlot", "MediaBrowser", "LinePlot"]
    (answers,) = [b["text"] for b in report["blocks"] if b["__type__"].endswith(":MarkdownBlock")]
    assert "| question | effect on val/acc1 | 95% CI | P(better) | p_adj | n | verdict |" in answers
    assert "| GlobalContext vs none |" in answers
    assert grid["panels"][0]["markdown"] == answers
    assert panel_types(grid["panels"]) == expected
    assert panel_types(workspace["sections"][0]["panels"]) == expected
    runset = grid["runsets"][0]
    assert runset["filters"] == "Group = 'tiny'" and runset["groupby"] == [f"config.{k}" for k in KNOBS]
    assert runset["pinned_columns"] == ["config:model.init_args.block", "summary:val/acc1", "config:model/flops"]
    _, parallel, bars, scatter, media, _ = grid["panels"]
    assert [c["metric"]["name"] for c in parallel["columns"]] == [*KNOBS, "val/acc1"]
    assert parallel["columns"][-1]["metric"]["__type__"].endswith(":SummaryMetric")
    assert bars["metrics"] == ["val/acc1"] and bars["groupby"]["name"] == KNOBS[0]
    assert (bars["groupby_aggfunc"], bars["groupby_rangefunc"]) == ("mean", "stddev")
    assert (scatter["x"]["name"], scatter["y"]["name"]) == ("model/flops", "val/acc1")
    assert media["media_keys"] == ["attention"]
    again = from_spec(spec)
    assert spec_of(*again) == spec


def test_publishing_a_spec_offline_keeps_it_and_says_so(study_runs, tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("WANDB_MODE", "offline")
    spec_path = tmp_path / "spec.json"
    assert main(["--wandb", "me/ctxlit", "--sweep", "abc", "--spec", str(spec_path)]) == 0
    capsys.readouterr()
    assert main(["--publish", str(spec_path)]) == 2
    assert "still offline (WANDB_MODE=offline)" in capsys.readouterr().err and spec_path.exists()


@pytest.mark.parametrize("argv, message", [
    (["--wandb", "me"], "--wandb takes ENTITY/PROJECT, got 'me'"),
    (["--wandb", "me/p", "--sweep", "a", "--group", "b"], "give --sweep or --group, not both"),
])
def test_bad_wandb_arguments_are_one_error(argv, message, capsys, no_network, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_a_broken_spec_is_one_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"report": {"__type__": "os:system"}}')
    assert main(["--publish", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: not a spec written by --wandb")


def test_offline_command_returns_promptly(tmp_path):
    """As a user runs it, offline, in a fresh process: bounded, no hang waiting on a server."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, "-m", "ctxlit.report", "--wandb", "me/ctxlit", "--group", "g"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "wandb-report.json").is_file()
