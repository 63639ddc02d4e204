"""Synthetic context benchmark: a cue at one end of the image says which glyph at the other end
is the answer.

Each image is a strip of tinted noise, 3 x H x W (default 16 x 64)::

    +---+---------------------------------------------------+---+
    | c |                                                   | A |   A, B: two candidate glyphs,
    | u |        background only (49 columns, by default)   |   |   one drawn in each cue colour
    | e |                                                   | B |
    +---+---------------------------------------------------+---+

- the *cue*: a full-height bar, ``glyph_size`` columns wide, in one of two colours (red or
  cyan), starting in one of the first ``margin + 1`` columns;
- two *candidates* in the last ``glyph_size + margin`` columns, one in the top half and one in
  the bottom half: glyphs whose shape is one of ``num_shapes`` fixed random masks, one drawn
  in each cue colour (which one is on top is random).

The label is the shape of the candidate whose colour matches the cue (``num_shapes`` classes).

Why a context block helps, by construction. A plain CNN ends in global average pooling and a
linear classifier, so its logits are a sum over output units. When no unit's receptive field
spans both ends (with the defaults the cue's last column and the candidates' first are 49
columns apart, and ResNet-10 with the ``cifar`` stem sees 49 x 49 pixels:
``tests/test_synthetic_data.py`` checks it on the real backbone), the logits split into
``u(cue side) + v(candidate side)``. Take the four images that differ only in the cue colour
and in which of shapes a, b the red candidate wears: reading both cues right with red = a
needs ``d[a] > d[b]`` for ``d = u(red) - u(cyan)``, and with red = b needs ``d[b] > d[a]``,
so at most three of the four are right and such a network scores at most ``1/4 + 3/4 * 3/4
= 13/16`` (the 1/4: both candidates share a shape). In practice it reads the two shapes and
guesses between them: ``1/4 + 3/4 * 1/2 = 0.625``. A block that mixes a global summary back
into every position (GC, SE, Non-local, GloRe, SK's global attention, ...) lets the candidate
side see the cue, and a network with one can reach 100%. The cue is a large bar so that it
dominates any global summary: with a glyph-sized cue, GC sometimes stayed on the 0.625
plateau for the whole default budget.

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
from torch.utils.data import DataLoader, Dataset

from ctxlit.data.sampling import ResumableTrainData, evaluation_sampler
from ctxlit.data.scan import report
from ctxlit.errors import ConfigError
from ctxlit.utils.checks import check_at_least

# The glyph bank defines the task, so it is fixed across data seeds.
_GLYPH_BANK_SEED = 20190425
_SPLITS = ("train", "val")
_CUE_COLOURS = 2


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
    # Evenly spaced hues keep colours distinguishable whatever their number (2: red and cyan).
    hues = torch.arange(num_colours, dtype=torch.float32) / num_colours
    phase = torch.tensor([0.0, 1.0 / 3.0, 2.0 / 3.0])
    colours = torch.cos(2 * math.pi * (hues[:, None] - phase[None, :]))
    return shapes, colours


def class_names(num_shapes: int) -> list[str]:
    return [f"shape_{k}" for k in range(num_shapes)]


class SyntheticContextDataset(Dataset):
    """Deterministic samples of the cue-and-candidates task; item = (image, label).

    Sample ``i`` of a split is defined for every ``i >= 0`` (an endless stream); ``length`` is
    how many make up one epoch. The training sampler (:class:`ctxlit.data.sampling.TrainSampler`
    with ``stream=True``) reads a new stretch of the stream every epoch, so a network cannot
    memorise its training set. ``image_size`` is ``(height, width)``.
    """

    def __init__(
        self,
        length: int,
        *,
        split: str = "train",
        seed: int = 0,
        image_size: tuple[int, int] = (16, 64),
        glyph_size: int = 5,
        margin: int = 3,
        num_shapes: int = 4,
        noise: float = 0.3,
    ) -> None:
        self.length = length
        self.seed, self.split = seed, split
        self.height, self.width = image_size
        self.glyph_size = glyph_size
        self.margin = margin
        self.noise = noise
        self.shapes, self.colours = glyph_bank(num_shapes, _CUE_COLOURS, glyph_size)

    @property
    def separation(self) -> int:
        """Columns from the cue's last pixel to the candidates' first: a unit needs a receptive
        field wider than this to see both."""
        return self.width - 2 * (self.glyph_size + self.margin) + 1

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return (self[i] for i in range(self.length))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            raise IndexError(index)
        rng = sample_rng(self.seed, self.split, index)
        h, w, g, m = self.height, self.width, self.glyph_size, self.margin
        cue = int(rng.integers(_CUE_COLOURS))
        shapes = rng.integers(len(self.shapes), size=2)  # of the top and the bottom candidate
        top_colour = int(rng.integers(_CUE_COLOURS))
        colours = (top_colour, 1 - top_colour)
        label = int(shapes[colours.index(cue)])

        tint = (rng.random((3, 1, 1)) - 0.5) * 0.4
        image = torch.from_numpy((tint + self.noise * rng.standard_normal((3, h, w))).astype(np.float32))
        x = int(rng.integers(0, m + 1))
        image[:, :, x : x + g] = self.colours[cue][:, None, None]  # the cue bar, full height
        half = h // 2
        tops = (int(rng.integers(0, half - g + 1)), half + int(rng.integers(0, h - half - g + 1)))
        for shape, colour, y in zip(shapes, colours, tops):
            self._draw(image, y, w - g - int(rng.integers(0, m + 1)), self.shapes[int(shape)], colour)
        return image, label

    def _draw(self, image: torch.Tensor, y: int, x: int, mask: torch.Tensor, colour: int) -> None:
        """Paint ``mask`` (g, g) in palette colour ``colour`` with its top-left corner at (y, x)."""
        g = self.glyph_size
        patch = image[:, y : y + g, x : x + g]
        image[:, y : y + g, x : x + g] = patch * (1 - mask) + self.colours[colour][:, None, None] * mask


class SyntheticContextDataModule(ResumableTrainData, pl.LightningDataModule):
    """The built-in benchmark: needs no data on disk, runs on a laptop CPU in minutes.

    Args:
        train_size: training samples per epoch.
        fresh_samples: every epoch draws new training samples from the endless stream (the
            default: the benchmark then measures generalisation, not memorisation); false
            reuses the same ``train_size`` samples every epoch.
        val_size: validation samples (a disjoint random stream).
        seed: data seed; samples depend only on it and their index.
        image_size: ``[height, width]`` in pixels. The width sets how far apart cue and
            candidates are (``width - 2 * (glyph_size + margin) + 1`` columns, 49 by default).
        glyph_size: side of a candidate glyph, and width of the cue bar, in pixels.
        margin: how many columns the cue and the candidates may wander in from their edges.
        num_shapes: size of the glyph bank, which is the number of classes (at least 2).
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
        image_size: tuple[int, int] = (16, 64),
        glyph_size: int = 5,
        margin: int = 3,
        num_shapes: int = 4,
        noise: float = 0.3,
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if len(tuple(image_size)) != 2:
            raise ConfigError(f"data option 'image_size' must be [height, width], got {image_size!r}")
        height, width = image_size
        check_at_least("seed", seed, 0, owner="data")
        check_at_least("train_size", train_size, 1, owner="data")
        check_at_least("val_size", val_size, 1, owner="data")
        check_at_least("num_shapes", num_shapes, 2, owner="data")
        check_at_least("glyph_size", glyph_size, 2, owner="data")
        check_at_least("margin", margin, 0, owner="data")
        # Two candidates stacked in the two halves; cue and candidates in separate columns.
        check_at_least("image_size", height, 2 * glyph_size, owner="data", what="height (2 x glyph_size)")
        check_at_least("image_size", width, 2 * (glyph_size + margin) + 1, owner="data", what="width (2 x (glyph_size + margin) + 1)")
        check_at_least("batch_size", batch_size, 1, owner="data")
        check_at_least("num_workers", num_workers, 0, owner="data")
        self.save_hyperparameters()
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.fresh_samples = fresh_samples
        options = dict(seed=seed, image_size=(height, width), glyph_size=glyph_size, margin=margin,
                       num_shapes=num_shapes, noise=noise)
        self.train_set = SyntheticContextDataset(train_size, split="train", **options)
        self.val_set = SyntheticContextDataset(val_size, split="val", **options)

    @property
    def num_classes(self) -> int:
        return self.hparams.num_shapes

    @property
    def class_names(self) -> list[str]:
        return class_names(self.hparams.num_shapes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, *self.hparams.image_size)

    def train_dataloader(self) -> DataLoader:
        # Epoch e reads stream indices e*N .. e*N + N-1 (the same N with fresh_samples=false),
        # in an order set by (seed, e).
        sampler = self.train_sampler_for(self.train_set, seed=self.seed, batch_size=self.batch_size,
                                         stream=self.fresh_samples)
        return self._loader(self.train_set, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, sampler=evaluation_sampler(self.val_set, self.trainer))

    def test_dataloader(self) -> DataLoader:
        report(f"[ctxlit] {type(self).__name__} has no test split: testing on the validation split")
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The validation split, in order (``predict_names()`` names its samples)."""
        return self.val_dataloader()

    def predict_names(self) -> list[str]:
        return [f"val/{i}" for i in range(len(self.val_set))]

    def _loader(self, dataset: Dataset, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
