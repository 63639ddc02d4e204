"""FoodDeliveryDataModule on tiny real trees: layouts, splits, imbalance, caching, bad input."""

from __future__ import annotations

import collections
import functools
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from ctxlit.data.sampling import TrainSampler

from ctxlit.data import FoodDeliveryDataModule
from ctxlit.errors import ConfigError, DatasetError

from .conftest import make_class_tree, write_image


def food(root, **kwargs) -> FoodDeliveryDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 4)
    return FoodDeliveryDataModule(str(root), **kwargs)


def test_presplit_layout_known_right_after_init(food_split):
    dm = food(food_split)
    # Available before setup(): LightningCLI links num_classes into the model at this point.
    assert dm.num_classes == 3 and dm.class_names == ["burger", "noodles", "salad"]
    assert dm.train_counts == [6, 4, 2] and dm.val_counts == [2, 2, 1]
    assert dm.input_shape == (3, 112, 112) and dm.presplit


def test_batches_uint8_on_host_float_normalised_after_transfer(food_split):
    dm = food(food_split)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 112, 112) and images.dtype == torch.uint8
    assert targets.dtype == torch.int64 and targets.shape == (4,)
    normed, targets2 = dm.on_after_batch_transfer((images, targets), 0)
    assert normed.dtype == torch.float32 and torch.equal(targets2, targets)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(normed, (images.float() / 255 - mean) / std, atol=1e-5)
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.shape == (4, 3, 112, 112)
    assert len(dm.val_dataloader().dataset) == 5 and len(dm.train_dataloader()) == 3  # 12 // 4, drop_last


def test_stratified_split_is_reproducible_and_covers_every_class(food_flat):
    a, b, c = food(food_flat, split_seed=1), food(food_flat, split_seed=1), food(food_flat, split_seed=2)
    assert a.train_files == b.train_files and a.val_files == b.val_files
    assert a.val_files != c.val_files
    for dm in (a, c):
        assert dm.val_counts == [2, 1, 1]  # round(0.2 * n), at least one per class
        assert dm.train_counts == [10, 5, 2]
        for train, val in zip(dm.train_files, dm.val_files):
            assert val and not set(train) & set(val)
        everything = sorted(p for split in (dm.train_files, dm.val_files) for files in split for p in files)
        assert everything == sorted(food_flat.rglob("*.jpg"))
    bigger = food(food_flat, split_seed=1, val_fraction=0.5)
    assert bigger.val_counts == [6, 3, 2]  # round(1.5) = 2 and one left for training


def test_loss_weights_and_sampler(food_flat, capsys):
    weighted = food(food_flat, balance="loss_weights")
    n, k = 17, 3
    expected = torch.tensor([n / (k * 10), n / (k * 5), n / (k * 2)])
    assert torch.allclose(weighted.class_weights, expected)
    weighted.setup("fit")
    out = capsys.readouterr().out
    assert "burger" in out and "10" in out and "total" in out and "balance=loss_weights" in out
    plain = weighted.train_dataloader().sampler
    assert isinstance(plain, TrainSampler) and plain.weights is None
    assert sorted(i % 17 for i in plain) == list(range(17))  # a permutation

    sampled = food(food_flat, balance="sampler")
    assert sampled.class_weights is None
    sampled.setup("fit")
    sampler = sampled.train_dataloader().sampler
    assert isinstance(sampler, TrainSampler) and len(sampler) == 17
    draws = collections.Counter()
    for epoch in range(200):
        sampler.set_epoch(epoch)
        draws.update(sampled.train_dataset.targets[i % 17] for i in sampler)
    shares = [draws[c] / sum(draws.values()) for c in range(3)]
    assert all(abs(s - 1 / 3) < 0.03 for s in shares), shares  # balanced although counts are 10/5/2

    assert food(food_flat).class_weights is None


def test_cache_in_memory_and_on_disk(food_split, tmp_path):
    plain = food(food_split, image_size=32, batch_size=5)
    cached = food(food_split, image_size=32, batch_size=5, cache=True)
    on_disk = food(food_split, image_size=32, batch_size=5, cache_dir=str(tmp_path / "cache"))
    for dm in (plain, cached, on_disk):
        dm.prepare_data()
        dm.setup("fit")
    assert cached.train_dataset.cache is not None and len(list((tmp_path / "cache").glob("*.npy"))) == 4
    # Val: resize shorter side to 37 then centre crop, whether the resize happened at build or per batch.
    reference = next(iter(plain.val_dataloader()))[0]
    for dm in (cached, on_disk):
        images, _ = next(iter(dm.val_dataloader()))
        assert images.dtype == torch.uint8 and torch.equal(images, reference)
        train, _ = next(iter(dm.train_dataloader()))
        assert train.shape == (5, 3, 32, 32)


