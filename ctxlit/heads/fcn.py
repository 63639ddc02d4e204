"""FCN-style segmentation heads, optionally with a context block between the convolutions.

``FCNHead`` is the head of the context-block papers' segmentation experiments (GCNet,
Non-local, GloRe, strip pooling on a dilated ResNet-50; the same layout as MMSegmentation's
``FCNHead``/``GCHead``/``NLHead``)::

    conv kxk -> BN -> ReLU  (in_channels -> channels)
    [context block]         (channels -> channels, optional)
    conv kxk -> BN -> ReLU  (channels -> channels; num_convs - 1 of them)
    Dropout2d(dropout) -> conv 1x1 (channels -> num_classes)

It returns logits at the resolution of its input feature map; the task upsamples them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

from torch import Tensor, nn

from ctxlit.blocks import build_block
from ctxlit.errors import ConfigError
from ctxlit.utils.layers import conv_norm_act

#: ``None``/``"none"``, a block registry name (its defaults), or ``channels -> nn.Module``.
HeadBlock = Union[str, Callable[[int], nn.Module], None]


def make_block(block: HeadBlock, channels: int) -> nn.Module:
    """The context block for ``channels`` channels, or ``nn.Identity`` for none."""
    if block is None or block == "none":
        return nn.Identity()
    if isinstance(block, str):
        return build_block(block, channels)
    if callable(block):
        return block(channels)
    raise ConfigError(f"head block must be 'none', a block registry name or a callable, got {block!r}")


class FCNHead(nn.Module):
    """See the module docstring.

    Args:
        in_channels: channels of the feature map the head reads.
        num_classes: output channels (logits).
        channels: width of the head's convolutions.
        block: context block after the first convolution (``None``/``"none"``: plain FCN).
        num_convs: convolutions before the classifier (1 or more); the block sits after the first.
        kernel_size: kernel of those convolutions (3; 1 for HRNetV2's head).
        dropout: ``Dropout2d`` probability before the classifier.
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
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ConfigError(f"FCNHead needs num_convs >= 1, got {num_convs}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"FCNHead kernel_size must be odd and positive, got {kernel_size}")
        self.conv_in = conv_norm_act(in_channels, channels, kernel_size)
        self.block = make_block(block, channels)
        self.convs = nn.Sequential(*(conv_norm_act(channels, channels, kernel_size) for _ in range(num_convs - 1)))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(self.block(self.conv_in(x)))
        return self.classifier(self.dropout(x))
