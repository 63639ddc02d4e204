"""Callbacks every fit gets: model complexity at the start, throughput, a final summary
(printed and written as ``summary.json``), best/last checkpoints, a validation at the last step."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ctxlit import runs
from ctxlit.backbones import describe_plugins
from ctxlit.runs import Status
from ctxlit.tasks.faults import finite_state
from ctxlit.utils.complexity import NOTE_NOT_COUNTED, measure_complexity


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is always the latest state.

    Lightning 2.6 writes ``last.ckpt`` only in a step where a top-k checkpoint was also
    written, so once the monitored metric stops improving "last" goes stale and a resumed run
    would restart from old weights. After each validation and training epoch this writes it
    if nothing was saved at the current step (tests/test_fit_cli.py checks resume equality).
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # When validation ends an epoch, top-k is saved in on_train_epoch_end: writing last
        # here first would mark the step as saved and make Lightning skip the top-k save.
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning raises SIGTERMException between batches (all DDP ranks together), so the
        # state is consistent: save it as last.ckpt, which resumes mid-epoch exactly (the data
        # module's checkpoint state says where in the epoch it stood). A SIGTERM during
        # validation is resumed after that validation: Lightning does not rerun it.
        if isinstance(exception, SIGTERMException) and self.save_last:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            if trainer.is_global_zero and self.last_model_path:
                print(f"[ctxlit] SIGTERM at step {trainer.global_step}: saved {self.last_model_path}", file=sys.stderr)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # Never a best or last checkpoint of NaN/Inf weights or running stats: last.ckpt stays
        # the last finite state (ctxlit.tasks.faults.NonFiniteGuard then stops the run).
        if finite_state(trainer.lightning_module):
            super()._save_checkpoint(trainer, filepath)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class ValidateAtLastStep(pl.Callback):
    """Validate at the final step of a ``trainer.max_steps`` run that stops inside an epoch.

    Lightning validates at epoch ends only, so a short sweep trial cut by ``max_steps`` would
    end without its sweep metric. Raising ``trainer.should_stop`` on the last step is the
    public way (the one ``EarlyStopping`` uses) to get a validation run before the loop stops.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class RunSummary(pl.Callback):
    """Logs parameters/FLOPs when a fit starts, images/s each epoch, and prints a summary at the end.

    Throughput counts training batches only: per epoch, from the end of the first batch (so
    DataLoader start-up is excluded) to the end of the last one, less any validation run in
    between (``val_check_interval < 1``), summed over DDP ranks.
    """

    def __init__(self) -> None:
        self.complexity = None
        self.images = 0
        self.seconds = 0.0
        self.fit_seconds = 0.0
        self._epoch_first_end: float | None = None
        self._epoch_last_end: float | None = None
        self._epoch_images = 0
        self._paused = self._paused_at_last_end = 0.0
        self._validation_start = 0.0
        self._fit_start = 0.0
        self._provenance: dict | None = None

    # -- start -------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        if trainer.is_global_zero and not trainer.fast_dev_run:
            # "running", with this process: a reader tells a run in progress from one killed
            # before its end (its process gone) without waiting for an end that never comes.
            self._provenance = runs.provenance()
            runs.write_summary(run_directory(trainer), {"status": Status.RUNNING.value, "process": runs.process_token(),
                                                        "provenance": self._provenance})
        shape = getattr(trainer.datamodule, "input_shape", None)
        network = getattr(pl_module, "network", pl_module)
        if shape is not None and trainer.is_global_zero:
            self.complexity = measure_complexity(network, (1, *shape))
            numbers = {f"model/{k}": v for k, v in self.complexity.as_dict().items()}
            for logger in trainer.loggers:
                logger.log_hyperparams(numbers)
            self._print_model(network)

    def _print_model(self, network) -> None:
        c = self.complexity
        print(f"[ctxlit] model: {c.params / 1e6:.3f}M parameters, {c.flops / 1e9:.4f} GFLOPs "
              f"({c.macs / 1e9:.4f} GMACs) at input {tuple(c.input_shape)}")
        print(f"[ctxlit] {NOTE_NOT_COUNTED}")
        rows = describe_plugins(network)
        print(f"[ctxlit] plugins: {len(rows)} inserted" + (":" if rows else ""))
        for row in rows:
            print(f"[ctxlit]   {row}")

    # -- throughput ----------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_first_end = self._epoch_last_end = None
        self._epoch_images = 0
        self._paused = self._paused_at_last_end = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._epoch_first_end is None:
            self._epoch_first_end = now
            return
        self._epoch_last_end = now
        self._paused_at_last_end = self._paused
        self._epoch_images += len(batch[0]) * trainer.world_size

    # Validation inside an epoch (val_check_interval < 1) is not training time.
    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._epoch_first_end is not None:
            self._paused += time.perf_counter() - self._validation_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_last_end is None:
            return
        seconds = self._epoch_last_end - self._epoch_first_end - self._paused_at_last_end
        self.images += self._epoch_images
        self.seconds += seconds
        if seconds > 0:
            pl_module.log("train/images_per_sec", self._epoch_images / seconds, rank_zero_only=True)

    @property
    def images_per_sec(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None

    # -- end -----------------------------------------------------------------------------------

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_start
        if trainer.is_global_zero:
            print(self.summary_text(trainer))
            if not trainer.fast_dev_run:  # a smoke test leaves no files (Lightning's loggers are off too)
                self.write_summary(trainer, Status.FINISHED)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_start
        # Only into a run folder that exists: an error at setup (a bad option) leaves none behind.
        if trainer.is_global_zero and run_directory(trainer).is_dir():
            interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
            status = Status.INTERRUPTED if interrupted else Status.FAILED
            self.write_summary(trainer, status, error=f"{type(exception).__name__}: {exception}")

    def write_summary(self, trainer: pl.Trainer, status: Status, error: str | None = None) -> Path:
        """``summary.json`` beside ``metrics.csv`` and ``config.yaml`` (through ctxlit.runs, its
        one writer): what the sweep runner and ``ctxlit.report`` read."""
        return runs.write_summary(run_directory(trainer), self.summary_record(trainer, status, error))

    def summary_record(self, trainer: pl.Trainer, status: Status, error: str | None = None) -> dict:
        ckpt = trainer.checkpoint_callback
        c = self.complexity
        best = ckpt.best_model_score if ckpt is not None else None
        return {
            "status": Status(status).value,  # finished | failed | interrupted
            "error": error,
            "task": type(trainer.lightning_module).__name__,
            "metrics": scalar_metrics(trainer),  # the last logged value of every scalar
            "monitor": ckpt.monitor if ckpt is not None else None,
            "best": float(best) if best is not None else None,
            "params": c.params if c else None,
            "flops": c.flops if c else None,
            "macs": c.macs if c else None,
            "input_shape": list(c.input_shape[1:]) if c else None,
            "images_per_sec": self.images_per_sec,
            "train_images": self.images,
            "train_seconds": self.seconds,
            "wall_seconds": self.fit_seconds,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "best_checkpoint": (ckpt.best_model_path or None) if ckpt is not None else None,
            "last_checkpoint": (ckpt.last_model_path or None) if ckpt is not None else None,
            "wandb": wandb_run_info(trainer),
            "provenance": self._provenance or runs.provenance(),
        }

    def summary_text(self, trainer: pl.Trainer) -> str:
        """The printed summary (see :meth:`summary` for the file)."""
        metrics = scalar_metrics(trainer)
        lines = ["", "=" * 72, "ctxlit run summary", "-" * 72]
        ckpt = trainer.checkpoint_callback
        best = f", best {float(ckpt.best_model_score):.4f}" if ckpt and ckpt.best_model_score is not None else ""
        if "val/acc1" in metrics:
            lines.append(f"validation accuracy   top-1 {metrics['val/acc1']:.4f} (last epoch{best})"
                         + (f", top-5 {metrics['val/acc5']:.4f}" if "val/acc5" in metrics else ""))
        if "val/miou" in metrics:
            lines.append(f"validation mIoU       {metrics['val/miou']:.4f} (last epoch{best})"
                         + (f", pixel accuracy {metrics['val/pixel_acc']:.4f}" if "val/pixel_acc" in metrics else ""))
            lines += per_class_iou_lines(metrics)
        if self.complexity is not None:
            c = self.complexity
            lines.append(f"parameters            {c.params:,} ({c.params / 1e6:.3f}M)")
            lines.append(f"FLOPs                 {c.flops / 1e9:.4f} G per image at {tuple(c.input_shape[1:])} "
                         f"({c.macs / 1e9:.4f} GMACs; conv/matmul only)")
        if self.images_per_sec is not None:
            lines.append(f"training throughput   {self.images_per_sec:.1f} images/s "
                         f"(over {self.images} images, all ranks)")
        lines.append(f"wall time             {self.fit_seconds:.1f} s, {trainer.current_epoch} epochs, "
                     f"{trainer.global_step} steps")
        if any(isinstance(logger, CSVLogger) for logger in trainer.loggers):
            lines.append(f"CSV log               {run_directory(trainer) / 'metrics.csv'}")
        wandb_run = wandb_run_info(trainer)
        if wandb_run is not None:
            lines.append(f"W&B run               {wandb_run['dir']} ({wandb_run['mode']})"
                         + (f"; upload later: wandb sync {wandb_run['dir']}" if wandb_run["mode"] == "offline" else ""))
        if ckpt is not None:
            if ckpt.best_model_path:
                lines.append(f"best checkpoint       {ckpt.best_model_path}")
            if ckpt.last_model_path:
                lines.append(f"last checkpoint       {ckpt.last_model_path}")
        lines.append("=" * 72)
        return "\n".join(lines)


def scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def run_directory(trainer: pl.Trainer) -> Path:
    """Where this run's ``metrics.csv`` and ``config.yaml`` live: the CSV logger's folder, or
    the first logger's (``trainer.default_root_dir`` without loggers). Rank-local: unlike
    ``trainer.log_dir`` it broadcasts nothing, so it is safe in ``on_exception``."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return Path(logger.log_dir)
    if trainer.loggers:
        logger = trainer.loggers[0]
        return Path(getattr(logger, "log_dir", None) or logger.save_dir or trainer.default_root_dir)
    return Path(trainer.default_root_dir)


def wandb_run_info(trainer: pl.Trainer) -> dict | None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger.experiment:
            run = logger.experiment
            return {"id": run.id, "dir": str(Path(run.dir).parent), "group": run.group or None,
                    "mode": getattr(getattr(run, "settings", None), "mode", "")}
    return None


def per_class_iou_lines(metrics: dict, width: int = 72) -> list[str]:
    """The last validation's ``val/iou/<class>`` values, in class order, wrapped to ``width``;
    a class with no IoU (absent from ground truth and prediction) shows as ``-``."""
    cells = [f"{key[len('val/iou/'):]} {value:.3f}" if value == value else f"{key[len('val/iou/'):]} -"
             for key, value in metrics.items() if key.startswith("val/iou/")]
    lines, current = [], "IoU per class        "
    for cell in cells:
        if len(current) + len(cell) + 2 > width and current.strip() != "IoU per class":
            lines.append(current.rstrip(", "))
            current = " " * 21
        current += cell + ", "
    if cells:
        lines.append(current.rstrip(", "))
    return lines
