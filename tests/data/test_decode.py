"""Decoding: every colour mode arrives as 3-channel RGB uint8; bad files name themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ctxlit.data.cache import ResizedImageCache
from ctxlit.data.decode import decode_label, decode_rgb
from ctxlit.errors import DatasetError

from .conftest import write_image


def _reference(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


@pytest.mark.parametrize(
    "name, mode",
    [("rgb.jpg", "RGB"), ("gray.jpg", "L"), ("gray.png", "L"), ("rgba.png", "RGBA"), ("cmyk.jpg", "CMYK"),
     ("palette.png", "P"), ("gray_alpha.png", "LA"), ("rgb.bmp", "RGB"), ("rgb.tiff", "RGB"), ("rgb.webp", "RGB")],
)
def test_every_mode_decodes_to_rgb_uint8(tmp_path, name, mode):
    path = write_image(tmp_path / name, 20, 30, colour=(200, 80, 30), mode=mode)
    image = decode_rgb(path)
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    reference = _reference(path)
    # Same pixels as PIL's RGB conversion (JPEG decoders may differ by rounding only).
    assert np.abs(image.numpy().astype(int) - reference.astype(int)).max() <= (3 if name.endswith(".jpg") else 0)
    if mode in ("L", "LA"):
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_cmyk_colours_survive(tmp_path):
    path = write_image(tmp_path / "cmyk.jpg", 16, 16, colour=(220, 40, 40), mode="CMYK")
    mean = decode_rgb(path).float().mean(dim=(1, 2))
    assert mean[0] > 150 and mean[1] < 100 and mean[2] < 100  # still red, not inverted


def test_16bit_png_keeps_the_high_byte(tmp_path):
    array = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "g16.png")
    image = decode_rgb(tmp_path / "g16.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert torch.equal(image[0], torch.from_numpy((array >> 8).astype(np.uint8)))


def test_truncated_and_non_image_files_are_named(tmp_path):
    good = write_image(tmp_path / "good.jpg", 40, 40)
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"cut\.jpg.*truncated"):
        decode_rgb(tmp_path / "cut.jpg")
    with pytest.raises(DatasetError, match=r"cannot decode image file .*text\.jpg"):
        decode_rgb(tmp_path / "text.jpg")
    with pytest.raises(DatasetError, match=r"empty\.png is empty"):
        decode_rgb(tmp_path / "empty.png")
    with pytest.raises(DatasetError, match=r"cannot read image file .*missing\.jpg"):
        decode_rgb(tmp_path / "missing.jpg")


def test_label_must_be_single_channel(tmp_path):
    Image.fromarray(np.full((4, 6), 7, np.uint8)).save(tmp_path / "ids.png")
    write_image(tmp_path / "colour.png", 4, 6)
    assert decode_label(tmp_path / "ids.png").shape == (4, 6)
    with pytest.raises(DatasetError, match=r"colour\.png has mode RGB; expected a single-channel"):
        decode_label(tmp_path / "colour.png")


@pytest.mark.parametrize("on_disk", [False, True])
def test_resized_cache_shorter_side_and_reuse(tmp_path, on_disk):
    paths = [write_image(tmp_path / f"{i}.png", 40 + 10 * i, 60, seed=i) for i in range(3)]
    cache_dir = tmp_path / "cache" if on_disk else None
    cache = ResizedImageCache.build(paths, 32, cache_dir)
    assert [tuple(cache[i].shape) for i in range(3)] == [(3, 32, 48), (3, 32, 38), (3, 32, 32)]
    assert all(cache[i].dtype == torch.uint8 for i in range(3))
    if on_disk:
        files = sorted(p.name for p in (tmp_path / "cache").iterdir())
        assert len(files) == 2 and all(f.startswith("resized32-") for f in files)
        again = ResizedImageCache.build(paths, 32, cache_dir)
        assert isinstance(again.buffer, np.memmap)
        assert all(torch.equal(again[i], cache[i]) for i in range(3))
        write_image(paths[0], 44, 60, seed=9)  # a changed file gives a new cache key
        ResizedImageCache.build(paths, 32, cache_dir)
        assert len(list((tmp_path / "cache").iterdir())) == 4


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 30, 3), np.uint8)
    array[:, :10] = (255, 0, 0)  # red band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(array).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = decode_rgb(tmp_path / "phone.jpg")
    assert image.shape == (3, 30, 20)  # displayed upright: portrait
    assert image[0, :10].float().mean() > 200 and image[0, -10:].float().mean() < 50  # red band now on top
