"""Tiny datasets in the real on-disk layouts, written as real JPEG/PNG files with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Each class gets a distinctive dominant colour so a tiny network can learn it in a few steps.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 210, 40), (200, 60, 200)]


def write_image(path: Path, height: int = 48, width: int = 64, colour=(128, 128, 128), seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    array = np.clip(np.array(colour)[None, None, :] + rng.integers(-30, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path)
    return path


def make_class_tree(root: Path, counts: dict[str, int], ext: str = ".jpg", size=(48, 64)) -> Path:
    """``root/<class>/<i><ext>`` with ``counts[class]`` images each."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / name / f"{name}_{i:03d}{ext}", *size, colour=COLOURS[c % len(COLOURS)], seed=100 * c + i)
    return root


@pytest.fixture
def food_flat(tmp_path: Path) -> Path:
    """An imbalanced single-folder food set: 12 / 6 / 3 images."""
    return make_class_tree(tmp_path / "food", {"burger": 12, "noodles": 6, "salad": 3})


@pytest.fixture
def food_split(tmp_path: Path) -> Path:
    root = tmp_path / "food_split"
    make_class_tree(root / "train", {"burger": 6, "noodles": 4, "salad": 2})
    make_class_tree(root / "val", {"burger": 2, "noodles": 2, "salad": 1})
    return root


@pytest.fixture
def imagenet_tree(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    wnids = {"n01440764": 6, "n01443537": 6, "n01484850": 6}
    make_class_tree(root / "train", wnids, ext=".JPEG", size=(60, 80))
    make_class_tree(root / "val", {k: 2 for k in wnids}, ext=".JPEG", size=(60, 80))
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
        "n01484850 great white shark, white shark, man-eater\n"
    )
    return root


def pytest_collection_modifyitems(items):
    # torchvision 0.29 deprecates its image codecs (superseded by torchcodec); they are still what we use.
    for item in items:
        if "tests/data/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"))


# Cityscapes: label ids 0..33, plus 255 (-1, license plate, as uint8), which maps to ignore.
# Any other id is refused (tests/data/test_cityscapes.py).
CITYSCAPES_IDS = list(range(34)) + [255]


def cityscapes_label(height: int = 32, width: int = 64, shift: int = 0) -> np.ndarray:
    """4x4 blocks cycling through every id in ``CITYSCAPES_IDS``."""
    yy, xx = np.mgrid[0:height, 0:width]
    block = (yy // 4) * (width // 4) + xx // 4 + shift
    return np.array(CITYSCAPES_IDS, dtype=np.uint8)[block % len(CITYSCAPES_IDS)]


def cityscapes_image(label: np.ndarray) -> np.ndarray:
    """An image that encodes its label id in the red channel (PNG keeps it exact)."""
    return np.stack([label, 255 - label, np.full_like(label, 128)], axis=-1)


def write_cityscapes_pair(root: Path, split: str, city: str, frame: int, height=32, width=64, label=None) -> tuple[Path, Path]:
    name = f"{city}_{frame:06d}_000019"
    label = cityscapes_label(height, width, shift=frame) if label is None else label
    image_path = root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
    label_path = root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png"
    for path, array in ((image_path, cityscapes_image(label)), (label_path, label)):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
    return image_path, label_path


@pytest.fixture
def cityscapes_tree(tmp_path: Path) -> Path:
    """Two train cities (2 frames each) and one val city (2 frames), 32x64 frames."""
    root = tmp_path / "cityscapes"
    for city in ("aachen", "bochum"):
        for frame in range(2):
            write_cityscapes_pair(root, "train", city, frame)
    for frame in range(2):
        write_cityscapes_pair(root, "val", "frankfurt", frame)
    return root
