"""torch.compile (inductor, CPU) gives the eager result for gc, se and nl."""

from __future__ import annotations

import pytest
import torch

from ctxlit.blocks import build_block, record_attention
from blocks_cases import perturb, sample


def compiled_and_eager(name: str):
    torch.manual_seed(0)
    block = build_block(name, 32)
    perturb(block)
    block.eval()
    x = sample(shape=(2, 32, 8, 8))
    return block, torch.compile(block, fullgraph=True), x


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gc", "se", "nl"])
def test_compiled_matches_eager(name):
    block, compiled, x = compiled_and_eager(name)
    torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_block_still_records_on_request():
    block, compiled, x = compiled_and_eager("gc")
    eager = block(x)
    with record_attention(block) as maps:  # a changed attribute: dynamo's guard recompiles
        torch.testing.assert_close(compiled(x), eager, rtol=1e-4, atol=1e-4)
    assert maps[""].shape == (2, 1, 8, 8)
    torch.testing.assert_close(maps[""].sum(dim=(2, 3)), torch.ones(2, 1))
