"""``python -m ctxlit.bench {blocks,data,models,startup} [options]``: dispatch to one benchmark."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "blocks": "ctxlit.bench.blocks",  # block cost vs a plain 3x3 conv; NL SDPA; LR no-unfold
    "data": "ctxlit.bench.data",  # input pipelines' images/s vs a PIL reference
    "models": "ctxlit.bench.models",  # whole networks' training and inference steps vs a baseline network
    "startup": "ctxlit.bench.startup",  # fixed CPU cost of --help, --print_config, a 1-step fit
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        chosen = f"unknown benchmark {argv[0]!r}; " if argv and argv[0] not in {"-h", "--help"} else ""
        print(f"{chosen}usage: python -m ctxlit.bench {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
