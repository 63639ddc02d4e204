"""``python -m ctxlit.bench startup``: the fixed cost of a ctxlit command, before any training.

Each case runs as a fresh ``python`` process, as a user or a sweep trial starts it:

* ``import pytorch_lightning``: the floor. Lightning's own import pulls in torch, all of
  torchmetrics, and through it torchvision (models, ops and ``torch._dynamo``) and scipy;
  no ctxlit command that builds the LightningCLI parser can go below it.
* ``ctxlit --help``: the command list of ``python -m ctxlit`` (imports no torch);
* ``fit --help`` and ``--print_config`` of ``python -m ctxlit.fit`` (the default config);
* ``fit 1 step``: the default experiment shrunk to a few tiny images, ``--trainer.max_steps=1``,
  its CSV and offline W&B logs and checkpoints in a fresh temporary folder.

The number is CPU time (user + system, from ``os.wait4``: the process and the children it
reaped; W&B's ``wandb-core`` service may outlive it and is not counted), the median of
``--repeats`` runs taken in turn (case after case, round after round), so load from other
processes hits every case alike. Wall time is printed beside it; on a shared machine only CPU
time is steady. ``--baseline DIR`` runs every case also against another checkout (e.g.
``git worktree add /tmp/base <commit>``) in the same rounds, put first on ``PYTHONPATH``: the
before/after of a change in one run. W&B logs offline unless ``WANDB_MODE`` is set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the default experiment at a few 16x32 images (as the tests' TINY), for ``fit 1 step``
TINY = ["--data.init_args.train_size=32", "--data.init_args.val_size=16", "--data.init_args.image_size=[16,32]",
        "--data.init_args.batch_size=16", "--model.init_args.backbone_options.width=8",
        "--trainer.enable_progress_bar=false", "--trainer.max_steps=1"]
CASES: dict[str, list[str]] = {
    "import pytorch_lightning": ["-c", "import pytorch_lightning"],
    "ctxlit --help": ["-m", "ctxlit", "--help"],
    "fit --help": ["-m", "ctxlit.fit", "--help"],
    "--print_config": ["-m", "ctxlit.fit", "--print_config"],
    "fit 1 step": ["-m", "ctxlit.fit", *TINY],
}


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, exit code) of ``python <argv>`` in a fresh temporary folder."""
    with tempfile.TemporaryDirectory(prefix="ctxlit-startup-") as folder:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *argv], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child; Popen.wait gives none
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, wall, proc.returncode


def tree_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    env.pop("CTXLIT_RUN_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    return env


def has_command(tree: Path, argv: list[str]) -> bool:
    """Whether ``tree`` has the module ``-m`` names (an older checkout may not: it is not run
    there, or the editable install would run this checkout's module in its place)."""
    if argv[0] != "-m":
        return True
    path = tree.joinpath(*argv[1].split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def measure(cases: list[str], trees: dict[str, Path], repeats: int) -> dict[tuple[str, str], dict]:
    """{(case, tree label): {cpu_s, wall_s, failed}}: medians over ``repeats`` interleaved rounds
    (no entry for a case a tree lacks)."""
    samples: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    envs = {label: tree_env(tree) for label, tree in trees.items()}
    for _ in range(repeats):
        for case in cases:
            for label in (label for label, tree in trees.items() if has_command(tree, CASES[case])):
                samples.setdefault((case, label), []).append(run_once(CASES[case], envs[label]))
    return {key: {"cpu_s": statistics.median(s[0] for s in runs), "wall_s": statistics.median(s[1] for s in runs),
                  "failed": sum(s[2] != 0 for s in runs)} for key, runs in samples.items()}


def table(results: dict[tuple[str, str], dict], cases: list[str], labels: list[str]) -> str:
    def cell(case: str, label: str) -> str:
        r = results.get((case, label))
        return "-" if r is None else "failed" if r["failed"] else f"{r['cpu_s']:.2f} ({r['wall_s']:.1f})"

    head = ["case", *(f"{label}: CPU s (wall s)" for label in labels)]
    if len(labels) == 2:
        head.append(f"{labels[0]}/{labels[1]} CPU")  # > 1: this checkout starts faster
    rows = []
    for case in cases:
        row = [case, *(cell(case, label) for label in labels)]
        if len(labels) == 2:
            before, after = (results.get((case, label)) for label in labels)
            ok = before and after and not before["failed"] and not after["failed"] and after["cpu_s"] > 0
            row.append(f"{before['cpu_s'] / after['cpu_s']:.2f}x" if ok else "-")
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxlit.bench startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians over them (3)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="which cases (all)")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured in the same rounds")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: must be an integer >= 1; got {args.repeats}")
    if args.baseline is not None and not (args.baseline / "ctxlit" / "fit.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a ctxlit checkout (no ctxlit/fit.py)")
    this = Path(__file__).resolve().parents[2]  # the checkout this command runs from
    trees = {"baseline": args.baseline.resolve(), "this": this} if args.baseline else {"this": this}
    results = measure(args.cases, trees, args.repeats)
    print(f"CPU seconds (user + sys), median of {args.repeats} interleaved runs; wall in brackets")
    print(table(results, args.cases, list(trees)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
