"""Sweep files parse through the real CLI the way a W&B agent calls it; README and CI agree."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from ctxlit.fit import main

ROOT = Path(__file__).parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def grid(parameters: dict) -> list[dict]:
    keys = list(parameters)
    values = [parameters[k]["values"] if "values" in parameters[k] else [parameters[k]["value"]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def assert_subset(expected, actual, key: str) -> None:
    """A dict value (class_path + some init_args) must appear in the printed config, which
    also lists the defaults of the options it did not set."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), (key, actual)
        for k, v in expected.items():
            assert_subset(v, actual.get(k), f"{key}.{k}")
    else:
        assert actual == expected, (key, actual, expected)


def test_there_are_sweeps():
    assert SWEEPS


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=lambda p: p.name)
def test_sweep_runs_parse_with_the_agents_command(sweep_file, tmp_path, monkeypatch, capsys):
    sweep = yaml.safe_load(sweep_file.read_text())
    assert sweep["method"] in {"grid", "random", "bayes"}
    command = sweep["command"]
    # SPEC §6: ${args} renders None as "None"; the JSON file form is the one that works.
    assert command[:4] == ["${env}", "${interpreter}", "-m", "ctxlit.fit"] and command[-1] == "${args_json_file}"
    configs = [command[i + 1] for i, arg in enumerate(command) if arg == "--config"][:-1]
    monkeypatch.chdir(ROOT)
    for run in grid(sweep["parameters"]):
        args_file = tmp_path / "args.json"
        args_file.write_text(json.dumps(run))  # what the agent writes for ${args_json_file}
        argv = [a for c in configs for a in ("--config", c)] + ["--config", str(args_file), "--print_config"]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code in (0, None), capsys.readouterr().err
        printed = yaml.safe_load(capsys.readouterr().out)
        for key, value in run.items():
            node = printed
            for part in key.split("."):
                node = node[part]
            assert_subset(value, node, key)


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    assert ci_command.startswith("python3 -m venv")
    assert f"\n{ci_command}\n" in readme
