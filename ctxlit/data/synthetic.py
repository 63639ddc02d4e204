"""Synthetic context benchmark: labels that only a network with global context can read.

Each image (3 x S x S, default 32 px) holds two small glyphs on a noisy, tinted background:
one in the left third and one in the right third, so they are always far apart. A glyph has
a *shape* (one of ``num_shapes`` fixed random binary masks) and a *colour* (one of
``num_colours`` fixed palette entries). The label is a relation between the two glyphs::

    label = 2 * [shapes equal] + [colours equal]          # 4 classes

Why context blocks help, by construction: a plain CNN ends in global average pooling and a
linear classifier, so when no receptive field covers both glyphs its logits are a linear
function of ``f(glyph_a) + f(glyph_b)``. "Equal or not" is not linearly separable in such a
sum (``2 f(a)`` vs ``f(a) + f(b)``: any linear score that is high for every ``2 f(a)`` is
also high for ``f(a) + f(b)``). A block that mixes a global summary back into every position
through a non-linearity (GC, SE, Non-local, GloRe, ...) can compare the local glyph with the
global context. Deep layers whose theoretical receptive field spans both glyphs can in
principle do it too, which is exactly the comparison the benchmark measures.

Everything is generated on the fly from ``(seed, split, index)``, so a sample is the same in
every worker, process and rank, and nothing is stored on disk. Training reads a new stretch of
the endless stream every epoch (no sample is seen twice, so nothing can be memorised);
validation is a fixed set.
"""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ctxlit.data.sampling import evaluation_sampler
from ctxlit.errors import ConfigError

CLASS_NAMES = ["different", "same_colour", "same_shape", "same_shape_and_colour"]

# The glyph bank defines the task, so it is fixed across data seeds.
_GLYPH_BANK_SEED = 20190425
_SPLITS = ("train", "val")


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of sample ``index`` of ``split`` under data seed ``seed``.

    NumPy's SeedSequence hashes the whole ``(seed, split, index)`` tuple, so the endless
    training stream never meets the validation samples or another seed's. (torch's CPU
    generator keeps only the low 32 bits of a seed: ``manual_seed(2**40 + 5)`` repeats 5.)
    """
    return np.random.default_rng([seed, _SPLITS.index(split), index])


def glyph_bank(num_shapes: int, num_colours: int, glyph_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random shapes (num_shapes, g, g) in {0,1} and colours (num_colours, 3) in [-1, 1]."""
    gen = torch.Generator().manual_seed(_GLYPH_BANK_SEED)
    shapes = (torch.rand(num_shapes, glyph_size, glyph_size, generator=gen) > 0.5).float()
    # Evenly spaced hues keep colours distinguishable whatever their number.
    hues = torch.arange(num_colours, dtype=torch.float32) / num_colours
    phase = torch.tensor([0.0, 1.0 / 3.0, 2.0 / 3.0])
    colours = torch.cos(2 * math.pi * (hues[:, None] - phase[None, :]))
    return shapes, colours


class SyntheticContextDataset(Dataset):
    """Deterministic samples of the glyph-relation task; item = (image, label).

    Sample ``i`` of a split is defined for every ``i >= 0`` (an endless stream); ``length`` is
    how many make up one epoch. :class:`FreshSamplesSampler` reads a new stretch of the stream
    every epoch, so a network cannot memorise its training set.
    """

    def __init__(
        self,
        length: int,
        *,
        split: str = "train",
        seed: int = 0,
        image_size: int = 32,
        glyph_size: int = 5,
        num_shapes: int = 4,
        num_colours: int = 4,
        noise: float = 0.3,
    ) -> None:
        self.length = length
        self.seed, self.split = seed, split
        self.image_size = image_size
        self.glyph_size = glyph_size
        self.noise = noise
        self.shapes, self.colours = glyph_bank(num_shapes, num_colours, glyph_size)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return (self[i] for i in range(self.length))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            raise IndexError(index)
        rng = sample_rng(self.seed, self.split, index)
        label = int(rng.integers(len(CLASS_NAMES)))
        same_shape, same_colour = bool(label & 2), bool(label & 1)
        shape_a, shape_b = self._pick_pair(len(self.shapes), same_shape, rng)
        colour_a, colour_b = self._pick_pair(len(self.colours), same_colour, rng)

        s, g = self.image_size, self.glyph_size
        tint = (rng.random((3, 1, 1)) - 0.5) * 0.4
        image = torch.from_numpy((tint + self.noise * rng.standard_normal((3, s, s))).astype(np.float32))
        third = s // 3
        # Glyph a anywhere in the left third, glyph b anywhere in the right third.
        for shape, colour, x_lo in ((shape_a, colour_a, 0), (shape_b, colour_b, s - third)):
            y = int(rng.integers(0, s - g + 1))
            x = x_lo + int(rng.integers(0, third - g + 1))
            mask = self.shapes[shape]  # (g, g)
            patch = image[:, y : y + g, x : x + g]
            image[:, y : y + g, x : x + g] = patch * (1 - mask) + self.colours[colour][:, None, None] * mask
        return image, label

    @staticmethod
    def _pick_pair(n: int, equal: bool, rng: np.random.Generator) -> tuple[int, int]:
        a = int(rng.integers(n))
        if equal:
            return a, a
        b = (a + 1 + int(rng.integers(n - 1))) % n  # uniform over b != a
        return a, b


