"""Segmentation heads: feature map -> per-pixel logits at the feature map's resolution.

One file per head family; :data:`HEADS` maps the names ``SegmentationTask(head=...)`` accepts
to their classes.
"""

from ctxlit.heads.fcn import FCNHead, make_block
from ctxlit.heads.spnet import SPNetHead

#: head name -> class ``(in_channels, num_classes, channels=..., block=..., ...)``
HEADS = {"fcn": FCNHead, "spnet": SPNetHead}

__all__ = ["HEADS", "FCNHead", "SPNetHead", "make_block"]
