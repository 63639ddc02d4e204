from __future__ import annotations

import pytest
import torch
from torch import nn


class Probe(nn.Module):
    """An add-on block that records its calls (shape-preserving, one parameter)."""

    calls: list[str] = []
    spatial_operator = False

    def __init__(self, channels: int, tag: str = "") -> None:
        super().__init__()
        self.channels = channels
        self.tag = tag
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == self.channels, (x.shape, self.channels)
        Probe.calls.append(self.tag)
        return x * self.scale


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    Probe.calls = []
    yield