@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda root: root / "nowhere", r"food dataset root .*nowhere does not exist; expected layout"),
        (lambda root: write_image(root / "file.jpg"), r"file\.jpg is not a directory"),
        (lambda root: [write_image(root / "loose" / f"{i}.jpg") for i in range(2)] and root / "loose",
         r"loose has no class folders \(it holds 2 loose files, e.g. '0.jpg'"),
        (lambda root: make_class_tree(root / "e", {"a": 3}) and (root / "e" / "empty").mkdir() or root / "e",
         r"class folder .*empty contains no images"),
        (lambda root: make_class_tree(root / "t" / "train", {"a": 3}) and root / "t", r"val folder .*t/val does not exist"),
        (lambda root: make_class_tree(root / "x" / "train", {"a": 3}) and make_class_tree(root / "x" / "val", {"b": 1})
         and root / "x", r"val has class folders missing from .*train: b"),
        (lambda root: make_class_tree(root / "one", {"a": 1, "b": 1}), r"every class has a single image"),
        (lambda root: make_class_tree(root / "n", {"a": 3}) and (root / "n" / "a" / "notes.txt").write_text("x")
         and root / "n", r"notes\.txt: not an image file .*skip_unreadable=True"),
    ],
    ids=["missing", "file", "loose-images", "empty-class", "no-val", "val-class-not-in-train", "single-images", "non-image"],
)
def test_bad_layouts_fail_at_construction(tmp_path, build, pattern):
    root = build(tmp_path)
    with pytest.raises(DatasetError, match=pattern):
        food(root)


def test_bad_options_raise_config_error(food_split):
    with pytest.raises(ConfigError, match="val_fraction"):
        food(food_split, val_fraction=1.5)
    with pytest.raises(ConfigError, match="balance"):
        food(food_split, balance="oversample")
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        food(food_split, batch_size=0)


def _corrupt(root):
    good = root / "train" / "burger" / "burger_000.jpg"
    data = good.read_bytes()
    (root / "train" / "burger" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "train" / "noodles" / "text.jpg").write_text("this is not a JPEG")
    (root / "val" / "salad" / "notes.txt").write_text("menu")


def test_corrupt_files_named_when_loaded(food_split):
    _corrupt(food_split)
    (food_split / "val" / "salad" / "notes.txt").unlink()
    dm = food(food_split, batch_size=20)
    dm.setup("fit")
    with pytest.raises(DatasetError, match=r"cannot decode image file .*(cut|text)\.jpg"):
        next(iter(dm.train_dataloader()))
    dataset = dm.train_dataset
    with pytest.raises(DatasetError, match=r"cut\.jpg.*truncated"):
        dataset[dataset.paths.index(food_split / "train" / "burger" / "cut.jpg")]


def test_skip_unreadable_counts_and_reports(food_split, capsys):
    _corrupt(food_split)
    with pytest.raises(DatasetError, match="notes.txt"):
        food(food_split)
    dm = food(food_split, skip_unreadable=True, batch_size=20)
    dm.setup("fit")
    assert len(dm.skipped) == 3
    assert sorted(p.name for p, _ in dm.skipped) == ["cut.jpg", "notes.txt", "text.jpg"]
    assert dm.train_counts == [6, 4, 2] and dm.val_counts == [2, 2, 1]
    out = capsys.readouterr().out
    assert "skipped 3 unreadable file(s)" in out and "cut.jpg" in out
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape[0] == 12


