"""ImageNet (ILSVRC-2012) classification in the standard class-folder layout.

::

    root/train/<wnid>/*.JPEG
    root/val/<wnid>/*.JPEG
    root/LOC_synset_mapping.txt   (optional: "n01440764 tench, Tinca tinca" per line)

Train: RandomResizedCrop(224, scale=(0.08, 1)) + horizontal flip. Val: resize the shorter side
to 256, centre crop 224. ``class_names`` are the wnids (folder names, sorted, so class ids match
torchvision's ``ImageFolder`` and pretrained checkpoints); ``human_names`` maps them to words
when a synset mapping file is found.

The validation images as distributed (50,000 files in one folder) must first be moved into
``val/<wnid>/`` folders (e.g. with ``LOC_val_solution.csv`` or the usual ``valprep.sh``).
"""

from __future__ import annotations

from pathlib import Path

from ctxlit.data.folders import ClassificationFolderDataModule
from ctxlit.data.scan import class_folders, require_dir, scan_class_folders
from ctxlit.errors import DatasetError

LAYOUT = """  root/train/<wnid>/*.JPEG
  root/val/<wnid>/*.JPEG   (validation images sorted into wnid folders, e.g. by LOC_val_solution.csv)"""

SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")


def read_synset_mapping(path: Path) -> dict[str, str]:
    """``wnid -> words`` from a ``LOC_synset_mapping.txt``-style file (``<wnid> <words>`` per line)."""
    mapping: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not words:
            raise DatasetError(f"{path}, line {number}: expected '<wnid> <words>', got {line.strip()!r}")
        mapping[wnid] = words.strip()
    return mapping


class ImageNetDataModule(ClassificationFolderDataModule):
    """ImageNet in ``root/{train,val}/<wnid>/``; see the module docstring."""

    root_name = "ImageNet root"
    layout = LAYOUT

    def __init__(self, root: str, batch_size: int = 256, **kwargs) -> None:
        """
        Args:
            root: the folder holding ``train/`` and ``val/``.
            batch_size: training images per batch (per device).
            kwargs: the options of :class:`ClassificationFolderDataModule` (image_size 224,
                resize_size 256, min_scale 0.08, hflip, cache) and :class:`FolderDataModule`.
        """
        super().__init__(root, batch_size=batch_size, **kwargs)
        self.save_hyperparameters()
        for split in ("train", "val"):
            require_dir(self.root / split, f"ImageNet {split} folder", LAYOUT)
        classes = class_folders(self.root / "train", LAYOUT)
        val_classes = class_folders(self.root / "val", LAYOUT)
        if set(val_classes) != set(classes):
            missing = sorted(set(classes) - set(val_classes))
            extra = sorted(set(val_classes) - set(classes))
            raise DatasetError(
                f"{self.root / 'val'} and {self.root / 'train'} must hold the same wnid folders; "
                f"missing from val: {', '.join(missing[:5]) or 'none'}{' ...' if len(missing) > 5 else ''}; "
                f"only in val: {', '.join(extra[:5]) or 'none'}{' ...' if len(extra) > 5 else ''}"
            )
        train = scan_class_folders(self.root / "train", classes, LAYOUT, self.skip_unreadable, self.skipped)
        val = scan_class_folders(self.root / "val", classes, LAYOUT, self.skip_unreadable, self.skipped)
        self._set_samples(classes, train, val)
        self.human_names: dict[str, str] = {}
        for name in SYNSET_FILES:
            if (self.root / name).is_file():
                self.human_names = read_synset_mapping(self.root / name)
                break

    @property
    def class_descriptions(self) -> list[str]:
        """Human-readable name per class id (the wnid itself where no mapping is known)."""
        return [self.human_names.get(wnid, wnid) for wnid in self.class_names]
