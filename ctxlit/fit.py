"""``python -m ctxlit.fit [--config FILE ...] [--section.key=value ...]``: train one experiment.

A LightningCLI. With no arguments it runs the built-in synthetic context benchmark
(``experiments/synthetic/default.yaml``, packaged as ``ctxlit/configs/default.yaml``): a
narrow ResNet-10 with a GC block, a few minutes on a laptop CPU. Any other experiment is a
YAML in ``experiments/``; every value in it can be overridden by a dotted flag, e.g.
``--trainer.max_epochs=1`` or ``--model.init_args.block=none`` for the baseline.

W&B: runs log offline by themselves when there is no API key or no route to the server, so
a run never waits on the network (``wandb sync <dir>`` uploads later).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def wandb_host() -> tuple[str, int]:
    """W&B's server: ``WANDB_BASE_URL`` (self-hosted) or the public API."""
    url = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def wandb_reachable(timeout: float = 2.0) -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing about the proxy route; let W&B try it
    try:
        with socket.create_connection(wandb_host(), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return wandb_host()[0] in netrc.read_text()
    except OSError:
        return False


def choose_wandb_mode() -> str:
    """Go offline unless the user chose a mode, has a key and can reach the server."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if not wandb_has_key():
        reason = "no W&B API key"
    elif not wandb_reachable():
        reason = f"{wandb_host()[0]} not reachable"
    else:
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    print(f"[ctxlit] W&B logs offline ({reason}); upload later with `wandb sync`", file=sys.stderr)
    return "offline"


def with_defaults(argv: list[str]) -> list[str]:
    """Insert the ``fit`` subcommand and the default config when they are missing.

    Lightning's DDP launcher re-executes ``python -m ctxlit.fit <argv>`` for ranks >= 1 with
    the argv rank 0 already saw, so this must be idempotent: only add what is missing.
    """
    argv = list(argv)
    if argv and argv[0] in {"-h", "--help"}:
        return argv
    if not argv or argv[0] not in SUBCOMMANDS:
        argv.insert(0, "fit")
    if not any(a in ("-c", "--config") or a.startswith(("--config=", "-c=")) for a in argv):
        argv[1:1] = ["--config", str(DEFAULT_CONFIG)]
    return argv


def main(argv: list[str] | None = None) -> int:
    choose_wandb_mode()
    from ctxlit.cli import run_cli  # heavy imports after the environment is settled

    if argv is None:
        return run_cli(with_defaults(sys.argv[1:]), from_command_line=True)
    return run_cli(with_defaults(argv))


if __name__ == "__main__":
    sys.exit(main())
