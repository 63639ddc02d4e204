"""record_attention over a model holding every block: names, shapes, normalisation, no cost."""

from __future__ import annotations

import torch

from ctxlit.blocks import BLOCKS, build_block, record_attention
from blocks_cases import perturb, sample

C = 64


def all_blocks_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({name: build_block(name, C) for name in BLOCKS})
    perturb(model)
    return model


def run(model, x):
    for block in model.values():
        x = block(x)
    return x


def test_every_block_reports_documented_shape():
    model = all_blocks_model()
    with record_attention(model, queries=[(0.5, 0.5), (0.0, 1.0)]) as maps:
        run(model, sample())
    n, g = 2, C // 8
    expected = {
        "se": (n, C),
        "gc": (n, 1, 8, 8),
        "snl": (n, 1, 8, 8),
        "nl": (n, 2, 8, 8),
        "glore": (n, C // 4, 8, 8),
        "spm": (n, C, 8, 8),
        "sk": (n, 2, C),
        "lr": (n, g, 49, 8, 8),
    }
    assert {k: tuple(v.shape) for k, v in maps.items()} == expected  # mpm has no attention map
    for name, dim in (("gc", (2, 3)), ("snl", (2, 3)), ("nl", (2, 3)), ("sk", 1), ("lr", 2)):
        total = maps[name].sum(dim=dim)
        torch.testing.assert_close(total, torch.ones_like(total), msg=name)
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in maps.values())


def test_recording_does_not_change_outputs_and_ends_with_the_context():
    model = all_blocks_model().eval()
    x = sample()
    plain = run(model, x)
    with record_attention(model) as maps:
        recorded = run(model, x)
    torch.testing.assert_close(recorded, plain, rtol=0, atol=0)
    assert len(maps) == 8
    assert all("_attention_sink" not in m.__dict__ for m in model.modules())


def test_recording_under_bf16_autocast_is_finite():
    model = all_blocks_model().eval()
    with record_attention(model) as maps, torch.autocast("cpu", dtype=torch.bfloat16):
        run(model, sample() * 10)
    assert all(torch.isfinite(v).all() for v in maps.values())
