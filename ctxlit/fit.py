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

import contextlib
import importlib
import netrc
import os
import socket
import ssl
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from ctxlit.errors import ConfigError, CtxlitError
from ctxlit.preflight import config_files
from ctxlit.run_evaluation import run_config_for
from ctxlit.utils.malloc import keep_freed_memory

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


#: How long the W&B server may take to accept a connection, and then to answer an HTTP request
#: (any status), before a run logs offline: a run never waits longer on the network.
PROBE_SECONDS = 3.0
ANSWER_SECONDS = 10.0

def wandb_base_url() -> str:
    """The server wandb itself would use, resolved as ``wandb.setup`` resolves it (its settings
    file, where ``wandb login --host`` writes, then ``WANDB_BASE_URL``), else wandb's built-in
    default, which changes between wandb versions. No service is started."""
    import wandb

    settings = wandb.Settings()
    config_dir = os.environ.get("WANDB_CONFIG_DIR")
    settings.settings_system = str(Path(config_dir or Path.home() / ".config" / "wandb").expanduser() / "settings")
    with contextlib.suppress(Exception):  # a broken settings file: wandb reports it itself later
        settings.update_from_system_settings()
    settings.update_from_env_vars(dict(os.environ))
    return str(settings.base_url)


def server_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)


def wandb_unanswered(url: str) -> str | None:
    """Why the server at ``url`` cannot be used now (no route, or a connection that it accepts but
    never answers, as wandb would then wait 90 s and fail), or None when it answers an HTTP
    request. Bounded by :data:`PROBE_SECONDS` + :data:`ANSWER_SECONDS` whatever the server does
    (the probe runs in a thread that is left behind if the server trickles its answer)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a direct probe says nothing about the proxy route; let W&B try it
    host, port = server_address(url)
    silent = f"{host}:{port} accepted the connection but sent no answer within {ANSWER_SECONDS:g} s"
    outcome = [silent]

    def probe() -> None:
        outcome[0] = _http_probe(url, host, port, silent)

    thread = threading.Thread(target=probe, name="ctxlit-wandb-probe", daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS + ANSWER_SECONDS)
    return outcome[0]


def _http_probe(url: str, host: str, port: int, silent: str) -> str | None:
    try:
        sock = socket.create_connection((host, port), timeout=PROBE_SECONDS)
    except OSError:
        return f"{host}:{port} not reachable within {PROBE_SECONDS:g} s"
    try:
        sock.settimeout(ANSWER_SECONDS)
        if urlsplit(url).scheme == "https":
            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            except ssl.SSLError:
                return None  # it answered in TLS; certificates (a company CA, say) are wandb's to check
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        first = sock.recv(5)  # any status line will do: it answers
        return None if first and b"HTTP/".startswith(first) else silent
    except OSError:  # a timeout, or the connection dropped
        return silent
    finally:
        sock.close()


def wandb_has_key(host: str) -> bool:
    """An API key in the environment, or in the netrc file for ``host`` (the server wandb uses)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_wandb_mode() -> str:
    """:func:`wandb_mode_and_notice`'s mode."""
    return wandb_mode_and_notice()[0]


def wandb_mode_and_notice() -> tuple[str, str | None]:
    """Go offline unless the user chose a mode, has a key and can reach the server: the mode,
    and the line that says why it went offline (printed once a run starts), or None. A chosen
    ``online`` that cannot work (no key, no route, no answer: :func:`wandb_unanswered`) is a
    ``ConfigError`` instead of a traceback or a long wait later."""
    mode = os.environ.get("WANDB_MODE")
    if mode and mode != "online":
        return mode, None
    url = wandb_base_url()
    host, port = server_address(url)
    if not wandb_has_key(host):
        reason = f"no W&B API key for {url}"
    elif (unanswered := wandb_unanswered(url)) is not None:
        reason = unanswered
    else:
        return "online", None
    if mode == "online":
        raise ConfigError(f"WANDB_MODE=online, but {reason}: set WANDB_API_KEY (or `wandb login`) and check "
                          f"the route, or unset WANDB_MODE to log offline and `wandb sync` later")
    os.environ["WANDB_MODE"] = "offline"
    return "offline", f"[ctxlit] W&B logs offline ({reason}); upload later with `wandb sync`"


def with_defaults(argv: list[str]) -> list[str]:
    """Insert the ``fit`` subcommand and the default config when they are missing (for
    ``validate``/``test``/``predict`` of a checkpoint in a run folder: that run's config).

    Lightning's DDP launcher re-executes ``python -m ctxlit.fit <argv>`` for ranks >= 1 with
    the argv rank 0 already saw, so this must be idempotent: only add what is missing.
    """
    argv = list(argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        argv.insert(0, "fit")
    if not config_files(argv):
        # validate/test/predict of a run's checkpoint: that run's own config (ctxlit.run_evaluation)
        argv[1:1] = ["--config", str(run_config_for(argv) or DEFAULT_CONFIG)]
    return argv


def starts_no_run(argv: list[str]) -> bool:
    """``--help`` (``=full``), ``--<key>.help`` or ``--print_config``: nothing is logged, so W&B's mode does not matter."""
    return any(a.split("=")[0] in ("-h", "--help") or a.startswith("--print_config") or a.split("=")[0].endswith(".help")
               for a in argv)


def preload_wandb_launch(mode: str) -> None:
    """Import what ``wandb.init`` imports at every run (W&B's launch-input models) while few
    modules are loaded. Their pydantic models read attribute docstrings by walking the call
    stack and scanning ``sys.modules`` once per frame: imported inside ``Trainer.fit``, after
    torch and Lightning (~4,000 modules), that cost 0.5-1.1 s of CPU here; imported first,
    0.15-0.25 s. Every config in experiments/ logs to W&B, so the import is rarely wasted."""
    if mode != "disabled":
        with contextlib.suppress(Exception):  # a wandb without the module: nothing to gain
            importlib.import_module("wandb.sdk.launch.inputs.internal")


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    notice = None
    try:
        if not starts_no_run(given):
            mode, notice = wandb_mode_and_notice()
            preload_wandb_launch(mode)
    except CtxlitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    keep_freed_memory()  # CPU steps reuse their buffers instead of faulting in fresh pages
    from ctxlit.cli import run_cli  # heavy imports after the environment is settled

    if given[:1] and given[0].split("=")[0] in ("-h", "--help"):  # with_defaults makes it fit's help, with its defaults
        print(f"python -m ctxlit.fit runs `fit` unless another subcommand comes first: "
              f"{', '.join(SUBCOMMANDS[1:])} (each with --help). The options of fit:")
    return run_cli(with_defaults(given), from_command_line=argv is None, start_notice=notice)


if __name__ == "__main__":
    sys.exit(main())
