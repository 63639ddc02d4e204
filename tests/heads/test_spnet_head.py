"""SPNet head (Hou et al. 2020): shapes, the official configuration's parameter count, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctxlit.blocks import MixedPooling
from ctxlit.errors import ConfigError
from ctxlit.heads import HEADS, SPNetHead
from ctxlit.tasks import SegmentationTask

TINY = {"backbone": "resnet10", "backbone_options": {"width": 8, "output_stride": 8}, "head_channels": 16}


def conv(cin: int, cout: int, kh: int, kw: int, bias: bool = False) -> int:
    return cin * cout * kh * kw + (cout if bias else 0)


def bn(channels: int) -> int:
    return 2 * channels  # weight and bias (running statistics are buffers)


def official_mpm_parameters(c: int) -> int:
    """``StripPooling`` of github.com/houqb/SPNet ``models/customize.py`` (the paper's MPM),
    written out from its layer list: inner width c/4, every conv without bias + BN."""
    i = c // 4
    reduce = 2 * (conv(c, i, 1, 1) + bn(i))              # conv1_1, conv1_2
    square = 5 * (conv(i, i, 3, 3) + bn(i))              # conv2_0, 2_1, 2_2 (pools), 2_5, 2_6 (fuse)
    strips = conv(i, i, 1, 3) + conv(i, i, 3, 1) + 2 * bn(i)  # conv2_3, conv2_4
    project = conv(2 * i, c, 1, 1) + bn(c)               # conv3
    return reduce + square + strips + project


def official_sphead_parameters(in_channels: int, num_classes: int) -> int:
    """``SPHead`` of ``models/spnet.py``: trans_layer 1x1 in -> in/2 + BN, two MPMs on in/2,
    score_layer 3x3 in/2 -> in/4 + BN, Dropout2d(0.1), 1x1 in/4 -> classes with bias."""
    inter = in_channels // 2
    return (conv(in_channels, inter, 1, 1) + bn(inter) + 2 * official_mpm_parameters(inter)
            + conv(inter, inter // 2, 3, 3) + bn(inter // 2) + conv(inter // 2, num_classes, 1, 1, bias=True))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_equals_the_official_head_on_resnet50_cityscapes():
    # ResNet-50's 2048-channel c5, Cityscapes' 19 classes, the task's default widths.
    expected = official_sphead_parameters(2048, 19)
    assert expected == 15_623_699  # 2.10M reduction + 2 x 4.40M MPMs + 4.72M score conv + classifier
    head = SPNetHead(2048, 19)
    assert n_params(head) == expected
    assert [type(m) for m in head.mpms] == [MixedPooling, MixedPooling]
    assert n_params(head.mpms[0]) == official_mpm_parameters(1024)
    assert head.reduce[0].kernel_size == (1, 1) and head.convs[0][0].kernel_size == (3, 3)
    assert head.dropout.p == 0.1 and head.classifier.bias is not None
    # built by the task from its usual options, the head is the same
    task = SegmentationTask(19, backbone="resnet50", backbone_options={"output_stride": 8}, head="spnet")
    assert HEADS["spnet"] is SPNetHead and n_params(task.head) == expected
    # its auxiliary head is the official one: 3x3 1024 -> 256 + BN, 1x1 256 -> 19
    assert n_params(task.aux_head) == conv(1024, 256, 3, 3) + bn(256) + conv(256, 19, 1, 1, bias=True)


def test_output_shape_at_the_feature_resolution():
    head = SPNetHead(64, 7, channels=16).eval()
    with torch.no_grad():
        assert head(torch.randn(2, 64, 13, 17)).shape == (2, 7, 13, 17)
    deeper = SPNetHead(64, 7, channels=16, num_convs=3, kernel_size=1, mpm_channels=48)
    assert [c[0].kernel_size for c in deeper.convs] == [(1, 1), (1, 1)] and deeper.mpms[0].channels == 48


@pytest.mark.parametrize("kwargs, match", [
    ({"block": "gc"}, "head_block must be 'none'"),
    ({"num_convs": 0}, "num_convs"),
    ({"kernel_size": 2}, "kernel_size"),
])
def test_bad_options_are_one_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SPNetHead(64, 7, **kwargs)


def test_trains_one_step_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    task = SegmentationTask(5, head="spnet", **TINY).train()
    images, targets = torch.randn(2, 3, 48, 64), torch.randint(0, 5, (2, 48, 64))
    targets[:, :4] = 255
    optimizer = torch.optim.SGD(task.parameters(), lr=0.01)
    torch.manual_seed(1)  # the same dropout masks in both forwards: only the step changes the loss
    logits, aux = task.forward_heads(images)
    assert logits.shape == aux.shape == (2, 5, 48, 64)
    main = task.loss(logits, targets)
    (main + 0.4 * task.loss(aux, targets)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in task.head.parameters())
    assert any(p.grad.abs().sum() > 0 for p in task.head.mpms.parameters())
    before = [p.detach().clone() for p in task.head.parameters()]
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, task.head.parameters()))
    torch.manual_seed(1)
    with torch.no_grad():
        assert F.cross_entropy(task.forward_heads(images)[0], targets, ignore_index=255) < main
