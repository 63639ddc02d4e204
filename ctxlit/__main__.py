"""``python -m ctxlit <command> [options]``: every ctxlit command behind one entry point.

``python -m ctxlit fit ...`` is exactly ``python -m ctxlit.fit fit ...`` (so ``validate``,
``test`` and ``predict`` read as they should); ``python -m ctxlit.fit`` keeps working as before.
Only the chosen command's module is imported, so ``python -m ctxlit --help`` answers at once.

Lightning's DDP launcher re-executes ``python -m ctxlit.__main__ <argv>`` for ranks >= 1 with
the argv rank 0 ended with, which still starts with the subcommand: the dispatch below then
runs the same command again.
"""

from __future__ import annotations

import difflib
import importlib
import sys

#: command -> (module with a ``main(argv)``, what it does). The four Lightning subcommands go
#: to ``ctxlit.fit`` with the subcommand left in its argv.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("ctxlit.fit", "train one experiment (no --config: the built-in synthetic benchmark)"),
    "validate": ("ctxlit.fit", "validation metrics of a checkpoint (--ckpt_path)"),
    "test": ("ctxlit.fit", "test metrics of a checkpoint, on the data's test split (else validation)"),
    "predict": ("ctxlit.fit", "write the model's predictions (classification: predictions.csv)"),
    "sweep": ("ctxlit.sweep", "W&B sweep files: validate, plan, run (locally, no server)"),
    "report": ("ctxlit.report.__main__", "compare runs: one HTML file, a Markdown table, or a W&B report"),
    "summary": ("ctxlit.summary", "parameters, FLOPs and plugin sites of a backbone or an experiment"),
    "bench": ("ctxlit.bench.__main__", "benchmarks that print ratios against a baseline measured alongside"),
}
LIGHTNING = ("fit", "validate", "test", "predict")


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return (f"usage: python -m ctxlit <command> [options]\n\ncommands:\n{rows}\n\n"
            f"`python -m ctxlit <command> --help` shows a command's options. `python -m ctxlit.fit ...` is the\n"
            f"same as `python -m ctxlit fit ...`, with `fit` optional there.")


def main(argv: list[str] | None = None) -> int:
    """Run the command named first in ``argv`` (the process's own command line when None)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    if args[0] not in COMMANDS:
        print(f"error: {_problem(args[0], args)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    if args[0] in LIGHTNING:
        # The subcommand stays first: ctxlit.fit reads it, and (from the command line) sets
        # sys.argv to what the DDP launcher re-executes.
        return int(module.main(None if argv is None else args) or 0)
    return int(module.main(args[1:]) or 0)


def _problem(first: str, args: list[str]) -> str:
    if first.startswith("-"):
        return f"name a command before the options, e.g. `python -m ctxlit fit {' '.join(args)}`"
    close = difflib.get_close_matches(first, COMMANDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown command {first!r}{hint}; choose from {', '.join(COMMANDS)}"


if __name__ == "__main__":
    sys.exit(main())
