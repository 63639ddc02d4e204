"""Command line of ``python -m ctxlit.report`` (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ctxlit.report import __doc__ as DOC
from ctxlit.report.runs import ReportError, find_runs
from ctxlit.report.study import build_studies
from ctxlit.utils.files import unwritable_reason, write_atomically


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ctxlit.report", description=DOC.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run folders, folders holding runs (a sweep's), or globs")
    p.add_argument("-o", "--output", help="the file to write (default report.html; Markdown and JSON: standard output)")
    p.add_argument("--format", choices=("html", "md", "json"), default="html")
    p.add_argument("--metric", help="the metric to compare (default: the one the runs monitor)")
    p.add_argument("--title", default="ctxlit report")
    p.add_argument("--cost", action="store_true",
                   help="measure each group's network side by side on this machine's CPU (ctxlit.bench.models) "
                        "and show train/inference step time and peak memory as ratios to the baseline")
    p.add_argument("--cost-batch", type=int, default=8, metavar="N", help="with --cost: the batch measured (default 8)")
    p.add_argument("--cost-rounds", type=int, default=7, metavar="N",
                   help="with --cost: interleaved rounds, one training and one inference step of each network "
                        "per round; the median is shown (default 7)")
    p.add_argument("--cost-size", type=image_size, metavar="HxW",
                   help="with --cost: the input size measured (default: each config's own image size)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="build the W&B report and workspace of these runs")
    p.add_argument("--sweep", help="with --wandb: the runs of this sweep id")
    p.add_argument("--group", help="with --wandb: the runs of this W&B group (a sweep run here: its name)")
    p.add_argument("--spec", help="with --wandb: where the offline spec goes (default wandb-report.json)")
    p.add_argument("--publish", metavar="SPEC", help="save a spec that --wandb wrote offline to W&B")
    return p


def image_size(text: str) -> tuple[int, int]:
    """``HxW`` (``64x64``) as (H, W); argparse turns the ValueError into one usage error."""
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give HEIGHTxWIDTH in pixels, e.g. 64x64")
    return int(height), int(width)


def check_writable(path: Path, option: str) -> None:
    """One clear error, before anything is measured or written, when ``path`` cannot be written:
    a folder, a file below a file, or a place the filesystem refuses (read-only, no permission)."""
    if path.is_dir():
        raise ReportError(f"{option} {path}: is a folder; give the file to write (e.g. {path / 'report.html'})")
    problem = unwritable_reason(path.parent)
    if problem:
        raise ReportError(f"{option} {path}: {problem}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ReportError(f"{option} {path}: the file is not writable")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.publish:
            from ctxlit.report.wandb_report import publish_spec

            return publish_spec(Path(args.publish))
        if args.wandb:
            from ctxlit.report.wandb_report import publish

            spec = Path(args.spec or "wandb-report.json")
            check_writable(spec, "--spec")
            return publish(args.wandb, sweep=args.sweep, group=args.group, runs=args.runs, metric=args.metric,
                           title=args.title, spec_path=spec)
        if args.cost_batch < 1:
            raise ReportError(f"--cost-batch {args.cost_batch}: give a batch of 1 or more")
        if args.cost_rounds < 1:
            raise ReportError(f"--cost-rounds {args.cost_rounds}: give 1 or more rounds")
        if args.sweep or args.group:
            raise ReportError("--sweep and --group choose runs on W&B: give them with --wandb ENTITY/PROJECT")
        output = Path(args.output) if args.output else (Path("report.html") if args.format == "html" else None)
        if output is not None:
            check_writable(output, "-o")
        studies = build_studies(find_runs(args.runs), args.metric)
        if args.cost:
            from ctxlit.report.cost import measure_groups

            for study in studies:
                measure_groups(study, batch=args.cost_batch, size=args.cost_size, rounds=args.cost_rounds)
        if args.format == "md":
            from ctxlit.report.render import markdown

            text = markdown(studies)
        elif args.format == "json":
            from ctxlit.report.render import json_report

            text = json_report(studies)
        else:
            from ctxlit.report.attention import attention_figures
            from ctxlit.report.render import html_report

            text = html_report(studies, attention_figures(studies), title=args.title, sources=args.runs)
        if output is None:
            print(text)
            return 0
        try:
            write_atomically(output, text)
        except OSError as err:
            raise ReportError(f"-o {output}: cannot be written ({err.strerror or err})") from None
        not_results = sum(len(s.not_results) for s in studies)
        print(f"[ctxlit] report: {output} ({sum(len(s.groups) for s in studies)} groups, "
              f"{sum(len(g.runs) for s in studies for g in s.groups)} runs"
              + (f"; {not_results} runs listed as not results" if not_results else "") + ")")
        return 0
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
