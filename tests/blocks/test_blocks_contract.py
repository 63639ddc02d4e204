"""Contract every registered block meets, for every option combination (see conftest.CASES)."""

from __future__ import annotations

import argparse
import functools
import inspect
import typing

import pytest
import torch

from ctxlit.blocks import BLOCKS, SPATIAL_OPERATORS, build_block, is_spatial_operator
from blocks_cases import CASES, CHANNELS, expected_shape, make, perturb, sample


@pytest.mark.parametrize(("name", "options"), CASES)
def test_shape_and_dtype(name, options):
    block = make(name, options)
    y = block(sample())
    assert y.shape == expected_shape(options)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(("name", "options"), CASES)
def test_gradients_reach_every_parameter(name, options):
    block = make(name, options)
    perturb(block)
    x = sample().requires_grad_(True)
    y = block(x)
    (y * sample(3, y.shape)).sum().backward()
    invariant = softmax_shift_invariant(name, options)
    for pname, p in block.named_parameters():
        assert p.grad is not None, pname
        if pname in invariant:
            # Shifting every logit of a softmax by the same bias changes nothing: the gradient
            # is zero by construction (up to rounding), so the parameter is inert but harmless.
            assert p.grad.abs().max() < 1e-5, f"{pname} should get no gradient: {p.grad}"
        else:
            assert p.grad.abs().sum() > 0, f"zero gradient for {pname}"
    assert x.grad.abs().sum() > 0


def softmax_shift_invariant(name: str, options: dict) -> set[str]:
    """Biases that add the same constant to every logit of a softmax over positions."""
    if name in ("gc", "snl") and options.get("pooling", "att") == "att":
        return {"key.bias"}  # 1-channel key conv -> softmax over H*W
    if name == "nl" and options.get("mode", "embedded_gaussian") == "embedded_gaussian":
        return {"phi.bias"}  # theta_i . (phi_j + b): the extra theta_i . b is the same for every j
    return set()


@pytest.mark.parametrize(("name", "options"), CASES)
def test_state_dict_round_trip(name, options):
    block = make(name, options, seed=0)
    perturb(block)
    block(sample())  # update BN running stats so they are part of the round trip
    block.eval()
    other = make(name, options, seed=123).eval()
    other.load_state_dict(block.state_dict())
    x = sample()
    torch.testing.assert_close(other(x), block(x), rtol=0, atol=0)


def trained_eval_output(name, options):
    """A block with non-zero 'trained' parameters in eval mode, an input and its fp32 output."""
    block = make(name, options)
    perturb(block)
    block.eval()
    x = sample()
    return block, x, block(x)


@pytest.mark.parametrize(("name", "options"), CASES)
def test_channels_last_matches_contiguous(name, options):
    block, x, ref = trained_eval_output(name, options)
    out = block(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "options"), CASES)
def test_bf16_autocast_finite_and_close(name, options):
    block, x, ref = trained_eval_output(name, options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert torch.isfinite(out).all()
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, f"relative error {err:.3g} under bf16 autocast"


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_options_are_plain_typed_keywords(name):
    """The CLI needs keyword options annotated with plain types or Literal[...]."""
    cls = BLOCKS[name]
    hints = typing.get_type_hints(cls.__init__)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    first = params[0]
    assert first.name == ("in_channels" if is_spatial_operator(name) else "channels")
    for p in params[1:]:
        if p.name in ("out_channels", "stride"):
            assert is_spatial_operator(name)
            continue
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name
        hint = hints[p.name]
        if typing.get_origin(hint) is typing.Literal:
            assert p.default in typing.get_args(hint)
        else:
            assert hint in (int, float, bool, str), (p.name, hint)
            assert isinstance(p.default, hint), p.name


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_partial_then_channels(name):
    """The CLI binds options first and passes the channel count later."""
    cls = BLOCKS[name]
    block = functools.partial(cls)(CHANNELS)
    assert isinstance(block, cls)
    assert build_block(name, CHANNELS).state_dict().keys() == block.state_dict().keys()


def test_spatial_operators_are_the_flagged_classes():
    assert SPATIAL_OPERATORS == {n for n, c in BLOCKS.items() if c.spatial_operator}
    assert SPATIAL_OPERATORS == {"sk", "lr"}
    assert not is_spatial_operator("gc") and is_spatial_operator(BLOCKS["lr"])


def test_build_spatial_operator_with_width_and_stride():
    block = build_block("sk", 64, out_channels=128, stride=2)
    assert block(torch.randn(2, 64, 8, 8)).shape == (2, 128, 4, 4)


def test_unknown_block_lists_allowed_names():
    with pytest.raises(ValueError, match=r"'nope'.*allowed names: .*gc"):
        build_block("nope", 64)


def test_unknown_option_lists_allowed_options():
    with pytest.raises(ValueError, match=r"no option\(s\) colour.*allowed options: ratio, pooling, fusion, layernorm"):
        build_block("gc", 64, colour="red")


def test_partial_with_options_like_the_cli():
    block = functools.partial(BLOCKS["gc"], ratio=0.25, fusion="mul")(CHANNELS)
    assert (block.hidden, block.fusion) == (16, "mul")


@pytest.mark.parametrize(
    ("class_path", "init_args", "check"),
    [
        ("ctxlit.blocks.GlobalContext", {"fusion": "mul", "ratio": 0.25}, lambda b: b.fusion == "mul" and b.hidden == 16),
        ("ctxlit.blocks.NonLocal", {"mode": "dot_product", "subsample": True}, lambda b: b.mode == "dot_product"),
        ("ctxlit.blocks.LocalRelation", {"phi": "product", "kernel_size": 3}, lambda b: b.offsets.shape == (9, 2)),
    ],
)
def test_jsonargparse_builds_a_channel_callable(class_path, init_args, check):
    """How LightningCLI receives a block: class_path + init_args as Callable[[int], nn.Module]."""
    import json
    from collections.abc import Callable

    import jsonargparse

    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--block", type=Callable[[int], torch.nn.Module])
    cfg = parser.parse_args([f"--block={json.dumps({'class_path': class_path, 'init_args': init_args})}"])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    block = instantiate(cfg).block(CHANNELS)
    assert check(block)
    bad = {"class_path": class_path, "init_args": {next(iter(init_args)): "not-a-choice"}}
    option = next(iter(init_args))
    # the option's Literal / type annotation rejects it, naming the option and the value
    with pytest.raises(argparse.ArgumentError, match=rf'(?s)Parser key "block".*Parser key "{option}".*not-a-choice'):
        parser.parse_args([f"--block={json.dumps(bad)}"])


def test_glore_stays_finite_under_fp16_at_large_resolution():
    """Without normalisation GloRe's node features grow with H*W; at 64x128 with C=512 they
    pass fp16's range (review finding), so the block must keep them in float32."""
    torch.manual_seed(0)
    block = build_block("glore", 512).train()
    perturb(block)
    x = torch.relu(torch.randn(1, 512, 64, 128)) * 2
    with torch.autocast("cpu", dtype=torch.float16):
        y = block(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
