"""ImageNetDataModule on a tiny real train/val tree."""

from __future__ import annotations

import pytest
import torch

from ctxlit.data import ImageNetDataModule
from ctxlit.data.imagenet import read_synset_mapping
from ctxlit.errors import DatasetError

from .conftest import make_class_tree, write_image


def test_layout_names_and_counts(imagenet_tree):
    dm = ImageNetDataModule(str(imagenet_tree), num_workers=0)
    assert dm.class_names == ["n01440764", "n01443537", "n01484850"] and dm.num_classes == 3
    assert dm.class_descriptions[0] == "tench, Tinca tinca"
    assert dm.human_names["n01484850"].startswith("great white shark")
    assert dm.train_counts == [6, 6, 6] and dm.val_counts == [2, 2, 2]
    assert dm.input_shape == (3, 224, 224) and dm.resize_size == 256 and dm.batch_size == 256


def test_default_transforms_shapes(imagenet_tree):
    dm = ImageNetDataModule(str(imagenet_tree), num_workers=0, batch_size=3)
    dm.setup("fit")
    image, target = dm.train_dataset[0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.uint8 and target == 0
    val_image, _ = dm.val_dataset[0]
    assert val_image.shape == (3, 224, 224)
    # Val is deterministic (resize 256 + centre crop); train is random (crop + flip).
    assert torch.equal(val_image, dm.val_dataset[0][0])
    assert any(not torch.equal(dm.train_dataset[0][0], dm.train_dataset[0][0]) for _ in range(5))
    images, targets = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.shape == (3, 3, 224, 224) and images.dtype == torch.float32 and targets.dtype == torch.int64


def test_val_centre_crop_matches_resize_256_crop_224(tmp_path):
    root = tmp_path / "in"
    for split in ("train", "val"):
        write_image(root / split / "n0" / "a.JPEG", 300, 600, seed=1)
    dm = ImageNetDataModule(str(root), num_workers=0)
    dm.setup("validate")
    from torchvision.transforms.v2 import functional as F

    from ctxlit.data.decode import decode_rgb

    expected = F.center_crop(F.resize(decode_rgb(root / "val" / "n0" / "a.JPEG"), 256, antialias=True), 224)
    assert torch.equal(dm.val_dataset[0][0], expected)


def test_flat_val_folder_is_explained(tmp_path):
    root = tmp_path / "in"
    make_class_tree(root / "train", {"n0": 2})
    for i in range(3):
        write_image(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(DatasetError, match=r"(?s)val has no class folders \(it holds 3 loose files.*root/val/<wnid>/\*\.JPEG.*LOC_val_solution"):
        ImageNetDataModule(str(root), num_workers=0)


def test_missing_and_mismatched_splits(tmp_path):
    with pytest.raises(DatasetError, match=r"ImageNet root .*nothing does not exist"):
        ImageNetDataModule(str(tmp_path / "nothing"))
    make_class_tree(tmp_path / "a" / "train", {"n0": 2, "n1": 2})
    with pytest.raises(DatasetError, match=r"ImageNet val folder .*a/val does not exist"):
        ImageNetDataModule(str(tmp_path / "a"))
    make_class_tree(tmp_path / "a" / "val", {"n0": 1, "n2": 1})
    with pytest.raises(DatasetError, match=r"missing from val: n1; only in val: n2"):
        ImageNetDataModule(str(tmp_path / "a"))


def test_bad_synset_file(imagenet_tree):
    (imagenet_tree / "LOC_synset_mapping.txt").write_text("n01440764 tench\nbroken\n")
    with pytest.raises(DatasetError, match=r"LOC_synset_mapping\.txt, line 2"):
        read_synset_mapping(imagenet_tree / "LOC_synset_mapping.txt")
