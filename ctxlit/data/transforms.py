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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The mean as uint8: padding value for images that are normalised later on the device (pads -> ~0).
IMAGENET_MEAN_UINT8 = tuple(round(255 * m) for m in IMAGENET_MEAN)
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


class RandomScaleCrop(v2.Transform):
    """Random scale then random crop of image and mask together, computed crop-first.

    Equivalent to resizing by ``s ~ U[min_scale, max_scale]`` and cropping ``size`` at a random
    position (padding bottom/right where the scaled sample is smaller: images with ``fill``,
    masks with 255), but only the window that survives the crop is resized: at ``s = 2`` a
    1024x2048 Cityscapes frame costs a 512x1024 resize instead of a 2048x4096 one. Masks use
    nearest-neighbour interpolation (the v2 kernels do that for ``tv_tensors.Mask``).
    """

    def __init__(self, size: tuple[int, int], min_scale: float, max_scale: float, fill=IMAGENET_MEAN_UINT8) -> None:
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.size = (int(size[0]), int(size[1]))
        self.min_scale, self.max_scale = min_scale, max_scale
        self.fill = {tv_tensors.Image: list(fill), tv_tensors.Mask: IGNORE_INDEX}

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = next(F.get_size(x) for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask, torch.Tensor)))
        scale = float(torch.empty(1).uniform_(self.min_scale, self.max_scale))
        params: dict[str, Any] = {}
        for axis, (extent, crop) in enumerate(zip((height, width), self.size)):
            window = min(extent, max(1, round(crop / scale)))  # the crop seen in original pixels
            start = int(torch.randint(0, extent - window + 1, ()))
            out = crop if window < extent else min(crop, max(1, round(extent * scale)))
            params[axis] = (start, window, out, crop - out)
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, torch.Tensor)):
            return inpt
        (top, h, out_h, pad_b), (left, w, out_w, pad_r) = params[0], params[1]
        out = self._call_kernel(F.crop, inpt, top=top, left=left, height=h, width=w)
        out = self._call_kernel(F.resize, out, size=[out_h, out_w], antialias=True)
        if pad_b or pad_r:
            fill = self.fill[tv_tensors.Mask] if isinstance(inpt, tv_tensors.Mask) else self.fill[tv_tensors.Image]
            out = self._call_kernel(F.pad, out, padding=[0, 0, pad_r, pad_b], fill=fill)
        return out


def segmentation_train(
    crop_height: int, crop_width: int, min_scale: float = 0.5, max_scale: float = 2.0, hflip: bool = True
) -> v2.Compose:
    """Random scale + crop (image padded with the mean colour, mask with 255), then flip.

    Call it with ``(tv_tensors.Image, tv_tensors.Mask)`` so both get the same geometry.
    """
    steps: list[Any] = [RandomScaleCrop((crop_height, crop_width), min_scale, max_scale)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)
