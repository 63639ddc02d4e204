"""Cityscapes semantic segmentation (fine annotations), 19 train classes, 255 = ignore.

::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The 34 label ids (0..33) map to the 19 train ids through the official label table
(``torchvision.datasets.Cityscapes.classes``, the same table as ``cityscapesscripts``); every
other id (the void classes, license plate = -1, anything >= 34) becomes 255.

Train: random scale in [0.5, 2.0], random 512x1024 crop (image padded with the mean colour,
label with 255), horizontal flip, image and label transformed together. Val: full resolution
(1024x2048), no resizing. Every image's label file is checked to exist when the data module is
built (names only); a label whose size differs from its image is reported, naming both files,
when loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from ctxlit.data.datasets import SkippingDataset
from ctxlit.data.decode import decode_label, decode_rgb
from ctxlit.data.folders import FolderDataModule
from ctxlit.data.scan import describe_skipped, report, require_dir
from ctxlit.data.transforms import IGNORE_INDEX, segmentation_train
from ctxlit.errors import ConfigError, DatasetError

LAYOUT = """  root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
  root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png"""
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def _official_table():
    from torchvision.datasets import Cityscapes

    return Cityscapes.classes


def known_label_ids() -> np.ndarray:
    """A 256-entry bool table of the ids a labelIds PNG may hold: the official table's (0..33)
    and 255, which is -1 (license plate) stored as uint8."""
    known = np.zeros(256, dtype=bool)
    for cls in _official_table():
        known[cls.id % 256] = True
    return known


def label_id_to_train_id() -> torch.Tensor:
    """A 256-entry uint8 lookup table: label id -> train id (0..18), 255 for everything ignored."""
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.uint8)
    for cls in _official_table():
        if 0 <= cls.id < 256 and 0 <= cls.train_id < IGNORE_INDEX:
            lut[cls.id] = cls.train_id
    return lut


def train_class_names() -> list[str]:
    """The 19 evaluated classes in train-id order (road, sidewalk, ..., bicycle)."""
    named = {cls.train_id: cls.name for cls in _official_table() if 0 <= cls.train_id < IGNORE_INDEX}
    return [named[i] for i in range(len(named))]


def scan_split(root: Path, split: str, skipped: list | None) -> tuple[list[Path], list[Path]]:
    """Paired image and label paths of one split, sorted; an image without its label is an error
    (or, with ``skipped`` given, appended there and left out)."""
    image_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes {split} image folder", LAYOUT)
    label_dir = require_dir(root / "gtFine" / split, f"Cityscapes {split} label folder", LAYOUT)
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        found = sorted(p.name for p in image_dir.rglob("*") if p.is_file())[:3]
        hint = f" (found e.g. {', '.join(found)})" if found else ""
        raise DatasetError(f"{image_dir} holds no <city>/*{IMAGE_SUFFIX} files{hint}; expected layout:\n{LAYOUT}")
    pairs, missing = [], []
    for image in images:
        label = label_dir / image.parent.name / (image.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)
        if label.is_file():
            pairs.append((image, label))
        else:
            missing.append((image, label))
    if missing and skipped is None:
        shown = "\n".join(f"  {image} -> {label}" for image, label in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(f"{len(missing)} Cityscapes image(s) without their label file (image -> expected label):\n{shown}{more}")
    if skipped is not None:
        skipped.extend((image, f"{image}: no label file {label}") for image, label in missing)
    if not pairs:
        raise DatasetError(f"no Cityscapes {split} image under {image_dir} has a label file")
    return [i for i, _ in pairs], [label for _, label in pairs]


class CityscapesSegmentation(SkippingDataset):
    """``(image uint8 3xHxW, train-id mask uint8 HxW)`` pairs; ``transform`` sees an Image and a Mask."""

    def __init__(self, images: list[Path], labels: list[Path], transform=None, skip_unreadable: bool = False) -> None:
        self.images, self.labels = images, labels
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.lut = label_id_to_train_id().numpy()
        self.known = known_label_ids()

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = decode_rgb(self.images[i])
        label_ids = decode_label(self.labels[i])
        if tuple(label_ids.shape) != tuple(image.shape[1:]):
            raise DatasetError(
                f"label {self.labels[i]} is {label_ids.shape[0]}x{label_ids.shape[1]} but its image "
                f"{self.images[i]} is {image.shape[1]}x{image.shape[2]} (height x width); they must match"
            )
        unknown = ~self.known[label_ids.numpy()]
        if unknown.any():
            raise DatasetError(
                f"label {self.labels[i]} holds id {int(label_ids.numpy()[unknown][0])}, which is no Cityscapes label id "
                f"(0-33, or 255 for -1): give the *{LABEL_SUFFIX} files, not the colour or instance images")
        if self.transform is not None:  # ids survive nearest resizing; padding 255 maps to 255
            image, label_ids = self.transform(tv_tensors.Image(image), tv_tensors.Mask(label_ids))
        # Map after the crop (fewer pixels); numpy indexes by uint8 directly, no int64 copy.
        mask = torch.from_numpy(self.lut[label_ids.as_subclass(torch.Tensor).numpy()])
        return image.as_subclass(torch.Tensor), mask


class CityscapesDataModule(FolderDataModule):
    """Cityscapes fine annotations: 19 classes, 255 = ignore; see the module docstring.

    ``val_batch_size`` defaults to 1 (full-resolution 1024x2048 evaluation). ``class_names``
    are the 19 train classes; ``ignore_index`` is 255. Masks arrive at the model as int64.
    """

    ignore_index = IGNORE_INDEX

    root_name = "Cityscapes root"
    layout = LAYOUT

    def __init__(
        self,
        root: str,
        batch_size: int = 8,
        val_batch_size: int | None = 1,
        crop_height: int = 512,
        crop_width: int = 1024,
        min_scale: float = 0.5,
        max_scale: float = 2.0,
        hflip: bool = True,
        train_split: str = "train",
        val_split: str = "val",
        **kwargs,
    ) -> None:
        """
        Args:
            root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
            batch_size: training crops per batch (per device).
            val_batch_size: validation images per batch (1: full 1024x2048 images).
            crop_height, crop_width: training crop, after the random rescale.
            min_scale, max_scale: range of the random rescale of training images.
            hflip: random horizontal flips in training.
            train_split, val_split: the split folders to read.
            kwargs: the loader options of :class:`FolderDataModule` (num_workers, pin_memory, skip_unreadable).
        """
        if crop_height < 1 or crop_width < 1:
            raise ConfigError(f"crop size must be positive, got {crop_height}x{crop_width}")
        if not 0 < min_scale <= max_scale:
            raise ConfigError(f"need 0 < min_scale <= max_scale, got min_scale={min_scale}, max_scale={max_scale}")
        super().__init__(root, batch_size=batch_size, val_batch_size=val_batch_size, **kwargs)
        self.save_hyperparameters()
        self.crop_height, self.crop_width = crop_height, crop_width
        self.min_scale, self.max_scale, self.hflip = min_scale, max_scale, hflip
        sink = self.skipped if self.skip_unreadable else None
        self.train_images, self.train_labels = scan_split(self.root, train_split, sink)
        self.val_images, self.val_labels = scan_split(self.root, val_split, sink)
        self.class_names = train_class_names()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one training crop, for FLOP counting."""
        return (3, self.crop_height, self.crop_width)

    def validation_files(self) -> list[Path]:
        return [*self.val_images, *self.val_labels]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            if self.skipped:
                report(describe_skipped(self.skipped))
            report(f"CityscapesDataModule: {len(self.train_images)} train / {len(self.val_images)} val images under {self.root}")
            transform = segmentation_train(self.crop_height, self.crop_width, self.min_scale, self.max_scale, self.hflip)
            self.train_dataset = CityscapesSegmentation(self.train_images, self.train_labels, transform, self.skip_unreadable)
            self.val_dataset = CityscapesSegmentation(self.val_images, self.val_labels, None, self.skip_unreadable)
