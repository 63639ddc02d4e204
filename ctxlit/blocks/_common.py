"""Shared helpers for the blocks: option validation and on-request attention read-out.

Every block that has something worth looking at (a softmax over positions, branch weights,
projections) inherits :class:`RecordsAttention` and calls ``self._record(tensor)`` behind an
``if self._attention_sink is not None`` check. Outside :func:`record_attention` the sink is
``None``: nothing extra is computed or kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ctxlit.errors import ConfigError
from ctxlit.utils.checks import check_positive

#: Relative (y, x) query positions used for Non-local maps when ``record_attention`` gets no
#: ``queries``: the centre and the centres of the four quadrants.
DEFAULT_QUERIES: tuple[tuple[float, float], ...] = (
    (0.5, 0.5),
    (0.25, 0.25),
    (0.25, 0.75),
    (0.75, 0.25),
    (0.75, 0.75),
)


def hidden_width(owner: str, option: str, channels: int, ratio: float) -> int:
    """``int(channels * ratio)``, refusing a ratio that leaves no hidden channel."""
    check_positive(option, ratio, owner=owner)
    hidden = int(channels * ratio)
    if hidden < 1:
        raise ConfigError(
            f"{owner}: {option}={ratio!r} gives {hidden} hidden channels for channels={channels}; "
            f"{option} must be >= 1/{channels}"
        )
    return hidden


def reduced_width(owner: str, option: str, channels: int, reduction: int) -> int:
    """``channels // reduction``, refusing a reduction that leaves no hidden channel."""
    check_positive(option, reduction, owner=owner)
    hidden = channels // reduction
    if hidden < 1:
        raise ConfigError(
            f"{owner}: {option}={reduction} gives 0 hidden channels for channels={channels}; "
            f"{option} must be <= {channels}"
        )
    return hidden


def check_positive_options(owner: str, **values: float) -> None:
    for option, value in values.items():
        check_positive(option, value, owner=owner)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-D tensor laid out NHWC (and not also NCHW-contiguous, as a
    1x1 map is), else ``contiguous_format``: the layout a block's output should keep."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def reset_submodules(module: nn.Module) -> None:
    """Default ``reset_parameters()`` of every submodule that has one."""
    for child in module.modules():
        if child is not module and hasattr(child, "reset_parameters"):
            child.reset_parameters()


class RecordsAttention:
    """Mixin for blocks whose attention can be read out with :func:`record_attention`."""

    _attention_sink: ClassVar[Any] = None  # set per instance while recording
    _attention_queries: ClassVar[Sequence[tuple[float, float]] | None] = None

    def _record(self, value: torch.Tensor) -> None:
        sink = self._attention_sink
        if sink is not None:
            sink(value.detach().float())


@contextlib.contextmanager
def record_attention(
    model: nn.Module, queries: Sequence[tuple[float, float]] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Collect every block's attention map during forwards run inside the ``with``.

    Yields a dict filled as the model runs: module name (as in ``model.named_modules()``; the
    empty string when ``model`` is itself a block) -> detached float32 tensor. A block called
    several times keeps its last call's map. ``queries`` are relative (y, x) positions in
    [0, 1] for which Non-local blocks report their attention over key positions (default:
    :data:`DEFAULT_QUERIES`). On exit every block is reset and records nothing again.
    """
    maps: dict[str, torch.Tensor] = {}
    if queries is not None:
        queries = tuple((float(y), float(x)) for y, x in queries)
        for y, x in queries:
            if not (0.0 <= y <= 1.0 and 0.0 <= x <= 1.0):
                raise ConfigError(f"record_attention: queries are relative (y, x) in [0, 1]; got {(y, x)}")
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, RecordsAttention)]

    def sink_for(name: str):
        def sink(value: torch.Tensor) -> None:
            maps[name] = value

        return sink

    try:
        for name, module in blocks:
            module._attention_sink = sink_for(name)
            module._attention_queries = queries
        yield maps
    finally:
        for _, module in blocks:
            # drop the instance attributes so the class defaults (None) apply again
            module.__dict__.pop("_attention_sink", None)
            module.__dict__.pop("_attention_queries", None)


def query_indices(queries: Sequence[tuple[float, float]] | None, height: int, width: int) -> list[int]:
    """Flat indices (row-major over H x W) of relative query positions."""
    chosen = DEFAULT_QUERIES if queries is None else queries
    return [round(y * (height - 1)) * width + round(x * (width - 1)) for y, x in chosen]
