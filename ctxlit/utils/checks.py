"""Option checks shared by blocks, backbones, data modules and callbacks: each raises one
:class:`~ctxlit.errors.ConfigError` (a ``ValueError``) that names the option, the value and
what is allowed, prefixed by ``owner`` (the block, backbone or module) when given."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

from ctxlit.errors import ConfigError


def _where(owner: str | None, option: str) -> str:
    return f"{owner}: {option}" if owner else option


def check_choice(option: str, value: Any, allowed: Sequence[Any] | Any, *, owner: str | None = None) -> None:
    """``value`` is one of ``allowed`` (a sequence, or a ``typing.Literal``); ``True`` never
    passes for ``1`` nor ``1`` for ``True``."""
    choices = typing.get_args(allowed) or tuple(allowed)
    if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
        raise ConfigError(f"{_where(owner, option)} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_positive(option: str, value: float, *, owner: str | None = None, what: str = "") -> None:
    if isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{_where(owner, option)} must be > 0{what}; got {value!r}")


def check_positive_int(option: str, value: Any, *, owner: str | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{_where(owner, option)} must be a positive integer; got {value!r}")


def check_at_least(option: str, value: float, minimum: float, *, owner: str | None = None, what: str = "") -> None:
    if value < minimum:
        raise ConfigError(f"{_where(owner, option)}{f' {what}' if what else ''} must be >= {minimum}; got {value!r}")
