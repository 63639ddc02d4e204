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
``summary.json`` and W&B files land in ``runs/sweeps/<sweep>/trial-NNN-<key>/``. ``trial.json``
there records its parameters, identity (``<key>``, a hash of the parameters and the command),
command, process, W&B run id, status, metric and time.

Running again resumes, by identity: a configuration already done is skipped wherever it now sits
in the file; an interrupted one continues from its ``last.ckpt`` and its W&B run; a failed one
starts again, its earlier attempt moved to ``attempt-N/``; trials no longer in the file are kept
and listed as such. Nothing is deleted. One runner per sweep folder (``runner.lock``), and a
trial's processes end when its runner does, however it ends. ``--parallel N`` runs N trials at once,
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

from ctxlit.runs import Status
from ctxlit.sweep.files import (
    AGENT_ENV, AGENT_INTERPRETER, SWEEPS_ROOT, SweepError, agent_command, engine, enumerate_trials, load_sweep,
    parse_problem, schema_problems, sweep_name, trial_config, validate,
)
from ctxlit.sweep.runner import Runner, SweepLock, Trial, metric_history, shown, trial_argv, trial_env, trial_key

__all__ = [
    "AGENT_ENV", "AGENT_INTERPRETER", "SWEEPS_ROOT", "Runner", "SweepError", "SweepLock", "Trial", "agent_command",
    "engine", "enumerate_trials", "load_sweep", "main", "metric_history", "parse_problem", "schema_problems",
    "sweep_name", "trial_argv", "trial_config", "trial_env", "trial_key", "validate",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxlit.sweep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    root = dict(default=str(SWEEPS_ROOT), help=f"where sweep folders go ({SWEEPS_ROOT})")
    p_validate = sub.add_parser("validate", help="check sweep files: W&B's schema, then every trial as a ctxlit config; "
                                                 "print each trial's command line")
    p_validate.add_argument("files", nargs="+")
    p_validate.add_argument("--count", type=int, default=3, help="random/bayes: how many proposals to parse (3)")
    p_validate.add_argument("--root", **root)
    p_plan = sub.add_parser("plan", help="the numbered trials as the command lines the runner runs")
    p_plan.add_argument("file")
    p_plan.add_argument("--count", type=int, help="random/bayes: how many (grids list every trial)")
    p_plan.add_argument("--root", **root)
    p_run = sub.add_parser("run", help="run the trials here, no W&B server needed")
    p_run.add_argument("file")
    p_run.add_argument("--parallel", type=int, default=1, help="trials at once, each on its own GPUs (1)")
    p_run.add_argument("--devices-per-trial", type=int,
                       help="GPUs visible to each trial (the file's trainer.devices, else 1); must equal trainer.devices")
    p_run.add_argument("--count", type=int, help="at most this many trials (random/bayes: required)")
    p_run.add_argument("--root", **root)
    args = parser.parse_args(argv)
    try:
        if args.count is not None and args.count < 1:
            raise SweepError(f"--count must be at least 1 (got {args.count})")
        if args.command == "validate":
            return _validate(args.files, args.count, Path(args.root))
        if args.command == "plan":
            return _plan(args.file, args.count, Path(args.root))
        runner = Runner(args.file, args.parallel, args.devices_per_trial, args.count, Path(args.root))
        trials = runner.run()
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if runner.stopping:
        return 143
    return 0 if all(t.status.done for t in trials if t.in_sweep) else 1


def _validate(files: list[str], count: int, root: Path) -> int:
    bad = 0
    for path in files:
        problems, parsed = validate(path, count)
        if problems:
            bad += 1
            print(f"{path}: {len(problems)} problem(s)")
            for problem in problems:
                print(f"  {problem}")
            continue
        print(f"{path}: ok ({parsed} trials parsed); each trial runs:")
        runner = Runner(path, count=None if load_sweep(path).get("method") == "grid" else count, root=root, quiet=True)
        for trial in runner.planned():
            print(f"  {trial.dir.name}: {shown(trial_argv(runner.sweep, trial))}")
    return 1 if bad else 0


def _plan(path: str, count: int | None, root: Path) -> int:
    runner = Runner(path, count=count, root=root, quiet=True)
    trials = runner.planned()
    print(f"[ctxlit] each trial runs in its folder under {runner.dir} with CTXLIT_RUN_DIR=<folder>, "
          f"WANDB_RUN_GROUP={runner.name}, WANDB_RUN_ID=<its run id>, WANDB_RESUME=allow, "
          f"WANDB_SWEEP_PARAM_PATH=<folder>/sweep-params.yaml")
    for i, trial in enumerate(trials):
        state = ("done: skipped" if trial.status.done else "running elsewhere: not started" if trial.status is Status.RUNNING
                 else f"resumes from {trial.resume_from}" if trial.resume_from else trial.status.value)
        print(f"{i:3d}  {trial.dir.name}  ({state})  {json.dumps(trial.params)}")
        print(f"     {shown(trial_argv(runner.sweep, trial))}")
    print(f"{len(trials)} trials")
    return 0

