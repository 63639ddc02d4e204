"""ResNet: torchvision compatibility, options, feature-extractor mode."""

from __future__ import annotations

import pytest
import torch
import torchvision

from ctxlit.backbones import build_backbone


@pytest.mark.parametrize(
    "depth",
    [18, 34, 50, pytest.param(101, marks=pytest.mark.slow), pytest.param(152, marks=pytest.mark.slow)],
)
def test_torchvision_state_dict_loads_strictly_and_gives_same_outputs(depth):
    ours = build_backbone(f"resnet{depth}", num_classes=1000)
    ref = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    ref_sd = ref.state_dict()
    ours_sd = ours.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    # randomise BN statistics so the comparison exercises every tensor
    for k, v in ref_sd.items():
        if "running_var" in k:
            v.uniform_(0.5, 2.0)
        elif "running_mean" in k or ("bn" in k and k.endswith(".bias")):
            v.normal_(0, 0.1)
    ours.load_state_dict(ref_sd, strict=True)
    ours.eval()
    ref.eval()
    x = torch.randn(2, 3, 64 if depth < 101 else 32, 64 if depth < 101 else 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_resnext_option_matches_torchvision_keys():
    ours = build_backbone("resnet50", num_classes=1000, groups=32, width_per_group=4)
    ref = torchvision.models.resnext50_32x4d(weights=None)
    ours.load_state_dict(ref.state_dict(), strict=True)


@pytest.mark.parametrize("os_, strides", [(32, [4, 8, 16, 32]), (16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_output_stride_dilated(name, os_, strides):
    model = build_backbone(name, output_stride=os_, width=16)
    assert model.feature_strides == strides
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64 // s for s in strides]
    assert [f.shape[1] for f in feats] == model.out_channels


def test_dilated_resnet_has_same_parameters_as_plain():
    plain = build_backbone("resnet50", num_classes=10)
    dilated = build_backbone("resnet50", num_classes=10, output_stride=8)
    dilated.load_state_dict(plain.state_dict(), strict=True)
    assert dilated.layer4[1].conv2.dilation == (4, 4)
    assert dilated.layer3[0].conv2.dilation == (1, 1) and dilated.layer3[1].conv2.dilation == (2, 2)
    assert dilated.layer4[0].conv2.dilation == (2, 2)  # first block keeps the previous dilation


@pytest.mark.parametrize(
    "stem, size, strides",
    [("imagenet", 64, [4, 8, 16, 32]), ("deep", 64, [4, 8, 16, 32]), ("cifar", 32, [1, 2, 4, 8])],
)
def test_stems(stem, size, strides):
    model = build_backbone("resnet18", stem=stem, width=16)
    assert model.feature_strides == strides
    feats = model(torch.randn(2, 3, size, size))
    assert [size // f.shape[-1] for f in feats] == strides


def test_resnet18_112_is_resnet18_with_deep_stem():
    model = build_backbone("resnet18_112", num_classes=7)
    assert isinstance(model.conv1, torch.nn.Sequential) and len(model.conv1) == 7
    assert [m.out_channels for m in model.conv1 if isinstance(m, torch.nn.Conv2d)] == [32, 32, 64]
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 7)
    # same stages as resnet18: its layer1..layer4 / fc tensors load from a resnet18
    ref = build_backbone("resnet18", num_classes=7).state_dict()
    stages = {k: v for k, v in ref.items() if not k.startswith(("conv1.", "bn1."))}
    missing, unexpected = model.load_state_dict(stages, strict=False)
    assert not unexpected and all(k.startswith(("conv1.", "bn1.")) for k in missing)


def test_width_scales_every_stage():
    model = build_backbone("resnet10", width=16, num_classes=3)
    assert model.out_channels == [16, 32, 64, 128]
    assert sum(len(getattr(model, f"layer{i}")) for i in range(1, 5)) == 4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_zero_init_residual_zeroes_last_bn():
    model = build_backbone("resnet50", zero_init_residual=True)
    assert all(not b.bn3.weight.detach().any() for layer in (model.layer1, model.layer4) for b in layer)
    model = build_backbone("resnet18", zero_init_residual=True)
    assert not model.layer2[1].bn2.weight.detach().any()
    assert model.layer2[1].bn1.weight.detach().all()


def test_feature_extractor_has_no_classifier_keys():
    model = build_backbone("resnet18")
    assert not any(k.startswith("fc.") for k in model.state_dict())
    assert model.num_classes is None


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"stem": "vgg"}, "resnet18: stem must be one of 'imagenet', 'deep', 'cifar', 'lr'; got 'vgg'"),
        ({"output_stride": 4}, "resnet18: output_stride must be one of 32, 16, 8; got 4"),
        ({"width": 0}, "resnet18: width must be a positive integer; got 0"),
        ({"zero_init_residual": "yes"}, "zero_init_residual"),
        ({"dilation": 2}, "no option(s) dilation"),
        ({"groups": 32}, "groups=32"),
    ],
)
def test_invalid_options_name_option_and_allowed_values(options, fragment):
    with pytest.raises(ValueError, match=None) as err:
        build_backbone("resnet18", **options)
    assert fragment in str(err.value)


def test_invalid_option_lists_allowed_values():
    with pytest.raises(ValueError, match="stem must be one of 'imagenet', 'deep', 'cifar'"):
        build_backbone("resnet50", stem="vgg")
    with pytest.raises(ValueError, match="output_stride must be one of 32, 16, 8"):
        build_backbone("resnet50", output_stride=4)


def test_norm_layer_is_injectable_as_in_torchvision():
    """frozen_batchnorm equals torchvision's ResNet built with FrozenBatchNorm2d, loads its
    state dict strictly and gives its outputs; groupnorm puts GroupNorm(32) in every norm place,
    also the stem's and the shortcuts'; a callable works as torchvision's norm_layer does."""
    from torchvision.ops import FrozenBatchNorm2d

    ref = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    for k, v in ref.state_dict().items():
        if "running_var" in k or k.endswith(".weight") and v.dim() == 1:
            v.uniform_(0.5, 2.0)
    ours = build_backbone("resnet50", num_classes=1000, norm_layer="frozen_batchnorm")
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    norms = lambda model, kind: [n for n, m in model.named_modules() if isinstance(m, kind)]  # noqa: E731
    gn = build_backbone("resnet18", norm_layer="groupnorm", stem="deep")
    assert not norms(gn, torch.nn.BatchNorm2d) and "layer2.0.downsample.1" in norms(gn, torch.nn.GroupNorm)
    assert gn.layer1[0].bn1.num_groups == 32 and gn.conv1[1].num_groups == 32  # deep stem: 32 channels
    called = []
    build_backbone("resnet10", width=8, norm_layer=lambda c: called.append(c) or torch.nn.BatchNorm2d(c))
    assert called[:2] == [8, 8]  # bn1 of the stem, then layer1's first norm
    with pytest.raises(ValueError, match="norm_layer must be one of 'batchnorm', 'groupnorm', 'frozen_batchnorm'; got 'layernorm'"):
        build_backbone("resnet18", norm_layer="layernorm")
