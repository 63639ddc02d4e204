"""``python -m ctxlit.fit predict``: what the task predicts for each validation image, written out.

The data module predicts on its validation split (none has a separate predict split) and names
each sample in ``predict_names()`` (a file path, or ``val/<index>`` for synthetic samples). One
callback, one option, for both tasks; ``--predictions.path`` is where the output goes:

- **classification**: ``predict_step`` returns class probabilities (N, K); this callback writes
  ``predictions.csv`` (``--predictions.path`` is the file; default: the run folder) once all
  batches are done, whole or not at all, one row per image with its top-k classes
  (``--predictions.top_k``). Under DDP each rank writes its own shard, ``predictions.rank<r>.csv``.
- **segmentation**: ``predict_step`` returns train-id label maps (N, H, W) uint8, by the same
  inference as validation (scales, flip, sliding window). For each image two PNGs go into a
  folder (``--predictions.path`` is the folder; default ``<run folder>/predictions/``), named
  after the input image (``frankfurt_000000_000294_leftImg8bit.png`` gives
  ``frankfurt_000000_000294_trainIds.png`` and ``..._color.png``): the label map in Cityscapes
  train ids (0..18, every pixel a class) and its colours in the official Cityscapes palette.
  Each file is written whole or not at all, as its batch ends.
"""

from __future__ import annotations

import csv
import functools
import io
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter

from ctxlit.preflight import check_prediction_path
from ctxlit.utils.checks import check_positive_int
from ctxlit.utils.files import write_atomically

#: the end of a Cityscapes image name, left out of the prediction names
IMAGE_SUFFIXES = ("_leftImg8bit",)


class PredictionWriter(BasePredictionWriter):
    """Writes what the task's ``predict`` returns, as its ``predicts`` attribute says:
    ``"probabilities"`` (a CSV) or ``"label_maps"`` (PNGs).

    Args:
        top_k: classes per row, most probable first (at most the number of classes);
            classification only.
        path: classification: the CSV file, default ``<run folder>/predictions.csv``;
            segmentation: the folder for the PNGs, default ``<run folder>/predictions/``.
    """

    def __init__(self, top_k: int = 5, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        check_positive_int("top_k", top_k, owner="predictions")
        self.top_k, self.path = top_k, path
        self.rows: list[list] = []
        self.folder: Path | None = None
        self.written = 0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows, self.folder, self.written = [], None, 0
        if getattr(pl_module, "predicts", "probabilities") == "label_maps":
            self.folder = Path(self.path) if self.path else Path(trainer.log_dir or ".") / "predictions"
            check_prediction_path(self.path, "label_maps")  # the CLI checked it before building anything
            # Full-resolution maps are written as they come; Lightning would also keep every one
            # in memory to return it (2 MB per Cityscapes image), which the CLI never reads.
            trainer.predict_loop.return_predictions = False

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if not isinstance(prediction, torch.Tensor):
            return
        if prediction.dim() == 2:  # a classifier's (N, K) probabilities
            self._add_rows(trainer, prediction, batch_indices, batch)
        elif prediction.dim() == 3 and self.folder is not None:  # a segmenter's (N, H, W) train ids
            names = trainer.datamodule.predict_names()
            for i, label_map in zip(batch_indices, prediction.cpu().numpy()):
                write_label_map(self.folder, prediction_stem(names[i]), label_map)
                self.written += 1

    def _add_rows(self, trainer, prediction, batch_indices, batch) -> None:
        names = trainer.datamodule.predict_names()
        classes = trainer.datamodule.class_names
        probs, ids = prediction.float().cpu().topk(min(self.top_k, prediction.shape[1]), dim=1)
        targets = batch[1].cpu().tolist()
        for i, target, row_probs, row_ids in zip(batch_indices, targets, probs.tolist(), ids.tolist()):
            cells = [c for k, p in zip(row_ids, row_probs) for c in (classes[k], f"{p:.6f}")]
            self.rows.append([str(names[i]), classes[target], *cells])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.folder is not None:
            print(f"[ctxlit] predictions: {self.written} label maps (train ids and colours) -> {self.folder}")
        if not self.rows:
            return
        k = (len(self.rows[0]) - 2) // 2
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["image", "label", *[c for j in range(1, k + 1) for c in (f"top{j}", f"p{j}")]])
        writer.writerows(self.rows)
        path = Path(self.path) if self.path else Path(trainer.log_dir or ".") / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        write_atomically(path, out.getvalue())
        print(f"[ctxlit] predictions: {len(self.rows)} images -> {path}")


def prediction_stem(name) -> str:
    """The input image's file name without its extension and Cityscapes suffix
    (``.../frankfurt_000000_000294_leftImg8bit.png`` -> ``frankfurt_000000_000294``)."""
    stem = Path(str(name)).stem
    for suffix in IMAGE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return stem


@functools.lru_cache(maxsize=1)
def cityscapes_palette() -> np.ndarray:
    """``(256, 3)`` uint8: the official colour of each Cityscapes train id (0..18), black for the
    other values. From torchvision's ``Cityscapes.classes``, the label table the data module
    maps label ids with (``ctxlit.data.cityscapes``)."""
    from torchvision.datasets import Cityscapes

    palette = np.zeros((256, 3), dtype=np.uint8)
    for cls in Cityscapes.classes:
        if 0 <= cls.train_id < 255:
            palette[cls.train_id] = cls.color
    return palette


def png_bytes(array: np.ndarray) -> bytes:
    """An (H, W) uint8 array as a grayscale PNG, (H, W, 3) as an RGB one."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def write_label_map(folder: Path, stem: str, label_map: np.ndarray) -> None:
    """``<stem>_trainIds.png`` (the (H, W) uint8 train ids) and ``<stem>_color.png`` (their
    palette colours, (H, W, 3)), each written whole or not at all."""
    write_atomically(folder / f"{stem}_trainIds.png", png_bytes(label_map.astype(np.uint8)))
    write_atomically(folder / f"{stem}_color.png", png_bytes(cityscapes_palette()[label_map]))
