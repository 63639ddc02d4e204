"""``python -m ctxlit.fit predict``: one CSV row per image with its top-k classes.

The data module predicts on its validation split (none has a separate predict split) and names
each sample in ``predict_names()`` (a file path, or ``val/<index>`` for synthetic samples). The
task's ``predict_step`` returns class probabilities (N, K); this callback writes
``predictions.csv`` (``--predictions.path``; default: the run folder) once all batches are done,
whole or not at all. Under DDP each rank writes its own shard, ``predictions.rank<r>.csv``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from ctxlit.utils.checks import check_positive_int
from ctxlit.utils.files import write_atomically


class PredictionsCSV(BasePredictionWriter):
    """Args:
        top_k: classes per row, most probable first (at most the number of classes).
        path: the CSV file; default ``<run folder>/predictions.csv``.
    """

    def __init__(self, top_k: int = 5, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        check_positive_int("top_k", top_k, owner="predictions")
        self.top_k, self.path = top_k, path
        self.rows: list[list] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if not isinstance(prediction, torch.Tensor) or prediction.dim() != 2:
            return  # not a classifier's (N, K) probabilities
        names = trainer.datamodule.predict_names()
        classes = trainer.datamodule.class_names
        probs, ids = prediction.float().cpu().topk(min(self.top_k, prediction.shape[1]), dim=1)
        targets = batch[1].cpu().tolist()
        for i, target, row_probs, row_ids in zip(batch_indices, targets, probs.tolist(), ids.tolist()):
            cells = [c for k, p in zip(row_ids, row_probs) for c in (classes[k], f"{p:.6f}")]
            self.rows.append([str(names[i]), classes[target], *cells])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
