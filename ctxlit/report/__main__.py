"""Command line of ``python -m ctxlit.report`` (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctxlit.report import __doc__ as DOC
from ctxlit.report.runs import ReportError, find_runs
from ctxlit.report.study import build_studies
from ctxlit.utils.files import write_atomically


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ctxlit.report", description=DOC.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run folders, folders holding runs (a sweep's), or globs")
    p.add_argument("-o", "--output", help="the file to write (default report.html; Markdown: standard output)")
    p.add_argument("--format", choices=("html", "md"), default="html")
    p.add_argument("--metric", help="the metric to compare (default: the one the runs monitor)")
    p.add_argument("--title", default="ctxlit report")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="build the W&B report and workspace of these runs")
    p.add_argument("--sweep", help="with --wandb: the runs of this sweep id")
    p.add_argument("--group", help="with --wandb: the runs of this W&B group (a sweep run here: its name)")
    p.add_argument("--spec", help="with --wandb: where the offline spec goes (default wandb-report.json)")
    p.add_argument("--publish", metavar="SPEC", help="save a spec that --wandb wrote offline to W&B")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.publish:
            from ctxlit.report.wandb_report import publish_spec

            return publish_spec(Path(args.publish))
        if args.wandb:
            from ctxlit.report.wandb_report import publish

            return publish(args.wandb, sweep=args.sweep, group=args.group, runs=args.runs, metric=args.metric,
                           title=args.title, spec_path=Path(args.spec or "wandb-report.json"))
        if args.sweep or args.group:
            raise ReportError("--sweep and --group choose runs on W&B: give them with --wandb ENTITY/PROJECT")
        studies = build_studies(find_runs(args.runs), args.metric)
        if args.format == "md":
            from ctxlit.report.render import markdown

            text = markdown(studies)
            if not args.output:
                print(text)
                return 0
        else:
            from ctxlit.report.attention import attention_figures
            from ctxlit.report.render import html_report

            text = html_report(studies, attention_figures(studies), title=args.title, sources=args.runs)
        output = Path(args.output or "report.html")
        write_atomically(output, text)
        print(f"[ctxlit] report: {output} ({sum(len(s.groups) for s in studies)} groups, "
              f"{sum(len(g.runs) for s in studies for g in s.groups)} runs)")
        return 0
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