class FreshSamplesSampler(Sampler[int]):
    """Epoch ``e`` reads stream indices ``e*N .. e*N + N-1`` in an order set by ``(seed, e)``.

    With ``fresh=False`` every epoch reads the same ``N`` samples (a fixed training set).
    The order depends only on ``(seed, epoch)``: Lightning calls ``set_epoch`` on samplers
    that have it, so a run resumed from a checkpoint sees the same batches as an
    uninterrupted one (the global RNG is not in the checkpoint).
    """

    def __init__(self, data_source: Dataset, seed: int = 0, fresh: bool = True) -> None:
        self.data_source = data_source
        self.seed = seed
        self.fresh = fresh
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self):
        n = len(self.data_source)
        offset = self.epoch * n if self.fresh else 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        return iter((order + offset).tolist())


class SyntheticContextDataModule(pl.LightningDataModule):
    """The built-in benchmark: needs no data on disk, runs on a laptop CPU in minutes.

    Args:
        train_size: training samples per epoch.
        fresh_samples: every epoch draws new training samples from the endless stream (the
            default: the benchmark then measures generalisation, not memorisation); false
            reuses the same ``train_size`` samples every epoch.
        val_size: validation samples (a disjoint random stream).
        seed: data seed; samples depend only on it and their index.
        image_size: side of the square image in pixels (at least 6 glyph sizes).
        glyph_size: side of a glyph in pixels.
        num_shapes, num_colours: size of the glyph bank (at least 2 each).
        noise: standard deviation of the background noise.
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader workers; generation is cheap, 0 keeps both cores for training.
    """

    def __init__(
        self,
        train_size: int = 8192,
        val_size: int = 1024,
        fresh_samples: bool = True,
        seed: int = 0,
        image_size: int = 32,
        glyph_size: int = 5,
        num_shapes: int = 4,
        num_colours: int = 4,
        noise: float = 0.3,
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        _check_at_least("seed", seed, 0)
        _check_at_least("train_size", train_size, 1)
        _check_at_least("val_size", val_size, 1)
        _check_at_least("num_shapes", num_shapes, 2)
        _check_at_least("num_colours", num_colours, 2)
        _check_at_least("glyph_size", glyph_size, 2)
        _check_at_least("image_size", image_size, 6 * glyph_size)
        _check_at_least("batch_size", batch_size, 1)
        _check_at_least("num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.fresh_samples = fresh_samples
        options = dict(seed=seed, image_size=image_size, glyph_size=glyph_size,
                       num_shapes=num_shapes, num_colours=num_colours, noise=noise)
        self.train_set = SyntheticContextDataset(train_size, split="train", **options)
        self.val_set = SyntheticContextDataset(val_size, split="val", **options)

    @property
    def num_classes(self) -> int:
        return len(CLASS_NAMES)

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.hparams.image_size, self.hparams.image_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, sampler=FreshSamplesSampler(self.train_set, self.seed, self.fresh_samples))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, sampler=evaluation_sampler(self.val_set, self.trainer))

    def _loader(self, dataset: Dataset, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def _check_at_least(option: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"data option {option!r} must be >= {minimum}, got {value}")
