"""The LightningDataModule base shared by the folder-backed data modules (food, ImageNet,
Cityscapes), and the class-folder classification module built on it.

Images stay ``uint8`` through the workers, the collate and the host-to-device copy (a quarter of
the bytes of float32); :meth:`FolderDataModule.on_after_batch_transfer` converts and normalises
them on the device, so a LightningModule always receives float32 normalised images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ctxlit.data import transforms as T
from ctxlit.data.cache import ResizedImageCache
from ctxlit.data.datasets import LabelledImages
from ctxlit.data.sampling import ResumableTrainData, SeededAugmentation, evaluation_sampler, run_seed
from ctxlit.data.scan import default_threads, describe_skipped, find_unreadable, report, require_dir
from ctxlit.errors import ConfigError, DatasetError
from ctxlit.utils.checks import check_at_least


def default_num_workers() -> int:
    """DataLoader workers when none are given: one per usable core, less one for the main process, at most 8."""
    return max(0, min(8, default_threads() - 1))


class FolderDataModule(ResumableTrainData, pl.LightningDataModule):
    """Loader plumbing shared by the folder-backed data modules.

    Workers: ``num_workers=None`` picks one per usable core less one (at most 8); persistent
    workers whenever there are any. ``pin_memory=None`` pins only when CUDA is available.
    Batches leave the DataLoader as ``(uint8 images, targets)`` and are normalised (ImageNet
    mean/std, float32) on the device in :meth:`on_after_batch_transfer`; integer segmentation
    masks become int64 there.
    """

    mean: tuple[float, float, float] = T.IMAGENET_MEAN
    std: tuple[float, float, float] = T.IMAGENET_STD
    #: what ``root`` is and the layout expected under it, for the errors that name them
    root_name: str = "dataset root"
    layout: str = ""

    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        """
        Args:
            root: the dataset folder (checked here: it must exist and be a directory).
            batch_size: training images per batch (per device).
            val_batch_size: validation images per batch; default ``batch_size``.
            num_workers: DataLoader workers; default one per usable core less one, at most 8.
            pin_memory: default: only when CUDA is available.
            skip_unreadable: drop files that cannot be decoded (reported) instead of stopping.
        """
        super().__init__()
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if value is not None:
                check_at_least(name, value, 1, owner="data")
        self.root = require_dir(Path(root).expanduser(), self.root_name, self.layout)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.skip_unreadable = skip_unreadable
        self.skipped: list[tuple[Path, str]] = []
        self.class_names: list[str] = []
        self.train_dataset: Dataset | None = None  # built by the subclass's setup()
        self.val_dataset: Dataset | None = None
        self._val_files_checked = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _loader(self, dataset: Dataset, *, train: bool, sampler: Sampler | None = None) -> DataLoader:
        batch_size = self.batch_size if train else self.val_batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=train and len(dataset) >= batch_size,  # no size-1 last batch for BatchNorm
        )

    def train_weights(self) -> torch.Tensor | None:
        """Per-sample draw weights for the training sampler (subclasses may balance classes);
        None draws a permutation."""
        return None

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        seed = run_seed()
        sampler = self.train_sampler_for(self.train_dataset, seed=seed, batch_size=self.batch_size,
                                         stream=True, weights=self.train_weights())
        return self._loader(SeededAugmentation(self.train_dataset, seed), train=True, sampler=sampler)

    def validation_files(self) -> list[Path]:
        """Every file the validation set reads (subclasses list theirs)."""
        return []

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        if not self._val_files_checked and not self.skip_unreadable:
            self._check_validation_files()
        return self._loader(self.val_dataset, train=False, sampler=evaluation_sampler(self.val_dataset, self.trainer))

    def _check_validation_files(self) -> None:
        """Open every validation file's header before the first validation: the sanity check reads
        two batches only, so a bad file further on would otherwise stop the run at its first
        validation, after a whole training epoch (skip_unreadable=true skips such files instead)."""
        bad = find_unreadable(self.validation_files(), header_only=True)
        self._val_files_checked = True
        if bad:
            more = f" (and {len(bad) - 1} more validation files)" if len(bad) > 1 else ""
            raise DatasetError(f"{bad[0][1]}{more}; fix or remove it, or set data.init_args.skip_unreadable=true")

    def test_dataloader(self) -> DataLoader:
        report(f"[ctxlit] {type(self).__name__} has no test split: testing on the validation split")
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The validation split, in order (``predict_names()`` names its samples)."""
        return self.val_dataloader()

    def predict_names(self) -> list:
        return self.validation_files()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``N x 3 x H x W`` (any device) -> float32 normalised with ``mean``/``std``."""
        if images.is_floating_point():
            return images
        mean = torch.tensor(self.mean, device=images.device).mul_(255).view(1, 3, 1, 1)
        inv_std = torch.tensor(self.std, device=images.device).mul_(255).reciprocal_().view(1, 3, 1, 1)
        return images.float().sub_(mean).mul_(inv_std)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, targets = batch[0], batch[1]
        if isinstance(targets, torch.Tensor) and targets.dtype != torch.int64:
            targets = targets.long()
        return (self.normalize(images), targets, *batch[2:])


class ClassificationFolderDataModule(FolderDataModule):
    """Image classification from class folders: shared by the food and ImageNet data modules.

    Subclasses scan their layout in ``__init__`` and call :meth:`_set_samples`, so ``classes``,
    ``num_classes`` and the per-class counts exist before ``setup()`` (LightningCLI links
    ``data.num_classes`` into the model right after building the data module). ``setup()``
    drops unreadable files (``skip_unreadable``: every file is decoded once, threaded, and the
    skipped ones are counted and printed), builds the optional resized-image cache and the
    datasets, and prints the class counts.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        resize_size: int | None = None,
        min_scale: float = 0.08,
        hflip: bool = True,
        cache: bool = False,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        """
        Args:
            root: the dataset folder.
            image_size: training crop and validation centre crop, in pixels.
            resize_size: validation resize of the shorter side; default ``image_size / 0.875``.
            min_scale: smallest area fraction of a random-resized training crop.
            hflip: random horizontal flips in training.
            cache: decode every image once and keep it resized (shorter side ``resize_size``) in memory.
            cache_dir: keep that cache on disk here (memory-mapped, reused by later runs); implies ``cache``.
            kwargs: the loader options of :class:`FolderDataModule` (batch_size, num_workers, ...).
        """
        super().__init__(root, **kwargs)
        resize_size = resize_size or T.eval_resize_size(image_size)
        if image_size < 1 or resize_size < image_size:
            raise ConfigError(f"need 1 <= image_size <= resize_size, got image_size={image_size}, resize_size={resize_size}")
        if not 0 < min_scale <= 1:
            raise ConfigError(f"min_scale must be in (0, 1], got {min_scale}")
        self.image_size = image_size
        self.resize_size = resize_size
        self.min_scale = min_scale
        self.hflip = hflip
        self.cache = cache or cache_dir is not None
        self.cache_dir = cache_dir
        self._checked = False

    # -- samples ---------------------------------------------------------------------------

    def _set_samples(self, classes: Sequence[str], train: Sequence[Sequence[Path]], val: Sequence[Sequence[Path]]) -> None:
        self.class_names = list(classes)
        self.train_files = [list(files) for files in train]
        self.val_files = [list(files) for files in val]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one training sample, for FLOP counting."""
        return (3, self.image_size, self.image_size)

    @property
    def train_counts(self) -> list[int]:
        return [len(files) for files in self.train_files]

    @property
    def val_counts(self) -> list[int]:
        return [len(files) for files in self.val_files]

    @staticmethod
    def _flatten(per_class: Sequence[Sequence[Path]]) -> tuple[list[Path], list[int]]:
        paths = [p for files in per_class for p in files]
        targets = [c for c, files in enumerate(per_class) for _ in files]
        return paths, targets

    def _drop_unreadable(self) -> None:
        everything = [p for split in (self.train_files, self.val_files) for files in split for p in files]
        bad = find_unreadable(everything)
        if bad:
            names = {p for p, _ in bad}
            self.train_files = [[p for p in files if p not in names] for files in self.train_files]
            self.val_files = [[p for p in files if p not in names] for files in self.val_files]
            for c, files in enumerate(self.train_files):
                if not files:
                    raise DatasetError(f"class {self.class_names[c]!r} has no readable training image left after skipping")
        self.skipped.extend(bad)

    def counts_table(self) -> str:
        width = max(len("class"), *(len(n) for n in self.class_names))
        lines = [f"{type(self).__name__}: {self.num_classes} classes under {self.root}", f"  {'class':<{width}}  {'train':>7}  {'val':>7}"]
        for name, n_train, n_val in zip(self.class_names, self.train_counts, self.val_counts):
            lines.append(f"  {name:<{width}}  {n_train:>7}  {n_val:>7}")
        lines.append(f"  {'total':<{width}}  {sum(self.train_counts):>7}  {sum(self.val_counts):>7}")
        return "\n".join(lines)

    # -- LightningDataModule ---------------------------------------------------------------

    def _make_dataset(self, per_class: Sequence[Sequence[Path]], train: bool) -> LabelledImages:
        paths, targets = self._flatten(per_class)
        cache = ResizedImageCache.build(paths, self.resize_size, self.cache_dir) if self.cache else None
        if train:
            transform = T.classification_train(self.image_size, self.min_scale, self.hflip)
        else:
            transform = T.classification_eval(self.image_size, None if self.cache else self.resize_size)
        return LabelledImages(paths, targets, transform, cache, self.skip_unreadable)

    def validation_files(self) -> list[Path]:
        return self._flatten(self.val_files)[0]

    def prepare_data(self) -> None:
        """With ``cache_dir``: build the on-disk cache once (rank 0) before the ranks load it."""
        if self.cache_dir is not None and not self.skip_unreadable:
            for split in (self.train_files, self.val_files):
                ResizedImageCache.build(self._flatten(split)[0], self.resize_size, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if not self._checked:
            if self.skip_unreadable:
                self._drop_unreadable()
            if self.skipped:
                report(describe_skipped(self.skipped))
            report(self.counts_table())
            self._checked = True
        if self.train_dataset is None and stage in (None, "fit"):
            self.train_dataset = self._make_dataset(self.train_files, train=True)
        if self.val_dataset is None and stage in (None, "fit", "validate", "test", "predict"):
            self.val_dataset = self._make_dataset(self.val_files, train=False)
