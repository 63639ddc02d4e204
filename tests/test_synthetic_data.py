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


def test_labels_are_balanced_and_encode_the_relation():
    ds = SyntheticContextDataset(800, seed=0)
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    counts = torch.bincount(labels, minlength=4)
    assert counts.min() > 150, counts  # ~200 each
    # Decode the relation from the pixels: find each glyph's colour in its third of the image.
    ds_clean = SyntheticContextDataset(64, seed=1, noise=0.0)
    shapes, colours = glyph_bank(4, 4, 8)
    for i in range(64):
        image, label = ds_clean[i]
        found = []
        for region in (image[:, :, : 64 // 3], image[:, :, 64 - 64 // 3 :]):
            pixels = region.reshape(3, -1).T
            dist = torch.cdist(pixels, colours)  # (pixels, colours)
            hits = (dist.min(dim=1).values < 1e-5)
            found.append(int(torch.mode(dist[hits].argmin(dim=1)).values))
        same_colour = found[0] == found[1]
        assert bool(label & 1) == same_colour, (i, label, found)


def test_glyphs_stay_in_their_thirds():
    ds = SyntheticContextDataset(32, seed=2, noise=0.0)
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
