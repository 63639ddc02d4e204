"""A sweep file: read, checked against W&B's schema, its trials enumerated by W&B's engine,
each trial's command line built as ``wandb agent`` builds it and parsed as a ctxlit config."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path

import yaml

from ctxlit.utils.yaml_files import YAMLFileError, load_yaml

SWEEPS_ROOT = Path("runs") / "sweeps"
#: What ``${interpreter}`` and ``${env}`` become in ``wandb agent`` (wandb/wandb_agent.py).
AGENT_INTERPRETER = "python"
AGENT_ENV = "/usr/bin/env"


class SweepError(Exception):
    """A sweep file or option that cannot be used; printed as one line, exit 2."""


def load_sweep(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        sweep = load_yaml(path.read_text())
    except YAMLFileError as err:
        raise SweepError(f"{path}: {err}") from None
    if not isinstance(sweep, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with method:, parameters: and command:")
    return sweep


def sweep_name(path: str | Path, sweep: dict) -> str:
    """The sweep's folder name under ``--root``: its ``name:``, else the file's stem. A plain
    name only: a path in it would put the sweep's folder (and what the runner writes and moves
    there) outside ``--root``."""
    problem = name_problem(sweep)
    if problem:
        raise SweepError(f"{path}: {problem}")
    return str(sweep.get("name") or Path(path).stem)


def name_problem(sweep: dict) -> str | None:
    name = sweep.get("name")
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        return f"name: {name!r} is not a name (a plain folder name such as gcnet-ablation)"
    if "/" in name or "\\" in name or name in (".", "..") or name != name.strip() or "\0" in name:
        return (f"name: {name!r} is not a plain name: no '/', '\\', '..' or leading/trailing spaces "
                f"(it names the sweep's folder under --root)")
    return None


def engine():
    """W&B's sweep engine (the ``sweeps`` package)."""
    # pydantic 2 warns about the sweeps package's v1-style config on import: not the user's concern.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def next_run(sweep: dict, history: list):
    """The engine's next proposal; bayes' Gaussian-process fit warns about converging on few
    results, which says nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return engine().next_run(sweep, history)


def schema_problems(sweep: dict) -> list[str]:
    """W&B's schema violations, in W&B's words, plus ``value:`` holding a list (which the schema
    accepts as a constant, where ``values:`` was almost always meant)."""
    problems = list(engine().schema_violations_from_proposed_config(sweep))
    if name_problem(sweep):
        problems.append(name_problem(sweep))
    for key, spec in (sweep.get("parameters") or {}).items():
        if isinstance(spec, dict) and isinstance(spec.get("value"), list):
            problems.append(f"parameter {key!r} has `value:` with a list {spec['value']!r}: that is one constant "
                            f"list for every trial; write `values:` to sweep over its items")
    command = sweep.get("command")
    if not (isinstance(command, list) and "${args_json_file}" in command and "ctxlit.fit" in command):
        problems.append("command: must run `-m ctxlit.fit` and pass the parameters as `${args_json_file}` "
                        "(see sweeps/synthetic_blocks.yaml); `${args}` renders None as a string typed options reject")
    return problems


def enumerate_trials(sweep: dict, count: int | None = None) -> list[dict]:
    """A grid's trials in the engine's order (all, or the first ``count``); for random/bayes the
    first ``count`` proposals with no results yet. Each trial is ``{dotted key: value}``."""
    sweeps = engine()
    if sweep.get("method") == "grid":
        runs = sweeps.next_runs(sweep, [], n=10**6)
        trials = [run.config for run in runs if run is not None]
    else:
        if not count:
            raise SweepError(f"method {sweep.get('method')!r} has no end: give --count N (or run_cap: in the file)")
        trials, history = [], []
        for _ in range(count):
            run = next_run(sweep, history)
            if run is None:
                break
            run.state = sweeps.RunState.running
            history.append(run)
            trials.append(run.config)
    trials = [{k: v["value"] for k, v in config.items()} for config in trials]
    return trials[:count] if count else trials


def agent_command(sweep: dict, params: dict, args_json_file: str) -> list[str]:
    """The command line ``wandb agent`` builds for these parameters (wandb_agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros.update(interpreter=[AGENT_INTERPRETER], env=[AGENT_ENV], program=[str(sweep.get("program", ""))],
                  args_json_file=[args_json_file])
    line = []
    for part in sweep_utils.create_sweep_command(list(sweep["command"])):
        part = str(part)
        if part.startswith("${") and part.endswith("}"):
            line += macros.get(part[2:-1]) or []
        else:
            line.append(part)
    return line


def _fit_argv(command: list[str]) -> list[str]:
    """What follows ``-m ctxlit.fit`` in a trial's command."""
    return command[command.index("ctxlit.fit") + 1:]


def trial_config(sweep: dict, params: dict) -> dict:
    """The full config one trial runs with, parsed by ctxlit's own CLI (``--print_config``:
    nothing is built or written). A config the CLI rejects raises SweepError with its message."""
    from ctxlit.fit import main

    with tempfile.TemporaryDirectory() as tmp:
        args_file = Path(tmp) / "args.json"
        args_file.write_text(json.dumps(params))
        argv = _fit_argv(agent_command(sweep, params, str(args_file))) + ["--print_config"]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # LightningCLI warns when given args while sys.argv has others (this command's own).
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            try:
                code = main(argv)
            except SystemExit as stop:
                code = stop.code
    if code not in (0, None):
        lines = [line for line in err.getvalue().strip().splitlines() if line.strip()]
        raise SweepError(lines[-1] if lines else f"exit code {code}")
    return yaml.safe_load(out.getvalue())


def parse_problem(sweep: dict, params: dict) -> str | None:
    """Parse one trial as a ctxlit config and check that every parameter landed on exactly its
    dotted key. ``None`` when it is fine."""
    try:
        printed = trial_config(sweep, params)
    except SweepError as err:
        return str(err)
    for key, value in params.items():
        node = printed
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return f"parameter {key!r} is not a config key (no {part!r} there)"
            node = node[part]
        if not _contains(value, node):
            return f"parameter {key!r}: set to {value!r} but the config has {node!r}"
    return None


def _contains(expected, actual) -> bool:
    """``expected`` appears in ``actual``, which may also list defaults it did not set."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(_contains(v, actual.get(k)) for k, v in expected.items())
    return expected == actual


def validate(path: str | Path, count: int = 3) -> tuple[list[str], int]:
    """The file's problems, and how many trials were parsed (all of a grid, else ``count``)."""
    sweep = load_sweep(path)
    problems = schema_problems(sweep)
    if problems:
        return problems, 0
    trials = enumerate_trials(sweep, None if sweep.get("method") == "grid" else count)
    for i, params in enumerate(trials):
        problem = parse_problem(sweep, params)
        if problem:
            problems.append(f"trial {i} {json.dumps(params)}: {problem}")
    return problems, len(trials)
