"""README and CI agree. (Every sweep file is parsed trial by trial, through the agent's command line,
by tests/study/test_sweep_runner.py::test_every_sweep_file_validates.)"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_there_are_sweeps():
    assert SWEEPS


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    assert ci_command.startswith("python3 -m venv")
    assert f"\n{ci_command}\n" in readme
