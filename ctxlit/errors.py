"""Errors that ctxlit reports to the user as one clear message (no traceback).

``python -m ctxlit.fit`` catches ``CtxlitError`` and prints ``error: <message>`` with a
non-zero exit. Each subclass also derives from ``ValueError`` so library callers can catch
the usual built-in.
"""


class CtxlitError(Exception):
    """Base class for errors whose message alone tells the user what to fix."""

    #: the exit code of ``python -m ctxlit.fit``: 2 for bad input, found before training
    exit_code = 2


class ConfigError(CtxlitError, ValueError):
    """An option has a value outside what it allows; the message names both."""


class DatasetError(CtxlitError, ValueError):
    """A dataset on disk is missing or not in the expected layout; the message names the path."""


class TrainingFailed(CtxlitError, RuntimeError):
    """Training started and could not go on (a non-finite loss, a checkpoint that cannot be
    written); the run is marked failed and ``python -m ctxlit.fit`` exits 1."""

    exit_code = 1
