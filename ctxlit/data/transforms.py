"""Training and evaluation transforms (``torchvision.transforms.v2``) on uint8 tensors.

All of them take and return uint8 ``3 x H x W`` images (segmentation: an image and its
``tv_tensors.Mask`` transformed together); conversion to float and normalisation happen on the
device (see :class:`ctxlit.data.folders.FolderDataModule`). Sizes are arguments, not constants.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ctxlit.data.folders import IMAGENET_MEAN_UINT8

IGNORE_INDEX = 255


def eval_resize_size(image_size: int, crop_fraction: float = 0.875) -> int:
    """The usual evaluation resize for a centre crop: 224 -> 256, 112 -> 128."""
    return int(round(image_size / crop_fraction))


def classification_train(image_size: int, min_scale: float = 0.08, hflip: bool = True) -> v2.Compose:
    """RandomResizedCrop(image_size, scale=(min_scale, 1)) + horizontal flip."""
    steps: list[Any] = [v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def classification_eval(image_size: int, resize_size: int | None) -> v2.Compose:
    """Resize the shorter side to ``resize_size`` (skipped when None: already resized), centre crop."""
    steps: list[Any] = [] if resize_size is None else [v2.Resize(resize_size, antialias=True)]
    steps.append(v2.CenterCrop(image_size))
    return v2.Compose(steps)


class RandomScale(v2.Transform):
    """Resize image and mask together by one factor drawn uniformly from ``[min_scale, max_scale]``.

    Relative to each sample's own size (unlike ``v2.ScaleJitter``, which scales towards a fixed
    target size); masks are resized with nearest-neighbour interpolation by the v2 kernels.
    """

    def __init__(self, min_scale: float, max_scale: float) -> None:
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        scale = float(torch.empty(1).uniform_(self.min_scale, self.max_scale))
        return {"scale": scale}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, torch.Tensor)):
            return inpt
        height, width = F.get_size(inpt)
        size = [max(1, round(height * params["scale"])), max(1, round(width * params["scale"]))]
        return self._call_kernel(F.resize, inpt, size=size, antialias=True)


def segmentation_train(
    crop_height: int, crop_width: int, min_scale: float = 0.5, max_scale: float = 2.0, hflip: bool = True
) -> v2.Compose:
    """Random scale, random crop (image padded with the mean colour, mask with 255), flip.

    Call it with ``(tv_tensors.Image, tv_tensors.Mask)`` so both get the same geometry.
    """
    steps: list[Any] = [
        RandomScale(min_scale, max_scale),
        v2.RandomCrop(
            (crop_height, crop_width),
            pad_if_needed=True,
            fill={tv_tensors.Image: IMAGENET_MEAN_UINT8, tv_tensors.Mask: IGNORE_INDEX},
        ),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)
