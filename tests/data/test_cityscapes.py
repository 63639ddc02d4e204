"""CityscapesDataModule on a tiny two-city tree with real label PNGs covering every id."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors

from ctxlit.data.cityscapes import CityscapesDataModule, label_id_to_train_id, train_class_names
from ctxlit.data.transforms import RandomScaleCrop, segmentation_train
from ctxlit.errors import DatasetError

from .conftest import CITYSCAPES_IDS, cityscapes_label, write_cityscapes_pair, write_image

# The official table (cityscapesScripts labels.py), written out so the test checks it independently.
OFFICIAL = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def cityscapes(root, **kwargs) -> CityscapesDataModule:
    kwargs.setdefault("num_workers", 0)
    return CityscapesDataModule(str(root), **kwargs)


def test_label_table_matches_the_official_one():
    lut = label_id_to_train_id()
    assert {i: int(lut[i]) for i in range(256) if lut[i] != 255} == OFFICIAL
    assert train_class_names() == NAMES


def test_layout_counts_and_metadata(cityscapes_tree):
    dm = cityscapes(cityscapes_tree)
    assert dm.num_classes == 19 and dm.class_names == NAMES and dm.ignore_index == 255
    assert len(dm.train_images) == 4 and len(dm.val_images) == 2
    assert {p.parent.name for p in dm.train_images} == {"aachen", "bochum"}
    assert dm.input_shape == (3, 512, 1024) and dm.val_batch_size == 1


def test_val_is_full_resolution_and_every_id_is_mapped(cityscapes_tree):
    dm = cityscapes(cityscapes_tree)
    dm.setup("validate")
    for i in range(2):
        image, mask = dm.val_dataset[i]
        assert image.shape == (3, 32, 64) and image.dtype == torch.uint8
        assert mask.shape == (32, 64) and mask.dtype == torch.uint8
        ids = cityscapes_label(32, 64, shift=i)
        assert set(np.unique(ids)) == set(CITYSCAPES_IDS)  # the tree covers all 34 ids and 255
        expected = np.vectorize(lambda v: OFFICIAL.get(int(v), 255))(ids)
        assert np.array_equal(mask.numpy(), expected)
    images, masks = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.shape == (1, 3, 32, 64) and images.dtype == torch.float32
    assert masks.shape == (1, 32, 64) and masks.dtype == torch.int64


def test_train_crops_keep_image_and_mask_aligned(cityscapes_tree):
    dm = cityscapes(cityscapes_tree, crop_height=24, crop_width=40, batch_size=4, min_scale=1.0, max_scale=1.0)
    dm.setup("fit")
    lut = label_id_to_train_id()
    for _ in range(20):
        image, mask = dm.train_dataset[1]
        assert image.shape == (3, 24, 40) and mask.shape == (24, 40)
        # The red channel is the label id of each pixel: after crop + flip it must still map to the mask.
        assert torch.equal(lut[image[0].long()], mask)
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 24, 40) and images.dtype == torch.uint8 and masks.shape == (4, 24, 40)


def erode(region: torch.Tensor) -> torch.Tensor:
    """Pixels of a boolean (H, W) region whose 4 neighbours are in it too."""
    inner = region.clone()
    inner[1:] &= region[:-1]
    inner[:-1] &= region[1:]
    inner[:, 1:] &= region[:, :-1]
    inner[:, :-1] &= region[:, 1:]
    return inner


def test_scale_and_padding(cityscapes_tree):
    # Half scale: a 32x64 frame becomes 16x32 inside a 24x40 crop; the rest is padding.
    image = tv_tensors.Image(torch.randint(0, 255, (3, 32, 64), dtype=torch.uint8))
    label = np.zeros((32, 64), np.uint8)
    label[:, :32] = 7  # road left, sky right: a big distinctive region
    label[:, 32:] = 23
    image[0] = torch.from_numpy(np.where(label == 7, 250, 10))
    mask = tv_tensors.Mask(label_id_to_train_id()[torch.from_numpy(label).long()])
    out_image, out_mask = RandomScaleCrop((24, 40), 0.5, 0.5)(image, mask)
    assert out_mask.shape == (24, 40) and (out_mask[16:] == 255).all() and (out_mask[:, 32:] == 255).all()
    assert (out_image[:, 16:] == torch.tensor([124, 116, 104]).view(3, 1, 1)).all()  # mean-colour padding
    assert (out_mask[:16, :16] == 0).all() and (out_mask[:16, 16:32] == 10).all()
    # Random scales 0.5-2.0 + flips: the red region still lines up with "road".
    transform = segmentation_train(24, 40)
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        red = out_image[0].float()
        for train_id, inside in ((0, lambda v: v > 180), (10, lambda v: v < 80)):  # road red, sky dark
            # Bilinear resizing blends colours up to ~scale pixels from a boundary (the mask uses
            # nearest): compare colours 2 pixels inside each region only.
            region = erode(erode(out_mask == train_id))
            if region.any():
                assert inside(red[region].mean()), (train_id, red[region].mean())
        assert set(out_mask.unique().tolist()) <= {0, 10, 255}


def test_missing_label_found_when_built(cityscapes_tree, capsys):
    write_cityscapes_pair(cityscapes_tree, "train", "bochum", 7)
    orphan = next(cityscapes_tree.glob("gtFine/train/bochum/*000007*"))
    orphan.unlink()
    with pytest.raises(DatasetError, match=r"(?s)1 Cityscapes image\(s\) without their label file.*bochum_000007_000019_leftImg8bit\.png -> .*bochum_000007_000019_gtFine_labelIds\.png"):
        cityscapes(cityscapes_tree)
    dm = cityscapes(cityscapes_tree, skip_unreadable=True)
    assert len(dm.skipped) == 1 and len(dm.train_images) == 4
    dm.setup("fit")
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out


def test_wrong_size_label_names_both_files(cityscapes_tree):
    image_path, label_path = write_cityscapes_pair(cityscapes_tree, "val", "frankfurt", 9)
    Image.fromarray(cityscapes_label(16, 64)).save(label_path)
    dm = cityscapes(cityscapes_tree)
    dm.setup("validate")
    index = dm.val_dataset.images.index(image_path)
    with pytest.raises(DatasetError, match=r"label .*frankfurt_000009_000019_gtFine_labelIds\.png is 16x64 but its image .*frankfurt_000009_000019_leftImg8bit\.png is 32x64"):
        dm.val_dataset[index]
    dm = cityscapes(cityscapes_tree, skip_unreadable=True)
    dm.setup("validate")
    with pytest.warns(UserWarning, match="skipped unreadable sample: label"):
        image, mask = dm.val_dataset[index]
    assert image.shape[1:] == mask.shape



@pytest.mark.parametrize("bad_id", [34, 200])
def test_a_label_id_outside_the_table_names_the_file(cityscapes_tree, bad_id):
    """A colour or instance PNG passed as labelIds: one error naming the file, not mIoU nan."""
    image_path, label_path = write_cityscapes_pair(cityscapes_tree, "val", "frankfurt", 8)
    label = cityscapes_label(32, 64)
    label[5, 7] = bad_id
    Image.fromarray(label).save(label_path)
    dm = cityscapes(cityscapes_tree)
    dm.setup("validate")
    index = dm.val_dataset.images.index(image_path)
    with pytest.raises(DatasetError, match=rf"label .*frankfurt_000008_000019_gtFine_labelIds\.png holds id {bad_id}, "
                                           r"which is no Cityscapes label id \(0-33, or 255 for -1\)"):
        dm.val_dataset[index]
    label[5, 7] = 255  # -1 (license plate) as uint8 is a valid id
    Image.fromarray(label).save(label_path)
    assert dm.val_dataset[index][1][5, 7] == 255


def test_corrupt_image_named(cityscapes_tree):
    image_path, _ = write_cityscapes_pair(cityscapes_tree, "train", "aachen", 5)
    image_path.write_bytes(image_path.read_bytes()[:100])
    dm = cityscapes(cityscapes_tree, batch_size=5)
    dm.setup("fit")
    with pytest.raises(DatasetError, match=r"aachen_000005_000019_leftImg8bit\.png"):
        dm.train_dataset[dm.train_dataset.images.index(image_path)]


@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda r: r / "none", r"Cityscapes root .*none does not exist; expected layout"),
        (lambda r: (write_image(r / "cs" / "leftImg8bit" / "train" / "aachen" / "a.jpg"), r / "cs")[1],
         r"Cityscapes train label folder .*gtFine/train does not exist"),
        (lambda r: ((r / "cs" / "gtFine" / "train").mkdir(parents=True), write_image(r / "cs" / "leftImg8bit" / "train" / "aachen" / "a.jpg"), r / "cs")[2],
         r"leftImg8bit/train holds no <city>/\*_leftImg8bit\.png files \(found e\.g\. a\.jpg\)"),
        (lambda r: (write_cityscapes_pair(r / "cs", "train", "aachen", 0), r / "cs")[1],
         r"Cityscapes val image folder .*leftImg8bit/val does not exist"),
    ],
    ids=["missing-root", "no-gtFine", "wrong-names", "no-val"],
)
def test_bad_layouts(tmp_path, build, pattern):
    with pytest.raises(DatasetError, match=pattern):
        cityscapes(build(tmp_path))


class TinySegmenter(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 3, padding=1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        images, masks = batch
        self.seen.append((images.dtype, masks.dtype, tuple(masks.shape)))
        return F.cross_entropy(self.conv(images), masks, ignore_index=255)

    def validation_step(self, batch, batch_idx):
        images, masks = batch
        self.log("val/loss", F.cross_entropy(self.conv(images), masks, ignore_index=255))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_training_steps_with_lightning(cityscapes_tree, tmp_path):
    dm = cityscapes(cityscapes_tree, crop_height=24, crop_width=40, batch_size=2)
    model = TinySegmenter()
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert model.seen == [(torch.float32, torch.int64, (2, 24, 40))] * 3
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def test_a_bad_validation_label_is_found_before_the_first_validation(cityscapes_tree):
    labels = sorted((cityscapes_tree / "gtFine" / "val").rglob("*_labelIds.png"))
    labels[-1].write_bytes(b"not a png")
    dm = cityscapes(cityscapes_tree, batch_size=5)
    dm.setup("fit")
    with pytest.raises(DatasetError, match=rf"cannot decode image file .*{labels[-1].name}"):
        dm.val_dataloader()
