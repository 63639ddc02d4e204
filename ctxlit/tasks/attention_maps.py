"""``AttentionMaps``: the blocks' attention on a fixed set of validation images, every N
validation epochs, as images a reviewer can look at.

Each time it records (:func:`ctxlit.blocks.record_attention`) one forward of the first
``num_images`` validation images (taken once, so every epoch shows the same images) and writes,
into ``<run dir>/attention/epoch-NNN/``:

- ``<block>.png``: one row per image, the image then the block's map(s) beside it, each map
  resized (nearest) to the image and scaled to its own min..max with viridis, whose lightness
  rises with the value (so the brightest pixel is the map's argmax);
- ``maps.pt``: the images and the raw maps (``{"images", "maps", "kinds", "queries", "epoch",
  "step"}``), which ``python -m ctxlit.report`` draws from. For a run that recorded none, the
  report computes the same record from the run's last checkpoint (:func:`checkpoint_maps`).

The same picture goes to W&B as ``attention/<block>`` (``WandbLogger.log_image``). What is drawn
per block: GC/SNL the pooling weights; Non-local one map per query position (marked); GloRe the
first four nodes' projections; SPM the mean gate; SE the channel gates and SK the branch
weights (branches x channels) as strips. Local Relation's k x k weights per pixel are kept in
``maps.pt`` only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from ctxlit.blocks import DEFAULT_QUERIES, record_attention
from ctxlit.errors import ConfigError

#: Image rows are drawn at least this many pixels tall (the synthetic images are 16 high).
MIN_ROW_HEIGHT = 64
GLORE_NODES_DRAWN = 4


def viridis(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 through matplotlib's viridis table."""
    from matplotlib import colormaps

    return (colormaps["viridis"](values)[..., :3] * 255).round().astype(np.uint8)


def _unit(x: torch.Tensor) -> torch.Tensor:
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else torch.zeros_like(x)


