"""What every fit does when training goes wrong, so that the files on disk stay trustworthy:

- :class:`NonFiniteGuard`: the first non-finite training loss (or validation loss) stops the
  run with :class:`TrainingFailed`: ``error:`` line, exit 1, ``summary.json`` status
  ``failed``, the W&B run marked failed. No checkpoint of a non-finite state is written
  (:func:`finite_state`, used by the checkpoint callback), so ``last.ckpt`` keeps the last finite one.
- :class:`AtomicCheckpointIO`: a checkpoint is written to a temp file in its own folder, fsynced,
  then renamed over the old one. Lightning's own save goes through a temp file in ``$TMPDIR``
  and, when that is another filesystem (tmpfs ``/tmp``, an NFS checkpoint folder), ends as a
  truncate-and-copy that a kill or a full disk leaves half-written.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO

from ctxlit.errors import TrainingFailed


def finite_state(module: torch.nn.Module) -> bool:
    """Every floating-point parameter and buffer (BatchNorm's running stats too) is finite.
    One device-to-host sync for the whole state, not one per tensor."""
    checks = [torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


class NonFiniteGuard(pl.Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss.detach()).all():
            self._stop(trainer, "training loss", loss)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            self._stop(trainer, "validation loss", loss)

    @staticmethod
    def _stop(trainer: pl.Trainer, what: str, value: torch.Tensor) -> None:
        raise TrainingFailed(
            f"training stopped: non-finite {what} ({float(value.detach().float().mean())}) at epoch "
            f"{trainer.current_epoch}, step {trainer.global_step}; no checkpoint of a non-finite state was written, "
            f"so last.ckpt is the last finite one. A smaller --model.init_args.lr (or warmup) usually helps")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Temp file beside the checkpoint, fsync, ``os.replace``, fsync of the folder. A failed
    write (a full disk) removes its temp file, keeps the previous checkpoint, and is one
    :class:`TrainingFailed`. Temp files left by killed processes are removed at the next save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        # Serialized in memory first (as Lightning does): torch.save straight into a file turns
        # a full disk into an opaque RuntimeError from its zip writer; a plain write says ENOSPC.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(err, OSError):
                raise TrainingFailed(f"could not write checkpoint {path}: {err.strerror or err}; the previous "
                                     f"{path.name}, if any, is kept") from err
            raise
        _fsync_folder(path.parent)
        remove_orphans(path.parent)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_orphans(folder: Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` files whose process is gone (it was killed mid-save)."""
    removed = []
    for tmp in folder.glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
        except PermissionError:
            pass  # another user's live process
    return removed
