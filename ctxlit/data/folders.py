"""Image folders on disk: scanning, decoding to RGB uint8, validation, a resized-image cache,
and the LightningDataModule base shared by the folder-backed data modules.

Decoding goes through ``torchvision.io.decode_image`` (libjpeg-turbo / libpng, no PIL object)
with ``ImageReadMode.RGB``, so grayscale, palette, RGBA and CMYK files all arrive as 3-channel
RGB; 16-bit PNGs are reduced to 8 bits; formats it cannot read (BMP, TIFF, ...) fall back to PIL.
A file neither can decode raises :class:`~ctxlit.errors.DatasetError` naming the file.

Images stay ``uint8`` through the workers, the collate and the host-to-device copy (a quarter of
the bytes of float32); :meth:`FolderDataModule.on_after_batch_transfer` converts and normalises
them on the device, so a LightningModule always receives float32 normalised images.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageOps
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset, Sampler

from ctxlit.data import transforms as T
from ctxlit.data.sampling import ResumableTrainData, SeededAugmentation, evaluation_sampler, run_seed
from ctxlit.errors import DatasetError

try:  # torchvision >= 0.29 deprecates its image codecs in favour of torchcodec; still the fastest here
    from torchvision.io import ImageReadMode, decode_image

    warnings.filterwarnings(
        "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
    )
except ImportError:  # pragma: no cover - a future torchvision without torchvision.io image codecs
    decode_image = None
    ImageReadMode = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Files that operating systems and tools drop into folders; never reported as "not an image".
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "readme", "readme.txt", "readme.md", "license", "license.txt"}


# --------------------------------------------------------------------------------------------
# Decoding


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _undecodable(path: str, error: Exception) -> DatasetError:
    reason = str(error).replace(f"'{path}'", "").strip() or type(error).__name__
    return DatasetError(f"cannot decode image file {path}: {reason} (corrupt, truncated or not an image)")


def decode_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to a ``3 x H x W`` uint8 RGB tensor; ``DatasetError`` names a bad file.

    The EXIF orientation tag is applied (phone photos come out upright).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DatasetError(f"cannot read image file {path}: {error.strerror or error}") from error
    if not data:
        raise DatasetError(f"image file {path} is empty (0 bytes)")
    if decode_image is not None:
        try:
            image = decode_image(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, apply_exif_orientation=True
            )
        except RuntimeError:
            pass  # unsupported format or a damaged file: PIL decides below and gives the clearer reason
        else:
            if image.dtype == torch.uint16:  # 16-bit PNG
                image = (image.to(torch.int32) >> 8).to(torch.uint8)
            return image
    try:
        with Image.open(path) as opened:
            if opened.mode in {"I;16", "I;16B", "I;16L", "I"}:  # 16/32-bit grayscale: keep the high byte
                opened = Image.fromarray((np.asarray(opened, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            return _pil_to_tensor(ImageOps.exif_transpose(opened).convert("RGB"))
    except _PIL_ERRORS as error:
        raise _undecodable(path, error) from error


def check_image_header(path: str | os.PathLike) -> None:
    """Identify the image file's format without decoding its pixels (0.1 ms against 2 ms for a
    500x375 JPEG): an empty file, random bytes or another format raise ``DatasetError`` worded
    as :func:`decode_rgb` words it. A truncated image with an intact header passes."""
    path = os.fspath(path)
    try:
        empty = os.path.getsize(path) == 0
        if not empty:
            Image.open(path).close()
    except _PIL_ERRORS as error:
        raise _undecodable(path, error) from error
    if empty:
        raise DatasetError(f"image file {path} is empty (0 bytes)")


def decode_label(path: str | os.PathLike) -> torch.Tensor:
    """Decode a single-channel label PNG to a ``H x W`` uint8 tensor; ``DatasetError`` names a bad file.

    libpng through ``decode_image`` for 8-bit grayscale (the Cityscapes case, ~3x faster than
    PIL); PIL for everything else (palette indices, 16-bit, and the error message).
    """
    path = os.fspath(path)
    if decode_image is not None:
        try:
            label = decode_image(torch.from_numpy(np.fromfile(path, dtype=np.uint8)), mode=ImageReadMode.UNCHANGED)
        except (RuntimeError, OSError, ValueError):
            pass
        else:
            if label.shape[0] == 1 and label.dtype == torch.uint8:
                return label[0]
    try:
        with Image.open(path) as opened:
            if opened.mode not in {"L", "P", "I", "I;16", "1"}:
                raise DatasetError(
                    f"label file {path} has mode {opened.mode}; expected a single-channel PNG of label ids"
                )
            array = np.asarray(opened)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"cannot decode label file {path}: {error} (corrupt, truncated or not a PNG)") from error
    if array.dtype != np.uint8:
        array = array.clip(0, 255).astype(np.uint8)
    return torch.from_numpy(array.copy())


# --------------------------------------------------------------------------------------------
# Scanning


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """All files below ``directory`` (sorted, recursive, links followed): (images, non-image files)."""
    images: list[Path] = []
    others: list[Path] = []
    for current, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _is_junk(name):
                continue
            (images if is_image_file(name) else others).append(Path(current) / name)
    return images, others


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist; expected layout:\n{layout}")
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a directory; expected layout:\n{layout}")
    return path


def class_folders(directory: Path, layout: str) -> list[str]:
    """Sorted names of the class sub-folders of ``directory``; ``DatasetError`` when there are none."""
    require_dir(directory, "dataset folder", layout)
    names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not names:
        loose = sorted(e.name for e in os.scandir(directory) if e.is_file() and not _is_junk(e.name))
        hint = f" (it holds {len(loose)} loose files, e.g. {loose[0]!r}, but images must sit in class folders)" if loose else ""
        raise DatasetError(f"{directory} has no class folders{hint}; expected layout:\n{layout}")
    return names


def scan_class_folders(
    directory: Path, classes: Sequence[str], layout: str, skip_unreadable: bool = False, skipped: list | None = None
) -> list[list[Path]]:
    """Image paths per class (in ``classes`` order, a class folder missing here counts as empty).

    A class folder without images, or a file with a non-image extension, raises ``DatasetError``;
    with ``skip_unreadable`` non-image files are appended to ``skipped`` as ``(path, reason)``.
    """
    per_class: list[list[Path]] = []
    for name in classes:
        folder = directory / name
        if not folder.is_dir():
            per_class.append([])
            continue
        images, others = list_files(folder)
        for other in others:
            reason = f"not an image file (accepted extensions: {', '.join(IMAGE_EXTENSIONS)})"
            if not skip_unreadable:
                raise DatasetError(f"{other}: {reason}; remove it or pass skip_unreadable=True")
            if skipped is not None:
                skipped.append((other, reason))
        if not images:
            raise DatasetError(f"class folder {folder} contains no images ({', '.join(IMAGE_EXTENSIONS)}); expected layout:\n{layout}")
        per_class.append(images)
    return per_class


def find_unreadable(paths: Sequence[Path], threads: int | None = None, header_only: bool = False) -> list[tuple[Path, str]]:
    """Decode every file (threaded), or with ``header_only`` only identify it
    (:func:`check_image_header`); return ``(path, reason)`` for each one that fails."""
    read = check_image_header if header_only else decode_rgb

    def check(path: Path) -> tuple[Path, str] | None:
        try:
            read(path)
        except DatasetError as error:
            return path, str(error)
        return None

    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        return [r for r in pool.map(check, paths) if r is not None]


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def default_num_workers() -> int:
    """DataLoader workers when none are given: one per usable core, less one for the main process, at most 8."""
    return max(0, min(8, default_threads() - 1))


# --------------------------------------------------------------------------------------------
# Datasets and the resized-image cache


class ResizedImageCache:
    """Every image of a split decoded once, shorter side resized to ``short_side``, kept as uint8.

    All images live in one flat uint8 buffer plus an index (offset, height, width), so a cache of
    many small images is a single allocation: shared copy-on-write with forked DataLoader workers,
    or memory-mapped from ``cache_dir`` (``<cache_dir>/<key>.npy`` + ``.index.npy``) where it is
    built once and reused by later runs and by every DDP rank. The key hashes the short side and
    the paths, sizes and modification times of the files, so a changed dataset builds a new cache.
    """

    def __init__(self, buffer: np.ndarray | torch.Tensor, index: np.ndarray) -> None:
        self.buffer = buffer
        self.index = index  # int64 rows: offset, height, width

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        offset, height, width = (int(v) for v in self.index[i])
        flat = self.buffer[offset : offset + 3 * height * width]
        if isinstance(flat, np.ndarray):  # memory-mapped: copy the one image out of the map
            flat = torch.from_numpy(np.array(flat))
        return flat.view(3, height, width)

    @staticmethod
    def key(paths: Sequence[Path], short_side: int) -> str:
        digest = hashlib.sha1(f"short_side={short_side}".encode())
        for path in paths:
            stat = path.stat()
            digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:20]

    @classmethod
    def build(
        cls,
        paths: Sequence[Path],
        short_side: int,
        cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
    ) -> ResizedImageCache:
        """Load the cache from ``cache_dir`` when present, else decode + resize (threaded) and save it.

        Raises ``DatasetError`` naming the first file that cannot be decoded; callers remove
        unreadable files beforehand when they skip them.
        """
        from torchvision.transforms.v2 import functional as F

        target = None
        if cache_dir is not None:
            target = Path(cache_dir) / f"resized{short_side}-{cls.key(paths, short_side)}"
            data_file, index_file = target.with_suffix(".npy"), target.with_suffix(".index.npy")
            if data_file.exists() and index_file.exists():
                return cls(np.load(data_file, mmap_mode="r"), np.load(index_file))

        def load(path: Path) -> torch.Tensor:
            return F.resize(decode_rgb(path), short_side, antialias=True).contiguous()

        with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
            images = list(pool.map(load, paths))
        index = np.zeros((len(images), 3), dtype=np.int64)
        offset = 0
        for i, image in enumerate(images):
            index[i] = (offset, image.shape[1], image.shape[2])
            offset += image.numel()
        buffer = torch.empty(offset, dtype=torch.uint8)
        for (start, _, _), image in zip(index, images):
            buffer[start : start + image.numel()] = image.reshape(-1)
        if target is None:
            return cls(buffer, index)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = f".tmp-{os.getpid()}"
        np.save(str(target) + tmp + ".npy", buffer.numpy())
        np.save(str(target) + tmp + ".index.npy", index)
        os.replace(str(target) + tmp + ".npy", data_file)  # atomic: concurrent ranks write identical files
        os.replace(str(target) + tmp + ".index.npy", index_file)
        return cls(np.load(data_file, mmap_mode="r"), index)


class SkippingDataset(Dataset):
    """A dataset whose :meth:`load` may fail on a bad file with ``DatasetError`` (naming it).

    Without ``skip_unreadable`` the error propagates (from a worker too: the message keeps the
    file name). With it, the file is reported once (a warning naming it) and the next loadable
    sample is returned instead, so batch sizes and DDP step counts stay the same.
    """

    skip_unreadable: bool = False

    def load(self, i: int):
        raise NotImplementedError

    def __getitem__(self, i: int):
        for attempt in range(len(self)):
            try:
                return self.load((i + attempt) % len(self))
            except DatasetError as error:
                if not self.skip_unreadable:
                    raise
                warnings.warn(f"skipped unreadable sample: {error}", stacklevel=2)
        raise DatasetError(f"none of the {len(self)} samples of {type(self).__name__} could be loaded")


class LabelledImages(SkippingDataset):
    """``(image uint8 3xHxW, class id)`` pairs from files or from a :class:`ResizedImageCache`."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Sequence[int],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: ResizedImageCache | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform
        self.cache = cache
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.cache[i] if self.cache is not None else decode_rgb(self.paths[i])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i]