def _image_rgb(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A (C, H, W) network input shown as RGB (each image scaled to its own range)."""
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    image = F.interpolate(_unit(image.float())[None], size=size, mode="nearest")[0]
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _map_rgb(value: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map resized (nearest) to ``size`` and coloured."""
    if value.dim() == 1:
        value = value[None]
    resized = F.interpolate(value.float()[None, None], size=size, mode="nearest")[0, 0]
    return viridis(_unit(resized).numpy())


def panels(value: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """The 2-D pictures of one image's map (``value`` without the batch axis), by block class."""
    if kind in ("GlobalContext", "SimplifiedNonLocal"):  # (1, H, W) pooling weights
        return [value[0]]
    if kind == "NonLocal":  # (Q, Hk, Wk): one map per query position
        return list(value)
    if kind == "GloRe":  # (nodes, H, W) pixel -> node projections
        return list(value[:GLORE_NODES_DRAWN])
    if kind == "StripPooling":  # (C, H, W) gates: their mean
        return [value.mean(0)]
    if kind in ("SqueezeExcite", "SelectiveKernelConv"):  # (C,) gates; (M, C) branch weights
        return [value]
    return []  # LocalRelation (G, k*k, Ho, Wo): maps.pt only


def _mark(picture: np.ndarray, query: tuple[float, float]) -> None:
    """A red 3x3 dot at a relative (y, x) position: where a Non-local map's query sits."""
    h, w = picture.shape[:2]
    y, x = round(query[0] * (h - 1)), round(query[1] * (w - 1))
    picture[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = (255, 0, 0)


def draw(images: torch.Tensor, value: torch.Tensor, kind: str,
         queries: list[tuple[float, float]] | None = None) -> np.ndarray | None:
    """Rows of [image | map | map ...] for each image, as one RGB array (None: nothing to draw)."""
    n, _, h, w = images.shape
    scale = max(1, -(-MIN_ROW_HEIGHT // h))
    size = (h * scale, w * scale)
    rows = []
    for i in range(n):
        pictures = panels(value[i], kind)
        if not pictures:
            return None
        gap = np.full((size[0], 4, 3), 255, np.uint8)
        cells = [_image_rgb(images[i], size)]
        for q, picture in enumerate(pictures):
            coloured = _map_rgb(picture, size)
            if kind == "NonLocal" and queries:
                _mark(coloured, queries[q])
            cells += [gap, coloured]
        rows.append(np.concatenate(cells, axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


class AttentionMaps(pl.Callback):
    """Every ``every_n_epochs`` validations (0: off), record and draw the blocks' attention on the
    first ``num_images`` validation images; ``queries`` are Non-local's relative (y, x) query
    positions (default :data:`ctxlit.blocks.DEFAULT_QUERIES`)."""

    def __init__(self, every_n_epochs: int = 0, num_images: int = 4,
                 queries: list[tuple[float, float]] | None = None) -> None:
        if every_n_epochs < 0 or num_images < 1:
            raise ConfigError(f"attention: every_n_epochs must be >= 0 (0: off) and num_images >= 1; "
                              f"got every_n_epochs={every_n_epochs}, num_images={num_images}")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.queries = [tuple(q) for q in queries] if queries else list(DEFAULT_QUERIES)
        self._images: torch.Tensor | None = None
        self._validations = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.every_n_epochs or trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_epochs == 0:
            self.record(trainer, pl_module)

    def _fixed_images(self, trainer: pl.Trainer) -> torch.Tensor:
        if self._images is None:
            loaders = trainer.val_dataloaders
            self._images = first_images(loaders[0] if isinstance(loaders, (list, tuple)) else loaders,
                                        self.num_images)
        return self._images

    @rank_zero_only
    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        from ctxlit.tasks.callbacks import run_directory

        with trainer.precision_plugin.forward_context():
            record = record_maps(pl_module, self._fixed_images(trainer), self.queries)
        record.update(epoch=trainer.current_epoch, step=trainer.global_step)
        folder = run_directory(trainer) / "attention" / f"epoch-{trainer.current_epoch:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(record, folder / "maps.pt")
        drawn = {}
        for name, value in record["maps"].items():
            picture = draw(record["images"], value, record["kinds"][name], self.queries)
            if picture is not None:
                from PIL import Image

                Image.fromarray(picture).save(folder / f"{name}.png")
                drawn[name] = picture
        kinds = record["kinds"]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and drawn:
                logger.log_image(key="attention", images=list(drawn.values()), step=trainer.global_step,
                                 caption=[f"{n} ({kinds[n]}), epoch {trainer.current_epoch}" for n in drawn])
        return folder


def first_images(loader, num_images: int) -> torch.Tensor:
    """The first ``num_images`` inputs a (validation) loader yields, on the CPU."""
    taken = []
    for batch in loader:
        taken.append(batch[0] if isinstance(batch, (list, tuple)) else batch)
        if sum(len(b) for b in taken) >= num_images:
            break
    return torch.cat(taken)[:num_images].cpu()


def record_maps(module: torch.nn.Module, images: torch.Tensor, queries: list[tuple[float, float]]) -> dict:
    """One eval-mode forward of ``images`` with the blocks recording: the record ``maps.pt``
    holds, less ``epoch`` and ``step``: ``{"images", "maps", "kinds", "queries"}``."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    with torch.no_grad(), record_attention(module, queries) as maps:
        module(images.to(device))
    module.train(was_training)
    maps = {name: value.cpu() for name, value in maps.items()}
    kinds = {name: type(m).__name__ for name, m in module.named_modules() if name in maps}
    return {"images": images, "maps": maps, "kinds": kinds, "queries": list(queries)}


def checkpoint_maps(checkpoint: str | Path, num_images: int = 4,
                    queries: list[tuple[float, float]] | None = None) -> dict:
    """The record of :func:`record_maps` for a run's checkpoint: its task and data module rebuilt
    from the hyper-parameters the checkpoint holds (only ctxlit's own classes: Lightning refuses
    classes that are not imported), the first ``num_images`` validation images, on the CPU.
    ``epoch`` and ``step`` are the checkpoint's. Raises what loading or the data module raises
    (e.g. a dataset root that is not on this machine)."""
    import ctxlit.data  # noqa: F401  (the classes a ctxlit checkpoint may name)
    import ctxlit.tasks  # noqa: F401

    with warnings.catch_warnings():  # Lightning's own instantiator calls a deprecated jsonargparse API
        warnings.filterwarnings("ignore", message=r"(?s).*(instantiate_classes|JsonargparseDeprecationWarning)")
        module = pl.LightningModule.load_from_checkpoint(checkpoint, map_location="cpu")
        data = pl.LightningDataModule.load_from_checkpoint(checkpoint)
    data.setup("validate")
    record = record_maps(module, first_images(data.val_dataloader(), num_images), queries or list(DEFAULT_QUERIES))
    header = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)  # tensors not read
    record.update(epoch=header.get("epoch", -1), step=header.get("global_step", -1), checkpoint=str(checkpoint))
    return record
