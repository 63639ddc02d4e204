"""SPNet head: a 1x1 reduction, two Mixed Pooling Modules, then an FCN-style classifier.

Paper: "Strip Pooling: Rethinking Spatial Pooling for Scene Parsing", Qibin Hou, Li Zhang,
Ming-Ming Cheng, Jiashi Feng, CVPR 2020, arXiv:2003.13328. The layout follows the official
head (``SPHead`` in github.com/houqb/SPNet, ``models/spnet.py``), on the dilated ResNet's
2048-channel stage-4 map::

    conv 1x1 -> BN -> ReLU     (in_channels -> mpm_channels; official: 2048 -> 1024)
    MixedPooling x 2           (mpm_channels, inner width mpm_channels / 4, pools 20 and 12)
    conv kxk -> BN -> ReLU     (mpm_channels -> channels; official: one 3x3, 1024 -> 512)
    [conv kxk -> BN -> ReLU]   (channels -> channels; num_convs - 2 more of them)
    Dropout2d(dropout) -> conv 1x1 (channels -> num_classes, with bias)

The Mixed Pooling Module is :class:`ctxlit.blocks.MixedPooling` (short-range pyramid pooling
plus long-range strip pooling, residual). With ``SegmentationTask``'s defaults
(``head_channels: 512``, ``head_num_convs: 2``, ``head_kernel_size: 3``) this is the official
head; its auxiliary head (an FCN head on stage 3, 1024 -> 256 -> classes, weight 0.4) is the
task's ``aux_head``. Logits come out at the input map's resolution; the task upsamples them.
"""

from __future__ import annotations

from torch import Tensor, nn

from ctxlit.blocks.strip_pooling import MixedPooling
from ctxlit.errors import ConfigError
from ctxlit.heads.fcn import HeadBlock
from ctxlit.utils.layers import conv_norm_act


class SPNetHead(nn.Module):
    """See the module docstring. The constructor takes :class:`~ctxlit.heads.FCNHead`'s
    arguments, so ``SegmentationTask(head="spnet")`` builds it like an FCN head.

    Args:
        in_channels: channels of the feature map the head reads (2048 for a ResNet-50).
        num_classes: output channels (logits).
        channels: width of the convolutions before the classifier (official: 512).
        block: must be ``None``/``"none"``: the head's context blocks are its two MPMs.
        num_convs: convolutions before the classifier, the 1x1 reduction included (official: 2).
        kernel_size: kernel of the convolutions after the MPMs (official: 3; the reduction is 1x1).
        dropout: ``Dropout2d`` probability before the classifier (official: 0.1).
        mpm_channels: width of the reduction and the MPMs; default ``in_channels // 2`` (official).
        num_mpms: Mixed Pooling Modules in sequence (official: 2).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        block: HeadBlock = None,
        num_convs: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.1,
        mpm_channels: int | None = None,
        num_mpms: int = 2,
    ) -> None:
        super().__init__()
        if block is not None and block != "none":
            raise ConfigError(f"head 'spnet' has its own context blocks (two Mixed Pooling Modules); "
                              f"--model.init_args.head_block must be 'none', got {block!r}")
        if num_convs < 1:
            raise ConfigError(f"SPNetHead needs num_convs >= 1 (the 1x1 reduction), got {num_convs}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"SPNetHead kernel_size must be odd and positive, got {kernel_size}")
        mpm_channels = mpm_channels or max(in_channels // 2, 1)
        self.reduce = conv_norm_act(in_channels, mpm_channels, 1)
        self.mpms = nn.Sequential(*(MixedPooling(mpm_channels) for _ in range(num_mpms)))
        widths = [mpm_channels] + [channels] * (num_convs - 1)
        self.convs = nn.Sequential(*(conv_norm_act(cin, cout, kernel_size) for cin, cout in zip(widths, widths[1:])))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        # (N, in, h, w) -> (N, mpm, h, w) -> (N, channels, h, w) -> (N, num_classes, h, w)
        x = self.convs(self.mpms(self.reduce(x)))
        return self.classifier(self.dropout(x))
