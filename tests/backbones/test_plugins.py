"""Plugin placement: where blocks go, in which order, and the errors for bad specs."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
import torchvision
from torch import nn

from ctxlit.backbones import PluginSpec, build_backbone, describe_plugins

from .conftest import Probe

DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}
POSITIONS = {
    "resnet18": ("after_conv1", "after_conv2", "after_add", "after_last_conv"),
    "resnet50": ("after_conv1", "after_conv2", "after_conv3", "after_add", "after_last_conv"),
}
STAGE_CHOICES = ("all", [1], [2, 3, 4], 4, [1, 4])
BLOCK_CHOICES = ("all", "last", "first", [0], [-1, 0], [1])


def _expected_sites(name, stages, blocks):
    depths = DEPTHS[name]
    stage_list = [1, 2, 3, 4] if stages == "all" else ([stages] if isinstance(stages, int) else stages)
    out = []
    for s in stage_list:
        n = depths[s - 1]
        if blocks == "all":
            idx = range(n)
        elif blocks == "last":
            idx = [n - 1]
        elif blocks == "first":
            idx = [0]
        else:
            idx = sorted({i % n for i in blocks})
        out += [f"layer{s}.{i}" for i in idx]
    return out


def _channels(name, stage, position):
    width = 16 * 2 ** (stage - 1)
    if name == "resnet18":
        return width
    return width if position in ("after_conv1", "after_conv2") else width * 4


GRID = [
    (name, pos, st, bl)
    for name in DEPTHS
    for pos, st, bl in itertools.product(POSITIONS[name], STAGE_CHOICES, BLOCK_CHOICES)
]


@pytest.mark.parametrize("name, position, stages, blocks", GRID)
def test_placement_grid(name, position, stages, blocks):
    model = build_backbone(
        name, width=16, plugins=[{"block": Probe, "stages": stages, "blocks": blocks, "position": position}]
    )
    concrete = position
    if position == "after_last_conv":
        concrete = "after_conv2" if name == "resnet18" else "after_conv3"
    sites = _expected_sites(name, stages, blocks)
    infos = describe_plugins(model)
    assert [i.path for i in infos] == [f"{s}.plugins.{concrete}.0" for s in sites]
    assert all(i.position == concrete and i.module_class == "Probe" for i in infos)
    probes = [m for m in model.modules() if isinstance(m, Probe)]
    assert len(probes) == len(sites)
    for info, probe in zip(infos, probes):
        stage = int(info.path[len("layer")])
        assert probe.channels == info.channels == _channels(name, stage, concrete)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_every_position_runs_in_forward(name):
    positions = [p for p in POSITIONS[name] if p != "after_last_conv"]
    plugins = [
        {"block": functools.partial(Probe, tag=p), "stages": [2], "blocks": [0], "position": p} for p in positions
    ]
    model = build_backbone(name, plugins=plugins, width=16)
    model(torch.randn(2, 3, 32, 32))
    assert Probe.calls == positions  # forward order: conv1, conv2, (conv3), add


def test_several_plugins_at_one_position_chain_in_list_order():
    """Through the built network (not the container alone): the second plugin reads the first's
    output, and what follows reads the second's."""
    seen = {}

    class AddOne(nn.Module):
        def __init__(self, channels, tag=""):
            super().__init__()
            self.tag = tag

        def step(self, x):
            return x + 1

        def forward(self, x):
            out = self.step(x)
            seen[self.tag] = (x.detach().clone(), out.detach().clone())
            return out

    class Double(AddOne):
        def step(self, x):
            return x * 2

    spec = dict(stages=[4], blocks="last", position="after_add")
    model = build_backbone(
        "resnet10",
        width=8,
        plugins=[{"block": functools.partial(AddOne, tag="a"), **spec}, {"block": functools.partial(Double, tag="b"), **spec}],
    )
    assert [type(m).__name__ for m in model.layer4[0].plugins["after_add"]] == ["AddOne", "Double"]
    features = {}
    model.layer4.register_forward_hook(lambda module, args, out: features.setdefault("layer4", out))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    a_in, a_out = seen["a"]
    b_in, b_out = seen["b"]
    torch.testing.assert_close(a_out, a_in + 1)
    torch.testing.assert_close(b_in, a_out)  # chained: b read a's output, not the block's
    torch.testing.assert_close(b_out, (a_in + 1) * 2)
    torch.testing.assert_close(features["layer4"], b_out)  # the stage's output is b's


def test_registry_block_with_options_and_state_dict_names():
    model = build_backbone(
        "resnet50",
        num_classes=1000,
        plugins=[{"block": "gc", "options": {"ratio": 0.0625}, "stages": [2, 3, 4], "blocks": "all", "position": "after_conv3"}],
    )
    infos = describe_plugins(model)
    assert len(infos) == 4 + 6 + 3
    assert infos[0].path == "layer2.0.plugins.after_conv3.0"
    assert infos[0].module_class == "GlobalContext" and infos[0].options == {"ratio": 0.0625}
    extra = [k for k in model.state_dict() if ".plugins." in k]
    assert extra and all(k.split(".plugins.")[0].count(".") == 1 for k in extra)
    # a plain torchvision checkpoint still loads, with only plugin keys missing
    missing, unexpected = model.load_state_dict(torchvision.models.resnet50(weights=None).state_dict(), strict=False)
    assert not unexpected
    assert missing and all(".plugins." in k for k in missing)


def test_callable_block_and_plugin_spec_dataclass():
    from ctxlit.blocks import GlobalContext

    spec = PluginSpec(block=functools.partial(GlobalContext, ratio=0.25), stages=3, blocks="last")
    model = build_backbone("resnet18", plugins=[spec])
    (info,) = describe_plugins(model)
    assert info.path == "layer3.1.plugins.after_conv2.0"
    assert info.block == "GlobalContext" and info.options == {"ratio": 0.25}
    assert isinstance(model.layer3[1].plugins["after_conv2"][0], GlobalContext)


