"""A W&B server that accepts connections but never answers: a run logs offline after the probe's
bound and says why, instead of waiting 90 s in ``wandb.init`` and failing with a traceback."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from ctxlit import fit
from ctxlit.fit import main, wandb_base_url, wandb_mode_and_notice, wandb_unanswered
from tests.conftest import TINY

ANSWER_SECONDS = 0.5  # the probe's bound in these tests (the default is 10 s)


@contextlib.contextmanager
def silent_server(lifetime: float = 30.0):
    """A server on 127.0.0.1 that accepts every connection, reads nothing and never answers;
    it closes all by itself after ``lifetime`` seconds at most. Yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        held, deadline = [], time.monotonic() + lifetime
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])
        for connection in held:
            connection.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()


@pytest.fixture
def silent_wandb(offline_env, monkeypatch):
    """A key, no WANDB_MODE, and WANDB_BASE_URL at a silent server; yields its port."""
    monkeypatch.setattr(fit, "ANSWER_SECONDS", ANSWER_SECONDS)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with silent_server() as port:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        yield port


def test_a_server_that_never_answers_is_found_within_the_bound(silent_wandb):
    wandb_base_url()  # imports wandb (a second or so), which is not the probe's time
    start = time.monotonic()
    mode, notice = wandb_mode_and_notice()
    assert time.monotonic() - start < ANSWER_SECONDS + 1
    assert mode == "offline" and notice == (
        f"[ctxlit] W&B logs offline (127.0.0.1:{silent_wandb} accepted the connection but sent no answer "
        f"within {ANSWER_SECONDS:g} s); upload later with `wandb sync`")


def test_a_run_trains_offline_when_the_server_never_answers(silent_wandb, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--trainer.max_steps=1", "--trainer.limit_val_batches=1"]) == 0
    err = capsys.readouterr().err
    assert f"[ctxlit] W&B logs offline (127.0.0.1:{silent_wandb} accepted the connection" in err
    assert "Traceback" not in err and "CommError" not in err
    assert list((tmp_path / "runs").rglob("offline-run-*")), "no offline W&B run"


def test_online_with_a_server_that_never_answers_is_one_error(silent_wandb, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(TINY) == 2
    assert time.monotonic() - start < ANSWER_SECONDS + 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"error: WANDB_MODE=online, but 127.0.0.1:{silent_wandb} accepted the connection but sent no answer")
    assert [p.name for p in tmp_path.iterdir()] == ["home"]  # the fixture's HOME alone


def test_a_server_that_answers_http_is_used(offline_env):
    """Any HTTP answer counts (here a 404 for /healthz): the probe does not judge the server."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        assert wandb_unanswered(f"http://127.0.0.1:{server.server_port}") is None
    finally:
        thread.join(timeout=5)
        server.server_close()


def test_the_readme_says_how_long_a_run_may_wait(offline_env):
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert (f"accepts a connection but sends no answer within {fit.ANSWER_SECONDS:g} s" in readme
            and f"{fit.PROBE_SECONDS:g} s" in readme)
