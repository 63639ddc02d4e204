"""Multi-scale + flip inference: flip-equivariance on a real network, scale-consistency, and the
one error for bad ``scales``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctxlit.errors import ConfigError
from ctxlit.tasks import SegmentationTask
from ctxlit.tasks.segmentation import rescale
from tests.data.conftest import cityscapes_tree  # noqa: F401  (the tiny two-city tree, a fixture)

TINY = {"backbone": "resnet10", "backbone_options": {"width": 8, "output_stride": 8}, "head_channels": 8}
PAPER_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
FCN_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "cityscapes" / "fcn_resnet50.yaml"


def tiny_task(**options) -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(4, **TINY, **options).eval()


@pytest.mark.parametrize("options", [
    {"flip": True},
    {"flip": True, "scales": [0.75, 1.0, 1.5]},
    {"flip": True, "scales": [0.5, 1.25], "sliding_window": True, "window": (32, 40), "stride": (24, 24)},
], ids=["single-scale", "multi-scale", "multi-scale-sliding"])
def test_flip_makes_the_prediction_of_the_mirrored_image_the_mirrored_prediction(options):
    task = tiny_task(**options)
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        mirrored = task.predict_logits(images.flip(-1))
        torch.testing.assert_close(mirrored, task.predict_logits(images).flip(-1), rtol=1e-5, atol=1e-5)
        # the check can fail: without flip the (asymmetric) network is not equivariant
        plain = tiny_task(**{**options, "flip": False})
        mirrored_plain = plain.predict_logits(images.flip(-1))
        assert not torch.allclose(mirrored_plain, plain.predict_logits(images).flip(-1), atol=1e-3)


def test_scale_one_is_todays_single_scale_output_exactly():
    task = tiny_task(flip=True, scales=[1.0])
    default = tiny_task(flip=True)
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = (task(images) + task(images.flip(-1)).flip(-1)) / 2  # the inference before scales existed
        assert torch.equal(task.predict_logits(images), expected)
        assert default.hparams.scales == [1.0] and torch.equal(default.predict_logits(images), expected)


def test_multi_scale_output_has_the_input_size_and_is_a_log_probability():
    task = tiny_task(scales=PAPER_SCALES, flip=True)
    images = torch.randn(1, 3, 37, 61)  # odd sizes: every scale rounds differently
    with torch.no_grad():
        out = task.predict_logits(images)
        assert out.shape == (1, 4, 37, 61)
        torch.testing.assert_close(out.exp().sum(1), torch.ones(1, 37, 61))
        # it is the mean of the per-scale probabilities, each resized back to the input size
        single = [F.interpolate(task.single_scale_logits(rescale(images, s)), size=(37, 61), mode="bilinear",
                                align_corners=False).softmax(1) for s in PAPER_SCALES]
        torch.testing.assert_close(out, (sum(single) / 6).log())
        assert not torch.allclose(out.softmax(1), single[2], atol=1e-3)  # the scales did change it


class PerPixel(nn.Module):
    """A network scale-invariant by construction on a constant image: 1x1 convs only."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, images):
        return self.net(images)


def test_multi_scale_equals_single_scale_for_a_scale_invariant_network():
    torch.manual_seed(0)
    multi, single = tiny_task(scales=PAPER_SCALES, flip=True), tiny_task(flip=True)
    per_pixel = PerPixel()
    # a plain function as instance attribute (a Module would be registered as a submodule instead)
    multi.forward = single.forward = lambda images: per_pixel(images)
    images = torch.randn(1, 3, 1, 1).expand(2, 3, 30, 44).contiguous()  # constant colour
    with torch.no_grad():
        expected = single.predict_logits(images)
        torch.testing.assert_close(multi.predict_logits(images), expected.log_softmax(1))
        # a real (not scale-invariant) input does differ
        varied = torch.randn(2, 3, 30, 44)
        assert not torch.allclose(multi.predict_logits(varied), single.predict_logits(varied).log_softmax(1), atol=1e-3)


@pytest.mark.parametrize("scales", [[], [0.5, 0.0], [1.0, -1.25], [float("nan")], [True]])
def test_bad_scales_are_one_error_naming_the_option(scales):
    with pytest.raises(ConfigError, match=r"^--model\.init_args\.scales: must be a non-empty list of numbers > 0 "
                                          r".*; got \[.*\]$"):
        SegmentationTask(4, **TINY, scales=scales)


@pytest.mark.parametrize("flag", ["--model.init_args.scales=[]", "--model.init_args.scales=[1.0,-0.5]"])
def test_bad_scales_on_the_command_line_stop_before_anything_is_written(flag, cityscapes_tree, tmp_path, capsys,
                                                                        monkeypatch):
    from ctxlit.fit import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["--config", str(FCN_CONFIG), f"--data.init_args.root={cityscapes_tree}",
                 "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options.width=8", flag])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: --model.init_args.scales: must be a non-empty list")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
