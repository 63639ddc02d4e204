"""Every registered backbone: builds, runs forward and backward, reports its features; the
paper configurations have the paper's parameter counts."""

from __future__ import annotations

import pytest
import torch

from ctxlit.backbones import BACKBONES, build_backbone, describe_plugins, list_backbones
from ctxlit.blocks import LocalRelation, SelectiveKernelConv

BIG = {"resnet101", "resnet152", "sknet101", "lrnet50", "hrnet_w32", "hrnet_w48"}
ALL = [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in list_backbones()]
SIZE = 64


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_names():
    expected = {
        "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet18_112",
        "sknet26", "sknet50", "sknet101", "lrnet26", "lrnet50",
        "hrnet_w18_small", "hrnet_w18", "hrnet_w32", "hrnet_w48",
    }
    assert expected <= set(list_backbones()) == set(BACKBONES)


def test_unknown_backbone_lists_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet99'; available backbones: resnet10, resnet18"):
        build_backbone("resnet99")


@pytest.mark.parametrize("name", ALL)
def test_feature_extractor_forward_backward(name):
    size = 32 if name in BIG or name == "sknet50" else SIZE  # the big ones at the smallest size with 1x1 at stride 32
    model = build_backbone(name)
    feats = model(torch.randn(2, 3, size, size))
    assert isinstance(feats, (list, tuple)) and len(feats) == len(model.out_channels) == len(model.feature_strides)
    for f, c, s in zip(feats, model.out_channels, model.feature_strides):
        assert f.shape == (2, c, size // s, size // s)
    assert model.feature_strides == [4, 8, 16, 32]
    sum(f.float().pow(2).mean() for f in feats).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]


# The classifier head is shared within a family: check it once per family, at small widths.
CLASSIFIERS = [
    ("resnet10", {}, 64),
    ("resnet18_112", {}, 112),
    ("resnet50", {"width": 16}, 64),
    ("sknet26", {"width": 32}, 64),
    ("lrnet26", {"width": 16, "mid_channels": [16, 16, 32, 32]}, 64),
    ("hrnet_w18_small", {}, 64),
]


@pytest.mark.parametrize("name, options, size", CLASSIFIERS)
def test_classifier_forward_backward(name, options, size):
    model = build_backbone(name, num_classes=5, **options)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 5)
    logits.logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]


def test_sknet_uses_sk_in_every_bottleneck():
    model = build_backbone("sknet50", width=32)
    convs = [b.conv2 for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    assert len(convs) == 16 and all(isinstance(c, SelectiveKernelConv) for c in convs)
    assert [b.conv2.out_channels for b in (model.layer1[0], model.layer2[0], model.layer3[0], model.layer4[0])] == [
        64, 128, 256, 512]  # ResNeXt 32x4d widths at width=32: 32 groups x 2, 4, 8, 16
    assert model.layer2[0].conv2.stride == 2 and model.layer2[1].conv2.stride == 1
    assert len(describe_plugins(model)) == 16


def test_lrnet_uses_local_relation_in_stem_and_every_block():
    model = build_backbone("lrnet26")
    assert isinstance(model.conv1[-1], LocalRelation) and model.conv1[-1].kernel_size == 7
    assert model.conv1[-1].stride == 2
    convs = [b.conv2 for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    assert all(isinstance(c, LocalRelation) and c.channels_per_group == 8 for c in convs)
    assert [b.width for b in (model.layer1[0], model.layer2[0], model.layer3[0], model.layer4[0])] == [104, 200, 400, 800]


def test_hrnet_concat_features_for_segmentation():
    model = build_backbone("hrnet_w18_small", features="concat")
    (feat,) = model(torch.randn(2, 3, 64, 96))
    assert feat.shape == (2, 16 + 32 + 64 + 128, 16, 24)
    assert model.out_channels == [240] and model.feature_strides == [4]


def test_hrnet_plugins_reach_every_branch():
    model = build_backbone("hrnet_w18_small", plugins=[{"block": "se", "stages": [4], "blocks": "last"}])
    paths = [i.path for i in describe_plugins(model)]
    assert paths == [f"stage4.0.branches.{b}.1.plugins.after_conv2.0" for b in range(4)]
    model = build_backbone("hrnet_w18", plugins=[{"block": "se", "stages": [1, 3], "blocks": [0]}])
    paths = [i.path for i in describe_plugins(model)]
    assert paths[0] == "layer1.0.plugins.after_conv3.0" and len(paths) == 1 + 4 * 3
    assert [f.shape[1] for f in model(torch.randn(2, 3, 32, 32))] == [18, 36, 72, 144]
    with pytest.raises(ValueError, match="position 'after_conv3' is not in BasicBlock"):
        build_backbone("hrnet_w18", plugins=[{"block": "se", "stages": [2], "position": "after_conv3"}])
    with pytest.raises(ValueError, match="stage 5 does not exist in hrnet_w18"):
        build_backbone("hrnet_w18", plugins=[{"block": "se", "stages": [5]}])


def test_hrnet_invalid_option():
    with pytest.raises(ValueError, match="hrnet_w18: features must be one of 'branches', 'concat'; got 'v3'"):
        build_backbone("hrnet_w18", features="v3")
    with pytest.raises(ValueError, match="no option.*stem"):
        build_backbone("hrnet_w18", stem="deep")


# Reference parameter counts (1000-class classifiers), tolerance 0.5% unless noted:
#   SKNet-50 27.5M, SKNet-101 48.9M: Li et al. 2019 (arXiv 1903.06586), Table 2.
#   SE-ResNet-50 (r=16, SE after conv3 of every block) 28.09M: Hu et al. 2018 (arXiv 1709.01507), Table 2.
#   LR-Net-50 (7x7, m=8) 23.3M: Hu et al. 2019 (arXiv 1904.11491), Table 1 / seed 003.
#   LR-Net-26 (7x7, m=8) 14.7M: same paper, Table 2 (k ablation); 1% since the res2 width is
#     rounded to a multiple of m (104 for the paper's 100).
#   HRNet-W18/W32/W48-C 21.3M/41.2M/77.5M, W18-small v1/v2 13.2M/15.6M: HRNet-Image-Classification
#     model zoo (github.com/HRNet/HRNet-Image-Classification, README table).
#   ResNet-18/34/50/101/152 11.69M/21.80M/25.56M/44.55M/60.19M: torchvision model docs.
PAPER_COUNTS = [
    ("resnet18", {}, 11_689_512, 0.0),
    ("resnet50", {}, 25_557_032, 0.0),
    ("resnet152", {}, 60_192_808, 0.0),
    ("sknet50", {}, 27.5e6, 0.005),
    ("sknet101", {}, 48.9e6, 0.005),
    ("resnet50", {"plugins": [{"block": "se", "stages": "all", "position": "after_conv3"}]}, 28.09e6, 0.005),
    ("lrnet50", {}, 23.3e6, 0.005),
    ("lrnet26", {}, 14.7e6, 0.01),
    ("hrnet_w18_small", {}, 13.2e6, 0.005),
    ("hrnet_w18_small_v2", {}, 15.6e6, 0.005),
    ("hrnet_w18", {}, 21.3e6, 0.005),
    ("hrnet_w32", {}, 41.2e6, 0.005),
    ("hrnet_w48", {}, 77.5e6, 0.005),
]


@pytest.mark.parametrize("name, options, expected, tol", PAPER_COUNTS)
def test_paper_parameter_counts(name, options, expected, tol):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        count = _params(build_backbone(name, num_classes=1000, **options))
    assert abs(count - expected) <= tol * expected, (name, count, expected)