# --------------------------------------------------------------------------------------------
# LightningDataModule base


@rank_zero_only
def report(message: str) -> None:
    """Print a data-module message once (rank 0 only under DDP)."""
    print(message, flush=True)


def describe_skipped(skipped: Sequence[tuple[Path, str]], limit: int = 10) -> str:
    lines = [f"skipped {len(skipped)} unreadable file(s):"]
    lines += [f"  {reason if str(path) in reason else f'{path}: {reason}'}" for path, reason in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return "\n".join(lines)


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
    skip_unreadable: bool = False  # the subclasses' option: drop bad files instead of stopping

    def __init__(
        self,
        batch_size: int,
        val_batch_size: int | None,
        num_workers: int | None,
        pin_memory: bool | None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if value is not None and value < 1:
                from ctxlit.errors import ConfigError

                raise ConfigError(f"{name} must be >= 1, got {value}")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
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
        return self.val_dataloader()

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

    layout: str = ""

    def __init__(
        self,
        *,
        batch_size: int,
        val_batch_size: int | None,
        num_workers: int | None,
        pin_memory: bool | None,
        image_size: int,
        resize_size: int,
        min_scale: float,
        hflip: bool,
        skip_unreadable: bool,
        cache: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(batch_size, val_batch_size, num_workers, pin_memory)
        from ctxlit.errors import ConfigError

        if image_size < 1 or resize_size < image_size:
            raise ConfigError(f"need 1 <= image_size <= resize_size, got image_size={image_size}, resize_size={resize_size}")
        if not 0 < min_scale <= 1:
            raise ConfigError(f"min_scale must be in (0, 1], got {min_scale}")
        self.image_size = image_size
        self.resize_size = resize_size
        self.min_scale = min_scale
        self.hflip = hflip
        self.skip_unreadable = skip_unreadable
        self.cache = cache or cache_dir is not None
        self.cache_dir = cache_dir
        self.skipped: list[tuple[Path, str]] = []
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

