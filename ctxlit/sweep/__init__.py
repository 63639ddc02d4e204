"""``python -m ctxlit.sweep validate|plan|run``: W&B sweep files checked, listed and run locally.

The trials come from W&B's own sweep engine (the ``sweeps`` package, what the W&B server runs)
and their command lines from wandb's own builder (``create_sweep_command_args``, what
``wandb agent`` runs), so a sweep run here is the sweep the agent would run:

    python -m ctxlit.sweep validate sweeps/*.yaml      # schema + every trial parsed as a config
    python -m ctxlit.sweep plan sweeps/gcnet_ablation_synthetic.yaml
    python -m ctxlit.sweep run sweeps/gcnet_ablation_synthetic.yaml --parallel 2

``run`` needs no W&B server. Each trial runs in its own process with the environment the agent
gives it (``WANDB_SWEEP_PARAM_PATH``: its parameters go into the run config) plus
``WANDB_RUN_GROUP`` (the sweep's name) and ``CTXLIT_RUN_DIR``, so its CSV logs, checkpoints,
``summary.json`` and W&B files land in ``runs/sweeps/<sweep>/<trial>/``. ``trial.json`` there
records its parameters, command, status, metric and time. Running again resumes: finished trials
are skipped, failed or interrupted ones start afresh. ``--parallel N`` runs N trials at once,
each pinned to its own GPUs through ``CUDA_VISIBLE_DEVICES`` (one agent per GPU set, as W&B
recommends); on CPU the slots are processes sharing the cores. A sweep with ``early_terminate:``
(hyperband) has its running trials judged every few seconds by W&B's own ``stop_runs`` on their
metric histories (metrics.csv), and the ones it names are stopped: status ``stopped``, done.

This module reads sweep files and run folders and starts ``python -m ctxlit.fit``; it never
imports a task.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ctxlit.sweep.files import (  # noqa: F401  (_engine: W&B's engine, for callers that drive it)
    AGENT_ENV, AGENT_INTERPRETER, SWEEPS_ROOT, SweepError, _engine, agent_command, enumerate_trials, load_sweep,
    parse_problem, schema_problems, sweep_name, trial_config, validate,
)
from ctxlit.sweep.runner import DONE, Runner, Trial, load_trial, metric_history, metric_of, trial_env

__all__ = [
    "AGENT_ENV", "AGENT_INTERPRETER", "DONE", "SWEEPS_ROOT", "Runner", "SweepError", "Trial", "agent_command",
    "enumerate_trials", "load_sweep", "load_trial", "main", "metric_history", "metric_of", "parse_problem",
    "schema_problems", "sweep_name", "trial_config", "trial_env", "validate",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxlit.sweep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_validate = sub.add_parser("validate", help="check sweep files: W&B's schema, then every trial as a ctxlit config")
    p_validate.add_argument("files", nargs="+")
    p_validate.add_argument("--count", type=int, default=3, help="random/bayes: how many proposals to parse (3)")
    p_plan = sub.add_parser("plan", help="the numbered trials as the command lines the agent runs")
    p_plan.add_argument("file")
    p_plan.add_argument("--count", type=int, help="random/bayes: how many (grids list every trial)")
    p_run = sub.add_parser("run", help="run the trials here, no W&B server needed")
    p_run.add_argument("file")
    p_run.add_argument("--parallel", type=int, default=1, help="trials at once, each on its own GPUs (1)")
    p_run.add_argument("--devices-per-trial", type=int, default=1, help="GPUs visible to each trial (1)")
    p_run.add_argument("--count", type=int, help="at most this many trials (random/bayes: required)")
    p_run.add_argument("--root", default=str(SWEEPS_ROOT), help=f"where sweep folders go ({SWEEPS_ROOT})")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args.files, args.count)
        if args.command == "plan":
            return _plan(args.file, args.count)
        runner = Runner(args.file, args.parallel, args.devices_per_trial, args.count, Path(args.root))
        trials = runner.run()
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if runner._stopping:
        return 143
    return 0 if all(t.status in DONE for t in trials) else 1


def _validate(files: list[str], count: int) -> int:
    bad = 0
    for path in files:
        problems, parsed = validate(path, count)
        if problems:
            bad += 1
            print(f"{path}: {len(problems)} problem(s)")
            for problem in problems:
                print(f"  {problem}")
        else:
            print(f"{path}: ok ({parsed} trials parsed)")
    return 1 if bad else 0


def _plan(path: str, count: int | None) -> int:
    sweep = load_sweep(path)
    problems = schema_problems(sweep)
    if problems:
        raise SweepError(f"{path}: " + "; ".join(problems))
    name = sweep_name(path, sweep)
    trials = enumerate_trials(sweep, count)
    for i, params in enumerate(trials):
        args_file = f"{SWEEPS_ROOT / name / f'trial-{i:03d}' / 'sweep-args.json'}"
        print(f"{i:3d}  {json.dumps(params)}")
        print(f"     {' '.join(agent_command(sweep, params, args_file))}")
    print(f"{len(trials)} trials")
    return 0
