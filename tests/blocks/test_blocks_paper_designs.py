"""Per-block behaviour: identity at init, paper parameter formulas, invalid options, read-outs."""

from __future__ import annotations

import pytest
import torch

from ctxlit.blocks import (
    GloRe,
    LocalRelation,
    MixedPooling,
    NonLocal,
    SelectiveKernelConv,
    SqueezeExcite,
    StripPooling,
    record_attention,
)
from blocks_cases import perturb, sample

C = 64
MODES = ["embedded_gaussian", "gaussian", "dot_product", "concatenation"]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- identity at init -------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [NonLocal(C, mode=m, subsample=s) for m in MODES for s in (False, True)] + [GloRe(C), GloRe(C, normalize=True)],
    ids=lambda b: repr(b).split("(")[0] + str(id(b) % 97),
)
def test_starts_as_identity(block):
    x = sample()
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    perturb(block)
    assert (block(x) - x).abs().max() > 1e-3


# --- parameter counts written from the papers' designs ---------------------------------


@pytest.mark.parametrize("r", [16, 4])
def test_se_parameter_count(r):
    cr = C // r
    assert n_params(SqueezeExcite(C, reduction=r)) == C * cr + cr + cr * C + C


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", [2, 4])
def test_nl_parameter_count(mode, reduction):
    ci = C // reduction
    theta_phi = 0 if mode == "gaussian" else 2 * (C * ci + ci)
    g = C * ci + ci
    concat = 2 * ci if mode == "concatenation" else 0
    out = ci * C + 2 * C  # W_z (no bias, BN follows) + BN gamma/beta
    assert n_params(NonLocal(C, mode=mode, reduction=reduction)) == theta_phi + g + concat + out


def test_glore_parameter_count():
    s, k = C // 2, C // 4
    expected = (C * s + s) + (C * k + k) + (k * k + k) + s * s + s * C + 2 * C
    assert n_params(GloRe(C)) == expected


def test_spm_parameter_count():
    assert n_params(StripPooling(C)) == 2 * (3 * C * C + 2 * C) + C * C + C


def test_mpm_parameter_count():
    ci = C // 4
    cb = lambda cin, cout, kernel: cin * cout * kernel + 2 * cout  # noqa: E731 conv (no bias) + BN
    expected = (
        2 * cb(C, ci, 1)  # two 1x1 reductions
        + 3 * cb(ci, ci, 9)  # local 3x3 and the two pyramid 3x3s
        + 2 * cb(ci, ci, 3)  # 1x3 and 3x1 strip convs
        + 2 * cb(ci, ci, 9)  # fusion 3x3s
        + cb(2 * ci, C, 1)  # projection back to C
    )
    assert n_params(MixedPooling(C)) == expected


@pytest.mark.parametrize(("cin", "cout"), [(64, 64), (64, 128), (256, 256)])
def test_sk_parameter_count(cin, cout):
    m, g = 2, 32
    d = max(cout // 16, 32)
    branches = m * (9 * cin * cout // g + 2 * cout)
    expected = branches + cout * d + 2 * d + d * m * cout
    assert n_params(SelectiveKernelConv(cin, cout)) == expected


@pytest.mark.parametrize(("cin", "cout", "hidden"), [(64, 64, 32), (64, 128, 8)])
def test_lr_parameter_count(cin, cout, hidden):
    groups = cin // 8
    geometry = (2 * hidden + hidden) + (hidden * groups + groups)
    expected = 2 * cin * groups + geometry + cin * cout
    assert n_params(LocalRelation(cin, cout, geometry_hidden=hidden)) == expected


# --- invalid options ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: NonLocal(C, mode="softmax"), r"mode must be one of 'embedded_gaussian', 'gaussian', 'dot_product', 'concatenation'; got 'softmax'"),
        (lambda: NonLocal(C, mode="dot_product", scaled=True), r"scaled=True needs mode 'embedded_gaussian' or 'gaussian'"),
        (lambda: NonLocal(C, reduction=128), r"NonLocal: reduction=128 gives 0 hidden channels"),
        (lambda: SqueezeExcite(C, reduction=128), r"reduction=128 gives 0 hidden channels"),
        (lambda: SqueezeExcite(C, reduction=0), r"reduction must be > 0"),
        (lambda: GloRe(C, node_ratio=0.001), r"node_ratio=0.001 gives 0 hidden channels"),
        (lambda: MixedPooling(C, pool1=0), r"pool1 must be > 0"),
        (lambda: MixedPooling(C, reduction=0), r"reduction must be > 0"),
        (lambda: SelectiveKernelConv(48), r"in_channels=48 must be divisible by groups=32"),
        (lambda: SelectiveKernelConv(64, 80), r"out_channels=80 must be divisible by groups=32"),
        (lambda: SelectiveKernelConv(64, stride=0), r"stride must be > 0"),
        (lambda: LocalRelation(C, phi="cosine"), r"phi must be one of 'squared_diff', 'abs_diff', 'product'; got 'cosine'"),
        (lambda: LocalRelation(C, kernel_size=4), r"kernel_size must be a positive odd number; got 4"),
        (lambda: LocalRelation(60), r"in_channels=60 must be divisible by channels_per_group=8"),
    ],
)
def test_invalid_options_raise_value_error(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


# --- behaviour -----------------------------------------------------------------------------


def test_glore_normalize_makes_it_resolution_robust():
    """Tiling the input 2x2 leaves normalised node features unchanged; unnormalised ones grow."""
    x = sample(shape=(2, C, 6, 6))
    tiled = x.repeat(1, 1, 2, 2)
    for normalize, robust in ((True, True), (False, False)):
        block = GloRe(C, normalize=normalize)
        perturb(block)
        block.eval()
        same = torch.allclose(block(tiled), block(x).repeat(1, 1, 2, 2), atol=1e-5)
        assert same is robust, normalize


def test_sk_branch_weights_and_no_prints(capsys):
    block = SelectiveKernelConv(C, 128, stride=2)
    with record_attention(block) as maps:
        y = block(sample())
    assert y.shape == (2, 128, 4, 4)
    weights = maps[""]
    assert weights.shape == (2, 2, 128)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 128))
    assert capsys.readouterr().out == ""


def test_sk_branches_have_dilation_one_to_m():
    block = SelectiveKernelConv(C, branches=3)
    assert [seq[0].dilation for seq in block.convs] == [(1, 1), (2, 2), (3, 3)]
    assert block(sample()).shape == (2, C, 8, 8)


def test_se_and_spm_gates_recorded():
    model = torch.nn.Sequential(SqueezeExcite(C), StripPooling(C))
    x = sample()
    with record_attention(model) as maps:
        y = model(x)
    assert maps["0"].shape == (2, C) and maps["1"].shape == (2, C, 8, 8)
    torch.testing.assert_close(y, x * maps["0"][:, :, None, None] * maps["1"])


def test_glore_projection_recorded():
    block = GloRe(C)
    x = sample()
    with record_attention(block) as maps:
        block(x)
    assert maps[""].shape == (2, C // 4, 8, 8)
    torch.testing.assert_close(maps[""], block.project(x))
