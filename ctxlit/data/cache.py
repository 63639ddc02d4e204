"""A split's images decoded once and kept resized, in memory or memory-mapped from disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ctxlit.data.decode import decode_rgb
from ctxlit.data.scan import default_threads


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
