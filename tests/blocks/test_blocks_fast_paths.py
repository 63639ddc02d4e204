"""Fast paths equal their explicit references; Non-local and Local Relation read-outs."""

from __future__ import annotations

import math

import pytest
import torch

from ctxlit.blocks import DEFAULT_QUERIES, LocalRelation, NonLocal, record_attention
from ctxlit.bench.blocks import saved_tensor_bytes
from ctxlit.blocks.non_local import EXPLICIT_MAX_PAIRS
from blocks_cases import perturb, sample

C = 64
MODES = ["embedded_gaussian", "gaussian", "dot_product", "concatenation"]


def assert_fast_path_matches_reference(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """forward == _reference_forward (fp32, 1e-5) and so are the input gradients; returns forward."""
    x = x.clone().requires_grad_(True)
    fast = block(x)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), x)
    ref = block._reference_forward(x)
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-4, atol=1e-4)
    return fast.detach()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("subsample", [False, True])
@pytest.mark.parametrize("shape", [(2, C, 8, 8), (1, C, 7, 5)])
def test_nl_fast_path_matches_explicit(mode, subsample, shape):
    block = NonLocal(C, mode=mode, subsample=subsample)
    perturb(block, scale=0.3)
    x = sample(shape=shape)
    fast = assert_fast_path_matches_reference(block, x)
    assert (fast - x).abs().max() > 1e-2  # the attention branch contributes


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_nl_fast_path_keeps_no_pairwise_matrix(mode, channels_last):
    """SDPA's fused kernel (and theta(phi^T g)) save O(L) for backward, the explicit path O(L^2).
    On CPU the fused kernel is taken above EXPLICIT_MAX_PAIRS (and for narrow heads)."""
    block = NonLocal(C, mode=mode)
    side = int(EXPLICIT_MAX_PAIRS ** 0.25) + 1  # 46: L x L = 4.5M pairs, over the cap
    x = sample(shape=(1, C, side, side)).requires_grad_(True)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    pairwise = side ** 4 * 4  # 18 MB; x itself is 0.5 MB
    fast = saved_tensor_bytes(lambda: block(x), exclude=block)
    ref = saved_tensor_bytes(lambda: block._reference_forward(x), exclude=block)
    assert ref > pairwise
    assert fast < pairwise / 4


