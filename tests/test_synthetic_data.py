"""The synthetic context benchmark: deterministic, balanced, and relational by construction."""

from __future__ import annotations

import pytest
import torch

from ctxlit.data import SyntheticContextDataModule, SyntheticContextDataset
from ctxlit.data.synthetic import CLASS_NAMES, FreshSamplesSampler, glyph_bank
from ctxlit.errors import ConfigError


def test_samples_are_deterministic_per_seed_and_split():
    a = SyntheticContextDataset(16, seed=3)
    b = SyntheticContextDataset(16, seed=3)
    for i in (0, 7, 15):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and ya == yb
    other_seed = SyntheticContextDataset(16, seed=4)
    val = SyntheticContextDataset(16, seed=3, split="val")
    assert not torch.equal(a[0][0], other_seed[0][0])
    assert not torch.equal(a[0][0], val[0][0])


def test_shapes_dtype_and_index_errors():
    ds = SyntheticContextDataset(4, image_size=48, glyph_size=6)
    x, y = ds[3]
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and isinstance(y, int)
    with pytest.raises(IndexError):
        ds[-1]
    assert ds[4][0].shape == x.shape  # the stream goes on past one epoch's length
    assert len(list(ds)) == 4  # iterating gives one epoch


def test_labels_are_balanced():
    ds = SyntheticContextDataset(800, seed=0)
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    counts = torch.bincount(labels, minlength=4)
    assert counts.min() > 150, counts  # ~200 each


def test_train_stream_never_reaches_validation_or_other_seeds():
    train, val = SyntheticContextDataset(8, seed=0), SyntheticContextDataset(8, seed=0, split="val")
    # Index pairs that collided under integer seed offsets or 32-bit torch seeds.
    for i, j in ((1_000_008, 5), (2**32 + 5, 5), (2**40 + 5, 5)):
        assert not torch.equal(train[i][0], val[j][0]), (i, j)
        assert not torch.equal(train[i][0], train[j][0]), (i, j)
    other_seed = SyntheticContextDataset(8, seed=1)
    assert not torch.equal(train[2_000_003][0], other_seed[0][0])
    assert torch.equal(train[2**40 + 5][0], SyntheticContextDataset(8, seed=0)[2**40 + 5][0])


def palette_hits(pixels: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """(P, K) bool: pixel p is exactly palette colour k (cdist's matmul path is not exact)."""
    return ((pixels[:, None, :] - colours[None, :, :]).abs().amax(dim=-1) < 1e-6)


def decode_glyphs(image: torch.Tensor, size: int, glyph: int, shapes, colours) -> list[tuple[int, int]]:
    """(shape, colour) of the glyph in the left and right thirds of a noise-free image."""
    third = size // 3
    found = []
    for x0 in (0, size - third):
        pixels = image[:, :, x0 : x0 + third].reshape(3, -1).T  # (size * third, 3)
        hits = palette_hits(pixels, colours)
        colour = int(hits.sum(dim=0).argmax())
        mask = hits[:, colour].reshape(size, third).float()
        matches = {
            k for k in range(len(shapes)) for y in range(size - glyph + 1) for x in range(third - glyph + 1)
            if mask.sum() == shapes[k].sum() and torch.equal(mask[y : y + glyph, x : x + glyph], shapes[k])
        }
        assert len(matches) == 1, matches
        found.append((matches.pop(), colour))
    return found


def test_label_is_the_relation_between_the_two_glyphs():
    shapes, colours = glyph_bank(4, 4, 5)
    ds = SyntheticContextDataset(40, seed=3, noise=0.0)
    seen = set()
    for i in range(len(ds)):
        image, label = ds[i]
        (shape_a, colour_a), (shape_b, colour_b) = decode_glyphs(image, 32, 5, shapes, colours)
        assert label == 2 * (shape_a == shape_b) + (colour_a == colour_b), i
        seen.add(label)
    assert seen == {0, 1, 2, 3}


def test_glyphs_stay_in_their_thirds():
    ds = SyntheticContextDataset(32, seed=2, noise=0.0, image_size=64, glyph_size=8)
    _, colours = glyph_bank(4, 4, 8)
    for i in range(32):
        image, _ = ds[i]
        middle = image[:, :, 64 // 3 : 64 - 64 // 3].reshape(3, -1).T
        assert torch.cdist(middle, colours).min() > 1e-3  # no glyph pixel in the middle third


def test_data_module_exposes_classes_and_shape():
    dm = SyntheticContextDataModule(train_size=32, val_size=8, image_size=48, glyph_size=6, batch_size=8)
    assert dm.num_classes == 4 and dm.class_names == CLASS_NAMES
    assert dm.input_shape == (3, 48, 48)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 48, 48) and targets.dtype == torch.int64
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 8


def test_sampler_order_depends_only_on_seed_and_epoch():
    data = list(range(50))
    s1, s2 = FreshSamplesSampler(data, seed=1, fresh=False), FreshSamplesSampler(data, seed=1, fresh=False)
    s1.set_epoch(3)
    s2.set_epoch(3)
    assert list(s1) == list(s2) and sorted(s1) == data and len(s1) == 50
    s2.set_epoch(4)
    assert list(s1) != list(s2) and sorted(s2) == data  # fixed set, new order


def test_fresh_samples_every_epoch():
    sampler = FreshSamplesSampler(list(range(10)), seed=0)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(sorted(sampler))
    assert epochs == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    dm = SyntheticContextDataModule(train_size=8, val_size=4, batch_size=8)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    first = next(iter(loader))[0]
    loader.sampler.set_epoch(1)
    second = next(iter(loader))[0]
    assert not any(torch.equal(a, b) for a in first for b in second)


@pytest.mark.parametrize(
    "option, value",
    [("train_size", 0), ("num_shapes", 1), ("num_colours", 1), ("image_size", 20), ("batch_size", 0),
     ("num_workers", -1)],
)
def test_invalid_options_name_the_option(option, value):
    with pytest.raises(ConfigError, match=option):
        SyntheticContextDataModule(**{option: value})
