"""Map-style datasets of image files: the skip-a-bad-file base and labelled class images."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ctxlit.data.cache import ResizedImageCache
from ctxlit.data.decode import decode_rgb
from ctxlit.errors import DatasetError


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
