"""GC and SNL: paper init (identity / the documented 0.5 gate), parameter formulas, read-out."""

from __future__ import annotations

import pytest
import torch

from ctxlit.blocks import GlobalContext, SimplifiedNonLocal, build_block, record_attention
from blocks_cases import perturb, sample

C = 64


@pytest.mark.parametrize("pooling", ["att", "avg"])
@pytest.mark.parametrize("layernorm", [True, False])
def test_gc_add_starts_as_identity(pooling, layernorm):
    block = GlobalContext(C, pooling=pooling, layernorm=layernorm)
    x = sample()
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("fusion", ["mul", "both"])
def test_gc_mul_starts_as_half_input_as_documented(fusion):
    # the paper zero-inits the last conv: sigmoid(0) = 0.5, so "mul" is 0.5 * x, not identity
    block = GlobalContext(C, fusion=fusion)
    x = sample()
    torch.testing.assert_close(block(x), 0.5 * x, rtol=0, atol=0)


def test_gc_stops_being_identity_once_trained():
    block = GlobalContext(C)
    perturb(block)
    x = sample()
    assert (block(x) - x).abs().max() > 1e-3


def test_snl_starts_as_identity():
    x = sample()
    torch.testing.assert_close(SimplifiedNonLocal(C)(x), x, rtol=0, atol=0)


def transform_params(c: int, cr: int, layernorm: bool) -> int:
    return c * cr + cr + (2 * cr if layernorm else 0) + cr * c + c


@pytest.mark.parametrize("ratio", [1 / 16, 1 / 4])
@pytest.mark.parametrize("pooling", ["att", "avg"])
@pytest.mark.parametrize("fusion", ["add", "mul", "both"])
@pytest.mark.parametrize("layernorm", [True, False])
def test_gc_parameter_count(ratio, pooling, fusion, layernorm):
    cr = int(C * ratio)
    key = C + 1 if pooling == "att" else 0  # 1x1 conv C -> 1 with bias
    transforms = 2 if fusion == "both" else 1
    expected = key + transforms * transform_params(C, cr, layernorm)
    block = GlobalContext(C, ratio=ratio, pooling=pooling, fusion=fusion, layernorm=layernorm)
    assert sum(p.numel() for p in block.parameters()) == expected


def test_gc_parameter_count_paper_example():
    # GCNet: ResNet-50 c5 (C=2048), r=16 -> ~0.26M params per block (attention pooling, add, LN)
    block = GlobalContext(2048)
    assert sum(p.numel() for p in block.parameters()) == 2049 + 2048 * 128 + 128 + 256 + 128 * 2048 + 2048


def test_snl_parameter_count():
    assert sum(p.numel() for p in SimplifiedNonLocal(C).parameters()) == (C + 1) + (C * C + C)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"pooling": "max"}, r"pooling must be one of 'att', 'avg'; got 'max'"),
        ({"fusion": "concat"}, r"fusion must be one of 'add', 'mul', 'both'; got 'concat'"),
        ({"ratio": 1 / 128}, r"ratio=0.0078125 gives 0 hidden channels"),
        ({"ratio": 0.0}, r"ratio must be > 0"),
    ],
)
def test_gc_invalid_options(options, match):
    with pytest.raises(ValueError, match=match):
        GlobalContext(C, **options)


@pytest.mark.parametrize("name", ["gc", "snl"])
def test_pooling_weights_read_out(name):
    model = torch.nn.Sequential(build_block(name, C), build_block(name, C))
    x = sample()
    with record_attention(model) as maps:
        model(x)
    assert set(maps) == {"0", "1"}
    for weights in maps.values():
        assert weights.shape == (2, 1, 8, 8)
        torch.testing.assert_close(weights.sum(dim=(2, 3)), torch.ones(2, 1))
        assert not weights.requires_grad
    # the first block is the identity at init, so both see x and use their own key conv
    expected = model[0].key(x).flatten(1).softmax(-1).reshape(2, 1, 8, 8)
    torch.testing.assert_close(maps["0"], expected)


def test_nothing_recorded_outside_the_context():
    block = GlobalContext(C)
    with record_attention(block) as maps:
        block(sample())
    assert set(maps) == {""}
    maps.clear()
    block(sample())
    assert maps == {}
    assert block._attention_sink is None


def test_avg_pooling_records_nothing():
    block = GlobalContext(C, pooling="avg")
    with record_attention(block) as maps:
        block(sample())
    assert maps == {}


def test_bf16_attention_finite_with_large_logits():
    block = GlobalContext(C)
    with torch.no_grad():
        block.key.weight.mul_(1e3)
    with record_attention(block) as maps, torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(sample() * 100)
    assert torch.isfinite(out).all()
    assert torch.isfinite(maps[""]).all()
