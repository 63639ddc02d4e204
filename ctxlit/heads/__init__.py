"""Segmentation heads: feature map -> per-pixel logits at the feature map's resolution.

One file per head family; :data:`HEADS` maps the names ``SegmentationTask(head=...)`` accepts
to their classes.
"""

from ctxlit.heads.fcn import FCNHead, make_block

#: head name -> class ``(in_channels, num_classes, channels=..., block=..., ...)``
HEADS = {"fcn": FCNHead}

__all__ = ["HEADS", "FCNHead", "make_block"]
