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


def test_ci_tests_the_lowest_versions_pyproject_accepts():
    """The floor job pins each package to pyproject's lowest (``torch>=2.6`` -> ``torch==2.6.0``),
    and installs rich, with which Lightning prints its tables differently."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    floor = [line for line in lines if line.startswith("python3 -m venv .venv-floor")]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert len(floor) == 1
    for package in ("torch", "torchvision", "pytorch-lightning", "wandb-workspaces"):
        lowest = re.search(rf'"{package}>=([0-9.]+)"', pyproject).group(1).split(".")
        pinned = re.search(rf'"{package}==([0-9.]+)"', floor[0]).group(1).split(".")
        assert pinned[:len(lowest)] == lowest and set(pinned[len(lowest):]) <= {"0"}, (package, pinned, lowest)
    assert " rich " in floor[0]


def test_no_release_known_to_be_compromised_is_accepted():
    """pytorch-lightning 2.6.2/2.6.3 stole credentials; up to 2.6.5 a checkpoint's hyper-parameters
    could name any function to call. wandb-workspaces < 0.4.2 fails to import with wandb >= 0.27.1."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    floors = {name: tuple(map(int, version.split("."))) for name, version in re.findall(r'"([\w-]+)>=([0-9.]+)"', pyproject)}
    assert floors["pytorch-lightning"] >= (2, 6, 6) and floors["wandb-workspaces"] >= (0, 4, 2)
    assert re.search(r'"safetensors[">=]', pyproject)


def test_ci_stops_at_a_failed_install_or_suite():
    """``set -e`` ignores a failure inside an ``a && b && c`` list unless it is the last command,
    so each job's line must be followed by a check of its status."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for start in ("python3 -m venv .venv &&", "python3 -m venv .venv-floor"):
        i = next(k for k, line in enumerate(lines) if line.startswith(start))
        following = next(line for line in lines[i + 1:] if line.strip() and not line.startswith("#"))
        assert following == 'status=$?; [ "$status" -eq 0 ] || exit "$status"', start