def test_nl_embedded_gaussian_is_unscaled_softmax():
    """The paper's f = softmax(theta^T phi), no 1/sqrt(d): written out by hand here."""
    block = NonLocal(C)
    perturb(block)
    block.eval()
    x = sample()
    theta = block.theta(x).flatten(2)  # (N, Ci, L)
    phi = block.phi(x).flatten(2)
    g = block.g(x).flatten(2)
    f = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (N, L, L)
    y = (g @ f.transpose(1, 2)).reshape(2, C // 2, 8, 8)
    torch.testing.assert_close(block(x), x + block.bn(block.out(y)), rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian"])
def test_nl_scaled_divides_the_logits_by_sqrt_d(mode):
    """``scaled=True``: softmax(theta^T phi / sqrt(d)), d the embedding width, by hand; and not
    the unscaled result (a block that ignored the option would pass the test above only)."""
    block = NonLocal(C, mode=mode, scaled=True)
    perturb(block)
    block.eval()
    x = sample()
    theta = (x if block.theta is None else block.theta(x)).flatten(2)  # (N, D, L)
    phi = (x if block.phi is None else block.phi(x)).flatten(2)
    g = block.g(x).flatten(2)
    logits = theta.transpose(1, 2) @ phi  # (N, L, L)
    y_scaled, y_plain = ((g @ torch.softmax(logits / s, dim=-1).transpose(1, 2)).reshape(2, C // 2, 8, 8)
                         for s in (math.sqrt(theta.shape[1]), 1.0))
    out = block(x)
    torch.testing.assert_close(out, x + block.bn(block.out(y_scaled)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, x + block.bn(block.out(y_plain)), rtol=1e-4, atol=1e-4)


def test_nl_maps_for_query_positions():
    block = NonLocal(C)
    perturb(block)
    x = sample(shape=(2, C, 8, 12))
    queries = [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]
    with record_attention(block, queries=queries) as maps:
        block(x)
    attn = maps[""]
    assert attn.shape == (2, 3, 8, 12)
    torch.testing.assert_close(attn.sum(dim=(2, 3)), torch.ones(2, 3))
    # rows of the explicit attention matrix at flat indices 0, centre, last
    theta = block.theta(x).flatten(2).transpose(1, 2)
    phi = block.phi(x).flatten(2)
    full = torch.softmax(theta @ phi, dim=-1)
    centre = round(0.5 * 7) * 12 + round(0.5 * 11)
    torch.testing.assert_close(attn.flatten(2), full[:, [0, centre, 95]])
    assert not torch.allclose(attn[:, 0], attn[:, 2])  # different queries, different maps


def test_nl_default_queries_and_subsampled_key_grid():
    block = NonLocal(C, subsample=True)
    with record_attention(block) as maps:
        block(sample())
    assert maps[""].shape == (2, len(DEFAULT_QUERIES), 4, 4)


def test_record_attention_rejects_absolute_queries():
    with pytest.raises(ValueError, match=r"relative \(y, x\) in \[0, 1\]"):
        with record_attention(NonLocal(C), queries=[(3, 4)]):
            pass


LR_CASES = [
    dict(kernel_size=7, phi="squared_diff"),
    dict(kernel_size=7, phi="abs_diff"),
    dict(kernel_size=7, phi="product"),
    dict(kernel_size=3, phi="squared_diff", stride=2),
    dict(kernel_size=7, phi="squared_diff", stride=2, out_channels=32),
    dict(kernel_size=5, phi="product", channels_per_group=16),
]


@pytest.mark.parametrize("options", LR_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("shape", [(2, C, 8, 8), (1, C, 9, 6)])
def test_lr_fast_path_matches_unfold(options, shape):
    """In float64 the hand-written backward equals autograd through the unfold layer to
    rounding (in float32 the two summation orders differ by ~1e-4 on gradients of ~1)."""
    block = LocalRelation(C, **options)
    perturb(block, scale=0.3)
    block.double()
    x = sample(shape=shape).double().requires_grad_(True)
    params = [p for p in block.parameters() if p is not block.geometry[2].bias]  # softmax-invariant
    fast = block(x)
    grads_fast = torch.autograd.grad(fast.square().sum(), [x, *params])
    ref = block._reference_forward(x)
    grads_ref = torch.autograd.grad(ref.square().sum(), [x, *params])
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads_fast, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("size", "stride", "k"), [((2, 2), 1, 7), ((1, 3), 1, 7), ((3, 1), 2, 7), ((5, 4), 2, 5), ((6, 7), 3, 3)])
def test_lr_fast_path_on_maps_smaller_than_the_window(size, stride, k):
    """Windows wider than the map wrap into the zero padding of the flattened layout."""
    block = LocalRelation(16, stride=stride, kernel_size=k)
    perturb(block, scale=0.3)
    assert_fast_path_matches_reference(block.double(), sample(shape=(2, 16, *size)).double())


def test_lr_float32_fast_path_close_to_unfold():
    block = LocalRelation(C)
    perturb(block, scale=0.3)
    x = sample(shape=(2, C, 8, 8)).requires_grad_(True)
    (grad_fast,) = torch.autograd.grad(block(x).square().sum(), x)
    (grad_ref,) = torch.autograd.grad(block._reference_forward(x).square().sum(), x)
    torch.testing.assert_close(block(x), block._reference_forward(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-3, atol=1e-3)


def test_lr_channels_last_input_gives_the_same_result():
    block = LocalRelation(C)
    perturb(block, scale=0.3)
    x = sample(shape=(2, C, 9, 7))
    torch.testing.assert_close(block(x.to(memory_format=torch.channels_last)), block(x))


def test_lr_weights_sum_to_one_and_skip_outside_positions():
    block = LocalRelation(C, kernel_size=7)
    with record_attention(block) as maps:
        block(sample())
    w = maps[""]
    assert w.shape == (2, C // 8, 49, 8, 8)
    torch.testing.assert_close(w.sum(dim=2), torch.ones(2, C // 8, 8, 8))
    corner = w[:, :, :, 0, 0].reshape(2, C // 8, 7, 7)
    assert (corner[:, :, :3] == 0).all() and (corner[:, :, :, :3] == 0).all()  # above / left of the image
    assert (corner[:, :, 3:, 3:] > 0).all()


def test_lr_geometry_prior_is_trained_and_saved():
    block = LocalRelation(C)
    keys = set(block.state_dict())
    assert {"geometry.0.weight", "geometry.0.bias", "geometry.2.weight", "geometry.2.bias"} <= keys
    assert "offsets" not in keys  # derived from k, rebuilt on construction
    assert block.offsets.shape == (49, 2) and block.offsets[0].tolist() == [-3.0, -3.0]
    block(sample()).sum().backward()
    assert block.geometry[0].weight.grad.abs().sum() > 0


def test_lr_fast_path_saves_far_less_for_backward():
    block = LocalRelation(C, kernel_size=7)
    x = sample(shape=(1, C, 16, 16)).requires_grad_(True)
    fast = saved_tensor_bytes(lambda: block(x), exclude=block)
    ref = saved_tensor_bytes(lambda: block._reference_forward(x), exclude=block)
    activation = x.numel() * 4
    assert ref > 49 * activation  # the unfolded copy of x alone is 49x
    # weights (49/8 = 6.1x), x and the aggregated output y (1x each), q and the key map (1/4),
    # small weights (the projection's input is y itself): 8.5x; the offset-loop layer before
    # the fused Function kept 10.7x (padded x and a padded key map besides)
    assert fast < 9 * activation
    assert fast * 7 < ref


@pytest.mark.parametrize("phi", ["squared_diff", "abs_diff", "product"])
@pytest.mark.parametrize(("k", "stride", "size"), [(3, 1, (4, 3)), (3, 2, (5, 4)), (5, 1, (2, 3))])
def test_lr_fused_backward_passes_gradcheck(phi, k, stride, size):
    """The hand-written backward of logits + softmax + aggregation against finite differences,
    for q, the key map, x and the geometry prior."""
    from ctxlit.blocks.local_relation import _LocalRelationFn

    torch.manual_seed(0)
    n, g, m = 2, 2, 3
    h, w = size
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    q = torch.randn(n, g, ho, wo, dtype=torch.float64, requires_grad=True)
    keymap = torch.randn(n, g, h, w, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, g * m, h, w, dtype=torch.float64, requires_grad=True)
    prior = torch.randn(k * k, g, dtype=torch.float64, requires_grad=True)

    def run(q, keymap, x, prior):
        return _LocalRelationFn.apply(q, keymap, x, prior, phi, k, stride, m)[0]

    assert torch.autograd.gradcheck(run, (q, keymap, x, prior))


def test_nl_cpu_path_follows_the_measured_crossover():
    """A segmentation head's Non-local (C = 512 -> head dim 256) runs explicitly up to 32x64 tokens,
    where the explicit map was faster on CPU, and fused from there on (64x128 crops: 4.9x less
    memory kept, and faster); narrow heads always fused."""
    from ctxlit.blocks.non_local import _fused

    tokens = lambda length, dim: torch.empty(1, length, dim)  # noqa: E731
    assert not _fused(tokens(32 * 64, 256), tokens(32 * 64, 256))
    assert _fused(tokens(48 * 64, 256), tokens(48 * 64, 256)) and _fused(tokens(64 * 128, 256), tokens(64 * 128, 256))
    assert _fused(tokens(14 * 14, 32), tokens(14 * 14, 32))
