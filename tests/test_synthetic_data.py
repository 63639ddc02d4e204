"""The synthetic context benchmark: deterministic, balanced, and out of a plain CNN's reach by construction."""

from __future__ import annotations

import pytest
import torch

from ctxlit.backbones import build_backbone
from ctxlit.data import SyntheticContextDataModule, SyntheticContextDataset
from ctxlit.data.sampling import TrainSampler
from ctxlit.data.synthetic import glyph_bank
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
    ds = SyntheticContextDataset(4, image_size=(20, 48), glyph_size=6)
    x, y = ds[3]
    assert x.shape == (3, 20, 48) and x.dtype == torch.float32 and isinstance(y, int)
    with pytest.raises(IndexError):
        ds[-1]
    assert ds[4][0].shape == x.shape  # the stream goes on past one epoch's length
    assert len(list(ds)) == 4  # iterating gives one epoch


def test_labels_are_balanced():
    ds = SyntheticContextDataset(800, seed=0)
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    counts = torch.bincount(labels, minlength=4)
    assert len(counts) == 4 and counts.min() > 150, counts  # ~200 each


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


def decode(image: torch.Tensor, glyph: int, margin: int, shapes, colours) -> tuple[int, dict[int, tuple[int, int]]]:
    """From a noise-free image: the cue colour, and {colour: (shape, top row)} of the candidates."""
    _, height, width = image.shape
    band = glyph + margin
    hits = palette_hits(image.reshape(3, -1).T, colours).reshape(height, width, len(colours))
    assert not hits[:, band : width - band].any()  # nothing but background between the ends
    cue_counts = hits[:, :band].sum(dim=(0, 1))
    assert sorted(cue_counts.tolist()) == [0, height * glyph]  # one full-height bar
    cue_columns = hits[:, :band].any(dim=2).all(dim=0).nonzero().flatten()
    assert cue_columns.numel() == glyph and int(cue_columns[-1] - cue_columns[0]) == glyph - 1
    candidates = {}
    for colour in range(len(colours)):
        mask = hits[:, width - band :, colour].float()
        matches = [
            (k, int(y)) for k in range(len(shapes)) for y in range(height - glyph + 1) for x in range(band - glyph + 1)
            if mask.sum() == shapes[k].sum() and torch.equal(mask[y : y + glyph, x : x + glyph], shapes[k])
        ]
        assert len({k for k, _ in matches}) == 1, (colour, matches)
        candidates[colour] = matches[0]
    return int(cue_counts.argmax()), candidates


def test_label_is_the_shape_of_the_candidate_in_the_cue_colour():
    shapes, colours = glyph_bank(4, 2, 5)
    ds = SyntheticContextDataset(60, seed=3, noise=0.0)
    seen, cues, same_shape = set(), set(), 0
    for i in range(len(ds)):
        image, label = ds[i]
        cue, candidates = decode(image, 5, 3, shapes, colours)
        assert label == candidates[cue][0], i
        # One candidate in each half (16 rows: tops 0-3 and 8-11), either colour on top.
        tops = sorted(y for _, y in candidates.values())
        assert tops[0] <= 3 and 8 <= tops[1] <= 11, tops
        seen.add(label)
        cues.add(cue)
        same_shape += candidates[0][0] == candidates[1][0]
    assert seen == {0, 1, 2, 3} and cues == {0, 1}
    assert 5 <= same_shape <= 30  # shapes drawn independently: ~1/4 of the time equal


def test_separation_grows_with_width():
    assert SyntheticContextDataset(1).separation == 49
    assert SyntheticContextDataset(1, image_size=(16, 96), glyph_size=4, margin=0).separation == 89


def receptive_columns(network: torch.nn.Module, size: tuple[int, int]) -> list[tuple[int, int]]:
    """(first, last) input column each unit of the last feature map depends on."""
    x = torch.rand(1, 3, *size, requires_grad=True)
    out = network(x)[-1]
    spans = []
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
            cols = grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
            spans.append((int(cols.min()), int(cols.max())))
    return spans


def test_the_plain_default_network_never_sees_cue_and_candidates_together():
    """The benchmark's premise, on the default backbone: no unit of ResNet-10 (cifar stem) spans
    both ends, and the GC block of the default experiment makes every unit span them."""
    ds = SyntheticContextDataset(1)
    cue_last, candidates_first = 3 + 5 - 1, 64 - 5 - 3
    assert candidates_first - cue_last == ds.separation
    plain = build_backbone("resnet10", width=16, stem="cifar").eval()
    with torch.no_grad():  # positive weights: every path is open, so the gradient covers the whole receptive field
        for module in plain.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
    spans = receptive_columns(plain, (16, 64))
    assert max(last - first + 1 for first, last in spans) == 49  # the theoretical receptive field
    assert not any(first <= cue_last and last >= candidates_first for first, last in spans)
    with_gc = build_backbone(
        "resnet10", width=16, stem="cifar", plugins=[{"block": "gc", "stages": [2, 3, 4]}]
    ).eval()
    with torch.no_grad():  # GCNet zero-initialises its last transform conv: start it as a trained block would be
        for param in with_gc.parameters():
            if param.dim() > 1 and not param.any():
                param.normal_()
    assert all(span == (0, 63) for span in receptive_columns(with_gc, (16, 64)))


def test_data_module_exposes_classes_and_shape():
    dm = SyntheticContextDataModule(train_size=32, val_size=8, image_size=(20, 48), glyph_size=6, batch_size=8)
    assert dm.num_classes == 4 and dm.class_names == ["shape_0", "shape_1", "shape_2", "shape_3"]
    assert dm.input_shape == (3, 20, 48)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 20, 48) and targets.dtype == torch.int64
    assert SyntheticContextDataModule(num_shapes=6).num_classes == 6
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 8


def test_sampler_order_depends_only_on_seed_and_epoch():
    data = list(range(50))
    s1, s2 = TrainSampler(data, seed=1), TrainSampler(data, seed=1)
    s1.set_epoch(3)
    s2.set_epoch(3)
    assert list(s1) == list(s2) and sorted(s1) == data and len(s1) == 50
    s2.set_epoch(4)
    assert list(s1) != list(s2) and sorted(s2) == data  # fixed set, new order


def test_fresh_samples_every_epoch():
    sampler = TrainSampler(list(range(10)), seed=0, stream=True)
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
    "option, value, message",
    [("train_size", 0, "data: train_size must be >= 1; got 0"), ("num_shapes", 1, "data: num_shapes must be >= 2"),
     ("margin", -1, "data: margin must be >= 0"), ("image_size", (9, 64), r"data: image_size height \(2 x glyph_size\) must be >= 10"),
     ("image_size", (16, 16), r"data: image_size width .* must be >= 17; got 16"),
     ("image_size", (64,), r"'image_size' must be \[height, width\], got \(64,\)"),
     ("batch_size", 0, "data: batch_size must be >= 1"), ("num_workers", -1, "data: num_workers must be >= 0")],
)
def test_invalid_options_name_the_option(option, value, message):
    with pytest.raises(ConfigError, match=message):
        SyntheticContextDataModule(**{option: value})