def test_two_workers_iterate_an_epoch(food_flat):
    dm = food(food_flat, num_workers=2, image_size=32, batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    seen = sum(len(t) for _, t in loader)
    assert seen == 16  # 17 training images, drop_last
    assert sum(len(t) for _, t in dm.val_dataloader()) == 4


def test_auto_workers_and_pin_memory(food_split, monkeypatch):
    import ctxlit.data.folders as folders

    monkeypatch.setattr(folders, "default_threads", lambda: 16)
    dm = FoodDeliveryDataModule(str(food_split))
    assert dm.num_workers == 8 and dm.pin_memory == torch.cuda.is_available()
    monkeypatch.setattr(folders, "default_threads", lambda: 1)
    assert FoodDeliveryDataModule(str(food_split)).num_workers == 0


def test_counts_survive_a_copy_of_the_tree(food_flat, tmp_path):
    copy = shutil.copytree(food_flat, tmp_path / "copy")
    a, b = food(food_flat, split_seed=3), food(copy, split_seed=3)
    assert [[p.name for p in f] for f in a.val_files] == [[p.name for p in f] for f in b.val_files]


def test_worker_errors_keep_the_file_name(food_split):
    _corrupt(food_split)
    (food_split / "val" / "salad" / "notes.txt").unlink()
    dm = food(food_split, num_workers=2, batch_size=20, image_size=32)
    dm.setup("fit")
    with pytest.raises(DatasetError, match=r"DataLoader worker(?s:.*)cannot decode image file .*(cut|text)\.jpg"):
        next(iter(dm.train_dataloader()))


def test_bad_validation_files_are_found_before_the_first_validation(food_split):
    """The sanity check reads two batches: every validation file's header is opened first, so a
    bad file anywhere in the split stops the run before it trains an epoch."""
    (food_split / "val" / "salad" / "empty.jpg").write_bytes(b"")
    (food_split / "val" / "noodles" / "noise.jpg").write_bytes(bytes(range(256)) * 4)
    good = food_split / "val" / "burger" / "burger_000.jpg"
    data = good.read_bytes()
    (food_split / "val" / "burger" / "cut.jpg").write_bytes(data[: len(data) // 2])  # a header, half the pixels
    dm = food(food_split, batch_size=20)
    dm.setup("fit")
    with pytest.raises(DatasetError) as error:
        dm.val_dataloader()
    message = str(error.value)
    assert ("noise.jpg" in message or "empty.jpg" in message or "cut.jpg" in message)
    assert "(and 2 more validation files)" in message and "data.init_args.skip_unreadable=true" in message
    next(iter(dm.train_dataloader()))  # training files are not opened ahead (an epoch reads them anyway)
    (food_split / "val" / "salad" / "empty.jpg").unlink()
    (food_split / "val" / "noodles" / "noise.jpg").unlink()
    dm = food(food_split, batch_size=20)
    dm.setup("fit")
    with pytest.raises(DatasetError, match=r"cut\.jpg: image file is truncated"):  # its end marker is missing
        dm.val_dataloader()
    skipping = food(food_split, skip_unreadable=True, batch_size=20)
    skipping.setup("fit")
    assert skipping.val_counts == [2, 2, 1] and sum(len(t) for _, t in skipping.val_dataloader()) == 5


def _cut_in_half(ext: str, tmp_path: Path) -> bytes:
    """A whole image file's first half: its header, part of its pixels, no end marker."""
    data = write_image(tmp_path / f"whole{ext}").read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("zz_noise.jpg", lambda tmp_path: b"\x00" * 1000, ""),
    ("zz_cut.jpg", functools.partial(_cut_in_half, ".jpg"), ": image file is truncated"),
    ("zz_cut.png", functools.partial(_cut_in_half, ".png"), ": image file is truncated"),
])
def test_fit_with_a_bad_validation_file_stops_before_training(name, content, reason, food_split, tmp_path, monkeypatch,
                                                               capsys):
    from ctxlit.fit import main

    # 6th of 6: past the sanity batches (2 + 1 prefetched); a truncated one has an intact header
    (food_split / "val" / "salad" / name).write_bytes(content(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[2] / "experiments" / "food" / "resnet18_112.yaml"
    code = main(["--config", str(config), f"--data.init_args.root={food_split}", "--data.init_args.image_size=32",
                 "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=1", "--data.init_args.num_workers=0",
                 "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options={width: 8, stem: cifar}",
                 "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.logger=false",
                 "--trainer.enable_progress_bar=false", "--checkpoint.dirpath=ckpt",
                 "--trainer.callbacks+=tests.data.test_food.StepsAtFailure", "--trainer.callbacks.path=steps.txt"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: cannot decode image file ") and f"{name}{reason}" in err
    assert (tmp_path / "steps.txt").read_text() == "0"  # not a step was trained


class StepsAtFailure(pl.Callback):
    """Writes the number of optimizer steps trained when the fit failed to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_exception(self, trainer, pl_module, exception) -> None:
        Path(self.path).write_text(str(trainer.global_step))
