"""Every Cityscapes experiment config: its model section builds the network its comment claims,
and its comment quotes a published val mIoU with its source (or says none could be checked)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ctxlit.blocks import GlobalContext, GloRe, NonLocal, StripPooling
from ctxlit.heads import FCNHead, SPNetHead
from ctxlit.tasks import Placement, SegmentationTask

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "cityscapes"
#: config -> (head class, class of the head's context block or None)
ROWS = {
    "fcn_resnet50.yaml": (FCNHead, None),
    "gc_resnet50.yaml": (FCNHead, GlobalContext),
    "nl_resnet50.yaml": (FCNHead, NonLocal),
    "glore_resnet50.yaml": (FCNHead, GloRe),
    "spnet_resnet50.yaml": (SPNetHead, None),
    "hrnet_w18.yaml": (FCNHead, None),
}


def test_every_config_in_the_folder_is_a_claimed_row():
    assert sorted(p.name for p in EXPERIMENTS.glob("*.yaml")) == sorted(ROWS)


def build(init_args: dict, narrow: bool = True) -> SegmentationTask:
    """The task as the CLI builds it, on a narrow network: class_path options become partials."""
    args = dict(init_args)
    block = args.get("head_block")
    if isinstance(block, dict):
        classes = {"GlobalContext": GlobalContext, "NonLocal": NonLocal, "GloRe": GloRe}
        cls = classes[block["class_path"].rsplit(".", 1)[1]]
        args["head_block"] = lambda channels: cls(channels, **block.get("init_args", {}))
    if isinstance(args.get("placement"), dict):
        args["placement"] = Placement(**args["placement"])
    if narrow and args["backbone"] == "resnet50":
        args.update(backbone="resnet10", backbone_options={**args["backbone_options"], "width": 8}, head_channels=16)
    return SegmentationTask(19, **args).eval()


@pytest.mark.parametrize("name", sorted(ROWS))
def test_config_builds_its_row_and_quotes_its_numbers(name):
    text = (EXPERIMENTS / name).read_text()
    header = text[: text.index("seed_everything")]
    assert "Cityscapes val mIoU" in header and ("single-scale" in header or "not checked" in header), name
    init_args = yaml.safe_load(text)["model"]["init_args"]
    assert init_args["scales"] == [1.0] and init_args["flip"] is False
    task = build(init_args)
    head_class, block_class = ROWS[name]
    assert type(task.head) is head_class
    if block_class is not None:
        assert type(task.head.block) is block_class
    with torch.no_grad():
        assert task.predict_logits(torch.randn(1, 3, 32, 48)).shape == (1, 19, 32, 48)


def test_spnet_config_places_strip_pooling_as_the_official_backbone():
    """SPMs after the 3x3 conv of every block of res5 and of the last block of res2-res4 (the
    official ResNet with spm_on), on the real ResNet-50 (3, 4, 6, 3 blocks)."""
    init_args = yaml.safe_load((EXPERIMENTS / "spnet_resnet50.yaml").read_text())["model"]["init_args"]
    task = build(init_args, narrow=False)
    spms = sorted(n for n, m in task.backbone.named_modules() if isinstance(m, StripPooling))
    assert spms == [f"{block}.plugins.after_conv2.0" for block in
                    ("layer1.2", "layer2.3", "layer3.5", "layer4.0", "layer4.1", "layer4.2")]
    assert task.head.reduce[0].in_channels == 2048 and task.aux_head.conv_in[0].in_channels == 1024