def test_plugin_runs_forward_backward_with_real_block():
    model = build_backbone("resnet10", width=16, num_classes=4, plugins=[{"block": "gc", "stages": "all"}])
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_single_spec_dict_is_accepted():
    model = build_backbone("resnet18", plugins={"block": Probe, "stages": 4, "blocks": "last", "position": "after_add"})
    assert [i.path for i in describe_plugins(model)] == ["layer4.1.plugins.after_add.0"]


def test_spatial_operator_replaces_conv_through_plugin():
    class Op(nn.Module):
        spatial_operator = True

        def __init__(self, in_channels, out_channels=None, stride=1):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels or in_channels, 3, stride, 1, bias=False)

        def forward(self, x):
            return self.conv(x)

    model = build_backbone("resnet50", width=16, plugins=[{"block": Op, "stages": [2], "position": "replace_conv2"}])
    assert isinstance(model.layer2[0].conv2, Op) and model.layer2[0].conv2.conv.stride == (2, 2)
    assert isinstance(model.layer3[0].conv2, nn.Conv2d)
    infos = describe_plugins(model)
    assert [i.path for i in infos] == [f"layer2.{i}.conv2" for i in range(4)]
    assert [f.shape[-1] for f in model(torch.randn(1, 3, 64, 64))] == [16, 8, 4, 2]
    # default position of a spatial operator is replace_conv2; BasicBlock can replace conv1
    model = build_backbone("resnet18", plugins=[{"block": Op, "stages": [3], "blocks": [0]}, {"block": Op, "stages": [3], "blocks": [0], "position": "replace_conv1"}])
    assert isinstance(model.layer3[0].conv1, Op) and model.layer3[0].conv1.conv.stride == (2, 2)
    assert isinstance(model.layer3[0].conv2, Op)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"block": Probe, "position": "after_conv3"}, "position 'after_conv3' is not in BasicBlock; allowed: after_conv1"),
        ({"block": Probe, "position": "after_conv9"}, "unknown plugin position 'after_conv9'; allowed: after_conv1"),
        ({"block": Probe, "stages": [5]}, "stage 5 does not exist in resnet18; stages: 1, 2, 3, 4"),
        ({"block": Probe, "stages": [0]}, "stage 0 does not exist"),
        ({"block": Probe, "stages": "some"}, "'stages' must be 'all'"),
        ({"block": Probe, "blocks": [2]}, "block index 2 is out of range for stage 1 (layer1), which has 2 blocks"),
        ({"block": Probe, "blocks": [-3]}, "block index -3 is out of range"),
        ({"block": Probe, "blocks": "middle"}, "'blocks' must be 'all' or 'last'"),
        ({"block": "no_such_block"}, "unknown block 'no_such_block'; allowed names: gc, glore, lr, mpm, nl, se, sk, snl, spm"),
        ({"block": nn.Identity}, "block 'Identity' does not declare spatial_operator = True/False, so it has no default position"),
        ({"block": "gc", "where": "c4"}, "unknown key(s) ['where']"),
        ({"options": {}}, "has no 'block'"),
        ({"block": Probe, "options": {"ratio": 2}}, "'options' must be empty"),
        ({"block": "gc", "position": "replace_conv2"}, "is an add-on block, it cannot replace_conv2"),
        ({"block": "gc", "options": {"nope": 1}}, "nope"),
    ],
)
def test_invalid_specs_raise_clear_errors(spec, message):
    with pytest.raises(ValueError) as err:
        build_backbone("resnet18", plugins=[spec])
    assert message in str(err.value)


def test_conv_replaced_twice_is_an_error():
    class Op(nn.Module):
        spatial_operator = True

        def __init__(self, in_channels, out_channels=None, stride=1):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1)

    with pytest.raises(ValueError, match="already replaced"):
        build_backbone("resnet50", plugins=[{"block": Op, "stages": [1]}, {"block": Op, "stages": [1]}])


@pytest.mark.parametrize("name", ["sknet50", "lrnet50"])
def test_spatial_operator_refuses_a_dilated_conv(name):
    with pytest.raises(ValueError, match=r"conv2 of this Bottleneck is dilated \(dilation=\(2, 2\).*output_stride=32"):
        build_backbone(name, output_stride=16)


def test_replace_on_undilated_stages_of_a_dilated_resnet_still_works():
    # output_stride=16 dilates layer4 only: replacing in layer2 keeps the receptive field.
    model = build_backbone("resnet50", output_stride=16, plugins=[{"block": "sk", "stages": [2], "blocks": "last"}])
    assert type(model.layer2[-1].conv2).__name__ == "SelectiveKernelConv"


@pytest.mark.parametrize("block", ["gc", "nl", "snl"])
@pytest.mark.parametrize("zero_init_residual", [False, True])
def test_inserted_blocks_keep_their_own_zero_init_in_the_built_network(block, zero_init_residual):
    """The backbone initialises its convs before plugins go in, so each inserted residual block
    still starts as the identity (GC's zero W_v, NL's zero BN gamma): out == in at every site."""
    model = build_backbone("resnet18", width=16, zero_init_residual=zero_init_residual,
                           plugins=[{"block": block, "stages": [2, 3, 4], "blocks": "all", "position": "after_add"}])
    pairs = []
    for info in describe_plugins(model):
        module = model.get_submodule(info.path)
        module.register_forward_hook(lambda m, args, out: pairs.append((args[0].detach().clone(), out.detach())))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert len(pairs) == 6
    for inputs, outputs in pairs:
        torch.testing.assert_close(outputs, inputs, rtol=0, atol=0)
