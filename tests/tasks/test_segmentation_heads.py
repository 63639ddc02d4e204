"""Segmentation heads and the task's network: shapes, where the context block goes, HRNetV2."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from ctxlit.backbones import describe_plugins
from ctxlit.blocks import GlobalContext, NonLocal
from ctxlit.errors import ConfigError
from ctxlit.heads import HEADS, FCNHead
from ctxlit.tasks import Placement, SegmentationTask

TINY_RESNET = {"backbone": "resnet10", "backbone_options": {"width": 8, "output_stride": 8}, "head_channels": 16}


@pytest.mark.parametrize("block, expected", [(None, nn.Identity), ("none", nn.Identity), ("gc", GlobalContext),
                                             (functools.partial(NonLocal, mode="dot_product"), NonLocal)])
def test_fcn_head_shapes_and_block(block, expected):
    head = FCNHead(24, 7, channels=16, block=block).eval()
    assert type(head.block) is expected
    assert head(torch.randn(2, 24, 5, 6)).shape == (2, 7, 5, 6)
    assert head.conv_in[0].kernel_size == head.convs[0][0].kernel_size == (3, 3) and len(head.convs) == 1


def test_fcn_head_one_1x1_conv_like_hrnetv2():
    head = FCNHead(24, 7, channels=16, num_convs=1, kernel_size=1, dropout=0.0)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(24, 16, (1, 1)), (16, 7, (1, 1))]
    assert HEADS["fcn"] is FCNHead
    with pytest.raises(ConfigError, match="num_convs"):
        FCNHead(24, 7, num_convs=0)


def test_task_logits_at_input_size_with_aux_head_on_stage3():
    task = SegmentationTask(5, head_block="gc", **TINY_RESNET).eval()
    assert task.backbone.feature_strides == [4, 8, 8, 8]  # dilated, output stride 8
    assert isinstance(task.head.block, GlobalContext)
    images = torch.randn(2, 3, 40, 56)
    logits, aux = task.forward_heads(images)
    assert logits.shape == aux.shape == (2, 5, 40, 56)
    assert task(images).shape == (2, 5, 40, 56)
    assert task.aux_head.conv_in[0].in_channels == task.backbone.out_channels[2]
    assert task.forward_heads(images, aux=False)[1] is None


def test_aux_weight_zero_has_no_aux_head_and_backbone_blocks_are_placed():
    task = SegmentationTask(5, aux_weight=0.0, block="se", placement=Placement(stages=[4], blocks="last"), **TINY_RESNET)
    assert task.aux_head is None
    rows = describe_plugins(task.backbone)
    assert len(rows) == 1 and "layer4" in str(rows[0]), rows


def test_hrnet_reads_the_concatenated_hrnetv2_features():
    task = SegmentationTask(4, backbone="hrnet_w18_small", aux_weight=0.0, head_channels=8, head_kernel_size=1,
                            head_num_convs=1).eval()
    assert task.backbone.features == "concat" and task.backbone.feature_strides == [4]
    assert task.head.conv_in[0].in_channels == sum(task.backbone.branch_channels)
    with torch.no_grad():
        assert task(torch.randn(1, 3, 32, 48)).shape == (1, 4, 32, 48)
    with pytest.raises(ConfigError, match="aux_weight"):
        SegmentationTask(4, backbone="hrnet_w18_small", aux_weight=0.4, head_channels=8)
