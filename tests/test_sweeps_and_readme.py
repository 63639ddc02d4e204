"""README and CI agree. (Every sweep file is parsed trial by trial, through the agent's command line,
by tests/study/test_sweep_runner.py::test_every_sweep_file_validates.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_there_are_sweeps():
    assert SWEEPS


def test_ci_runs_the_readme_test_command():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in lines if line.startswith("python3 -m venv .venv &&")]
    assert len(commands) == 1 and f"\n{commands[0]}\n" in readme


def test_ci_tests_the_lowest_torch_pyproject_accepts():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    floor = [line for line in lines if line.startswith("python3 -m venv .venv-floor")]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert len(floor) == 1
    for package in ("torch", "torchvision"):
        lowest = re.search(rf'"{package}>=([0-9.]+)"', pyproject).group(1)
        pinned = re.search(rf'"{package}==([0-9.]+)"', floor[0]).group(1)
        assert pinned.split(".")[:2] == lowest.split(".")[:2], (package, pinned, lowest)
