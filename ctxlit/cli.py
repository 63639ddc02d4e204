"""The LightningCLI behind ``python -m ctxlit.fit``.

Models and data modules are chosen by ``class_path`` (subclass mode), so every option is a
dotted key: ``--model.init_args.lr=0.05``, ``--data.init_args.batch_size=64``. The data
module's ``num_classes`` is linked into the model, so no number is typed twice. Every fit
also gets a best/last checkpoint (``--checkpoint.*``) and a run summary.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

import ctxlit.blocks  # noqa: F401  (block classes resolvable by short name, e.g. GlobalContext)
from ctxlit.errors import CtxlitError
from ctxlit.tasks.callbacks import RunSummary


class CtxlitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc1",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


def run_cli(argv: list[str]) -> int:
    """Run the CLI on ``argv``; a ``CtxlitError`` or a ``ValueError`` raised while building
    the model or data (before training starts) becomes one line on stderr and exit code 2."""
    try:
        CtxlitCLI(
            model_class=pl.LightningModule,
            datamodule_class=pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=argv,
            auto_configure_optimizers=False,
        )
    except CtxlitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
