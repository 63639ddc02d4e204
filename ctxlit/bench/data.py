"""``python -m ctxlit.bench data``: input pipelines' images/s against a PIL reference.

Each ctxlit pipeline (the real data module's DataLoader, plus the normalisation it does on the
device, here on the CPU) is timed next to the plain reference a PyTorch user would write for
the same output: PIL decode, torchvision v1 transforms, ``ToTensor`` + ``Normalize`` in the
workers. Both run in the same process, on the same files, with the same workers and batch size;
the table shows images/s and the ratio. The first batch (worker start-up) is not timed; each
pipeline and its reference alternate ``--repeats`` times and the best epoch of each counts.

Without ``--root`` a dataset of synthetic photos (``--image-size``, default 500x375 JPEG, about
the size of ImageNet / delivery photos) is written to a temporary folder in the class-folder
layout ``train/<class>/`` + ``val/<class>/``, which serves the food and ImageNet pipelines, plus
a few Cityscapes-sized PNG frames with label PNGs. ``--root`` points at an existing
``train/<class>`` + ``val/<class>`` tree instead (and ``--cityscapes-root`` at Cityscapes).

Example: ``python -m ctxlit.bench data --images 512 --out bench-results/data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
QUICK_NOTE = (
    "--quick checks that every pipeline runs: 160x120 photos and 256x128 Cityscapes frames, no "
    "workers, one repeat, one or two timed batches per pipeline. Its ratios are not comparable "
    "with a full run: fixed per-batch costs dominate such small images (issue 13 saw Cityscapes "
    "at 0.79x its PIL reference here and 1.95x at full size with 2 workers). Compare pipelines "
    "with the default sizes and workers."
)


# --------------------------------------------------------------------------------------------
# Synthetic data


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour gradients, a few blobs and sensor-like noise: JPEG sizes like real photos."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
        image[..., c] = 128 + 90 * np.sin(fx * xx + fy * yy + phase)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(10, min(height, width) / 3)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        image[blob] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 12, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def make_classification_tree(root: Path, images: int, classes: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``root/{train,val}/<class>/*.jpg`` with ``images`` training and ``images // 4`` val photos."""
    rng = np.random.default_rng(seed)
    width, height = size
    for split, count in (("train", images), ("val", max(classes, images // 4))):
        for i in range(count):
            folder = root / split / f"class{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_photo(rng, height, width)).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def make_cityscapes_tree(root: Path, frames: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``frames`` train frames and one val frame (PNG) with label-id PNGs of 0..33 regions."""
    rng = np.random.default_rng(seed)
    width, height = size
    for split, count in (("train", frames), ("val", 1)):
        for i in range(count):
            name = f"city_{i:06d}_000019"
            image = _photo(rng, height, width)
            yy, xx = np.mgrid[0:height, 0:width]
            label = ((yy * 8 // height) * 8 + xx * 8 // width + i) % 34
            for sub, suffix, array in (("leftImg8bit", "_leftImg8bit.png", image), ("gtFine", "_gtFine_labelIds.png", label.astype(np.uint8))):
                folder = root / sub / split / "city"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / f"{name}{suffix}", compress_level=1)
    return root


# --------------------------------------------------------------------------------------------
# References: what one would write with PIL and torchvision's v1 transforms


def reference_classification(root: Path, train: bool, image_size: int, resize_size: int, min_scale: float) -> Dataset:
    from torchvision import datasets, transforms

    if train:
        steps = [transforms.RandomResizedCrop(image_size, scale=(min_scale, 1.0)), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(resize_size), transforms.CenterCrop(image_size)]
    transform = transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return datasets.ImageFolder(str(root / ("train" if train else "val")), transform=transform)


class ReferenceCityscapes(Dataset):
    """PIL: resize the whole frame by a random scale, pad, crop, flip; ToTensor + Normalize."""

    def __init__(self, images: list[Path], labels: list[Path], crop: tuple[int, int]) -> None:
        from torchvision import transforms

        from ctxlit.data.cityscapes import label_id_to_train_id

        self.images, self.labels, self.crop = images, labels, crop
        self.lut = label_id_to_train_id().numpy()
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from torchvision.transforms import functional as TF

        image = Image.open(self.images[i]).convert("RGB")
        label = Image.open(self.labels[i])
        scale = random.uniform(0.5, 2.0)
        size = (round(image.height * scale), round(image.width * scale))
        image, label = TF.resize(image, size, Image.BILINEAR), TF.resize(label, size, Image.NEAREST)
        ch, cw = self.crop
        pad = [0, 0, max(0, cw - size[1]), max(0, ch - size[0])]
        image, label = TF.pad(image, pad, fill=(124, 116, 104)), TF.pad(label, pad, fill=255)
        top, left = random.randint(0, image.height - ch), random.randint(0, image.width - cw)
        image, label = TF.crop(image, top, left, ch, cw), TF.crop(label, top, left, ch, cw)
        if random.random() < 0.5:
            image, label = TF.hflip(image), TF.hflip(label)
        mask = torch.from_numpy(self.lut[np.asarray(label)].astype(np.int64))
        return self.to_tensor(image), mask


# --------------------------------------------------------------------------------------------
# Timing


def images_per_second(loader: DataLoader, after=None, max_batches: int | None = None) -> float:
    """Images/s over the loader's batches after the first (worker start-up is not timed)."""
    iterator = iter(loader)
    batch = next(iterator)
    if after is not None:
        after(batch)
    count, start = 0, time.perf_counter()
    for i, batch in enumerate(iterator):
        if after is not None:
            batch = after(batch)
        count += len(batch[0])
        if max_batches is not None and i + 1 >= max_batches:
            break
    elapsed = time.perf_counter() - start
    return count / elapsed if elapsed > 0 and count else float("nan")


def _plain_loader(dataset: Dataset, args, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=shuffle, num_workers=args.workers,
                      persistent_workers=False, drop_last=shuffle)


def run(args) -> list[dict]:
    from ctxlit.data import CityscapesDataModule, FoodDeliveryDataModule, ImageNetDataModule

    with tempfile.TemporaryDirectory(prefix="ctxlit-bench-data-") as tmp:
        tmp_path = Path(tmp)
        root = Path(args.root) if args.root else None
        if root is None:
            started = time.perf_counter()
            root = make_classification_tree(tmp_path / "photos", args.images, args.classes, args.image_size)
            print(f"wrote {args.images} + {max(args.classes, args.images // 4)} synthetic {args.image_size[0]}x{args.image_size[1]} "
                  f"JPEGs in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        common = {"batch_size": args.batch_size, "num_workers": args.workers, "pin_memory": False}
        food = {"image_size": args.food_size, "resize_size": round(args.food_size / 0.875), "min_scale": 0.25}
        cases = []

        def classification(name, dm_factory, train, settings):
            dm = dm_factory()
            started = time.perf_counter()
            dm.setup("fit")
            setup_s = time.perf_counter() - started
            loader = dm.train_dataloader() if train else dm.val_dataloader()
            reference = reference_classification(root, train, settings["image_size"], settings["resize_size"], settings["min_scale"])
            cases.append((name, loader, dm, _plain_loader(reference, args, shuffle=train), setup_s))

        quiet = open(os.devnull, "w")
        stdout, sys.stdout = sys.stdout, quiet  # the data modules print class tables at setup
        try:
            classification("food train 112", lambda: FoodDeliveryDataModule(str(root), **common, **food), True, food)
            classification("food train 112 cached", lambda: FoodDeliveryDataModule(str(root), **common, **food, cache=True), True, food)
            classification("food val 112 cached", lambda: FoodDeliveryDataModule(str(root), **common, **food, cache=True), False, food)
            imagenet = {"image_size": args.imagenet_size, "resize_size": round(args.imagenet_size / 0.875), "min_scale": 0.08}
            classification("imagenet train 224", lambda: ImageNetDataModule(str(root), **common, **imagenet), True, imagenet)
            classification("imagenet val 256/224", lambda: ImageNetDataModule(str(root), **common, **imagenet), False, imagenet)
            if not args.no_cityscapes:
                cs_root = Path(args.cityscapes_root) if args.cityscapes_root else make_cityscapes_tree(
                    tmp_path / "cityscapes", args.cityscapes_frames, args.cityscapes_size)
                crop = (args.cityscapes_size[1] // 2, args.cityscapes_size[0] // 2)
                dm = CityscapesDataModule(str(cs_root), **{**common, "batch_size": min(args.batch_size, 2)},
                                          crop_height=crop[0], crop_width=crop[1])
                dm.setup("fit")
                reference = ReferenceCityscapes(dm.train_images, dm.train_labels, crop)
                ref_loader = DataLoader(reference, batch_size=dm.batch_size, shuffle=True, num_workers=args.workers, drop_last=True)
                cases.append((f"cityscapes train {crop[0]}x{crop[1]} crop", dm.train_dataloader(), dm, ref_loader, 0.0))
        finally:
            sys.stdout = stdout
            quiet.close()

        results = []
        for name, loader, dm, ref_loader, setup_s in cases:
            ours, ref = [], []
            for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
                ours.append(images_per_second(loader, lambda b, dm=dm: dm.on_after_batch_transfer(b, 0)))
                ref.append(images_per_second(ref_loader))
            row = {"pipeline": name, "images_per_s": max(ours), "reference_images_per_s": max(ref),
                   "speedup": max(ours) / max(ref), "setup_s": round(setup_s, 3), "samples": len(loader.dataset)}
            results.append(row)
            print(f"{name:<32} {row['images_per_s']:>9.1f} {row['reference_images_per_s']:>11.1f} {row['speedup']:>7.2f}x"
                  + (f"   (setup incl. cache build {setup_s:.1f}s)" if setup_s > 0.5 else ""), flush=True)
    return results


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxlit.bench data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="existing train/<class> + val/<class> tree (default: synthetic JPEGs)")
    parser.add_argument("--cityscapes-root", help="existing Cityscapes tree (default: synthetic frames)")
    parser.add_argument("--images", type=int, default=512, help="synthetic training images (val: a quarter)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--image-size", type=parse_size, default=(500, 375), help="synthetic photo WIDTHxHEIGHT")
    parser.add_argument("--cityscapes-size", type=parse_size, default=(2048, 1024), help="synthetic frame WIDTHxHEIGHT")
    parser.add_argument("--cityscapes-frames", type=int, default=12)
    parser.add_argument("--no-cityscapes", action="store_true")
    parser.add_argument("--food-size", type=int, default=112)
    parser.add_argument("--imagenet-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: one per core)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in the main process (workers always use 1); more threads oversubscribe small CPUs")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per pipeline (interleaved with the reference); the best counts")
    parser.add_argument("--quick", action="store_true", help="a tiny run that only checks everything works: "
                        "its ratios are NOT representative (see QUICK_NOTE)")
    parser.add_argument("--out", default="bench-results/data.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.classes, args.image_size, args.batch_size, args.repeats = 24, 3, (160, 120), 4, 1
        args.cityscapes_frames, args.cityscapes_size = 5, (256, 128)
        args.workers = 0 if args.workers is None else args.workers
    torch.set_num_threads(args.threads)
    if args.quick:
        print(f"note: {QUICK_NOTE}", flush=True)
    if args.workers is None:
        from ctxlit.data.scan import default_threads

        args.workers = default_threads()
    print(f"{'pipeline':<32} {'images/s':>9} {'PIL ref/s':>11} {'ratio':>8}   "
          f"({args.workers} workers, batch {args.batch_size}, {torch.get_num_threads()} torch threads)", flush=True)
    results = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items()}
    config.update(cpu_count=os.cpu_count(), python=platform.python_version(), torch=torch.__version__)
    if args.quick:
        config["quick_note"] = QUICK_NOTE
    out.write_text(json.dumps({"benchmark": "data", "config": config, "results": results}, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
