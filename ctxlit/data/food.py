"""Food-delivery photo classification: one folder per class, 112 px by default.

Two layouts are accepted under ``root``::

    root/train/<class>/*.jpg  and  root/val/<class>/*.jpg     (split given)
    root/<class>/*.jpg                                        (split here)

In the second, each class is split on its own (stratified): its files, sorted by path, are
shuffled with a generator seeded by ``(split_seed, class name)`` and ``val_fraction`` of them
(at least one when the class has two or more) go to validation. The same seed gives the same
split on any machine; adding a class leaves the other classes' splits unchanged.

Class imbalance (``balance``):

- ``"none"``: plain shuffling.
- ``"loss_weights"``: :attr:`FoodDeliveryDataModule.class_weights` holds ``N / (K * n_c)``
  per class (``n_c`` training images of class c, N in all, K classes; mean weight over the
  samples is 1). The classification task passes ``trainer.datamodule.class_weights`` to its
  cross-entropy when the attribute is present and not None.
- ``"sampler"``: weighted draws (with replacement, one epoch = N draws, set by the seed and the
  epoch as every training order is: :class:`ctxlit.data.sampling.TrainSampler`) so that every
  class is drawn equally often; under DDP each rank reads its shard of the draws.

``cache=True`` decodes every image once, resizes its shorter side to ``resize_size`` (128 for
112 px) and keeps the uint8 pixels in one in-memory buffer; ``cache_dir`` stores that buffer on
disk (memory-mapped, reused by later runs). Training then crops from the cached image.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import torch

from ctxlit.data.folders import ClassificationFolderDataModule
from ctxlit.data.scan import class_folders, require_dir, scan_class_folders
from ctxlit.errors import ConfigError, DatasetError

LAYOUT = """  root/train/<class>/*.jpg and root/val/<class>/*.jpg   (a given split)
  or root/<class>/*.jpg   (split here by split_seed and val_fraction)"""


def stratified_split(files: list[Path], val_fraction: float, seed: int, key: str) -> tuple[list[Path], list[Path]]:
    """Split one class's files: ``round(val_fraction * n)`` to val, at least 1 (and 1 left to train) when n >= 2."""
    ordered = sorted(files)
    n = len(ordered)
    n_val = min(max(round(val_fraction * n), 1), n - 1) if n >= 2 else 0
    random.Random(f"{seed}/{key}").shuffle(ordered)
    val = set(ordered[:n_val])
    return [p for p in sorted(files) if p not in val], [p for p in sorted(files) if p in val]


class FoodDeliveryDataModule(ClassificationFolderDataModule):
    """Food-delivery photos in class folders (see the module docstring for layouts and options).

    ``num_classes``, ``class_names``, ``train_counts``/``val_counts`` and ``class_weights`` are
    available right after construction; a missing root, wrong layout or empty class folder
    raises :class:`~ctxlit.errors.DatasetError` there, naming the path.
    """

    root_name = "food dataset root"
    layout = LAYOUT

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        image_size: int = 112,
        min_scale: float = 0.25,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        balance: Literal["none", "loss_weights", "sampler"] = "none",
        **kwargs,
    ) -> None:
        """
        Args:
            root: the dataset folder, in one of the layouts of the module docstring.
            batch_size: training images per batch (per device).
            image_size: training crop and validation centre crop, in pixels.
            min_scale: smallest area fraction of a random-resized training crop.
            val_fraction: share of each class split off for validation (root/<class> layout).
            split_seed: seed of that split.
            balance: class imbalance: ``none``, ``loss_weights`` or ``sampler`` (module docstring).
            kwargs: the options of :class:`ClassificationFolderDataModule` (resize_size, hflip,
                cache, cache_dir) and :class:`FolderDataModule` (val_batch_size, num_workers, ...).
        """
        if balance not in ("none", "loss_weights", "sampler"):
            raise ConfigError(f"balance must be 'none', 'loss_weights' or 'sampler', got {balance!r}")
        if not 0 < val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
        super().__init__(root, batch_size=batch_size, image_size=image_size, min_scale=min_scale, **kwargs)
        self.save_hyperparameters()
        self.balance = balance
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.presplit = (self.root / "train").is_dir() or (self.root / "val").is_dir()
        if self.presplit:
            self._scan_presplit()
        else:
            self._scan_and_split()

    def _scan_presplit(self) -> None:
        for split in ("train", "val"):
            require_dir(self.root / split, f"{split} folder", LAYOUT)
        classes = class_folders(self.root / "train", LAYOUT)
        extra = sorted(set(class_folders(self.root / "val", LAYOUT)) - set(classes))
        if extra:
            raise DatasetError(
                f"{self.root / 'val'} has class folders missing from {self.root / 'train'}: {', '.join(extra)}"
            )
        train = scan_class_folders(self.root / "train", classes, LAYOUT, self.skip_unreadable, self.skipped)
        val = scan_class_folders(self.root / "val", classes, LAYOUT, self.skip_unreadable, self.skipped)
        self._set_samples(classes, train, val)

    def _scan_and_split(self) -> None:
        classes = class_folders(self.root, LAYOUT)
        per_class = scan_class_folders(self.root, classes, LAYOUT, self.skip_unreadable, self.skipped)
        splits = [stratified_split(files, self.val_fraction, self.split_seed, name) for name, files in zip(classes, per_class)]
        if not any(val for _, val in splits):
            raise DatasetError(f"{self.root}: every class has a single image; need at least two per class to split off a validation set")
        self._set_samples(classes, [t for t, _ in splits], [v for _, v in splits])

    # -- class imbalance -------------------------------------------------------------------

    @property
    def class_weights(self) -> torch.Tensor | None:
        """Cross-entropy weights ``N / (K * n_c)`` with ``balance="loss_weights"``, else None."""
        if self.balance != "loss_weights":
            return None
        counts = torch.tensor(self.train_counts, dtype=torch.float64)
        weights = counts.sum() / (len(counts) * counts.clamp(min=1))
        return weights.where(counts > 0, torch.zeros_like(weights)).float()

    def train_weights(self) -> torch.Tensor | None:
        if self.balance != "sampler":
            return None
        counts = self.train_counts
        return torch.tensor([1.0 / counts[t] for t in self.train_dataset.targets], dtype=torch.double)

    def counts_table(self) -> str:
        table = super().counts_table()
        split = "given train/val folders" if self.presplit else f"split val_fraction={self.val_fraction} split_seed={self.split_seed}"
        weights = self.class_weights
        extra = f"; loss weights {[round(w, 3) for w in weights.tolist()]}" if weights is not None else ""
        return f"{table}\n  ({split}; balance={self.balance}{extra})"
