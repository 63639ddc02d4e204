"""The LightningCLI behind ``python -m ctxlit.fit``.

Models and data modules are chosen by ``class_path`` (subclass mode), so every option is a
dotted key: ``--model.init_args.lr=0.05``, ``--data.init_args.batch_size=64``. The data
module's ``num_classes`` is linked into the model, so no number is typed twice. Every fit
also gets a best/last checkpoint (``--checkpoint.*``), a run summary (printed, and written as
``summary.json`` beside ``metrics.csv``), a validation at its last step, and, with
``--attention.every_n_epochs=N``, its blocks' attention drawn every N validations.
``validate``/``test``/``predict`` of a checkpoint in a run folder write into that run folder
and its W&B run (:func:`place_in_run`, :mod:`ctxlit.run_evaluation`).

Two environment variables place a run inside a study, so the command line stays exactly the
one ``wandb agent`` runs (``python -m ctxlit.sweep`` sets both):

- ``CTXLIT_RUN_DIR``: the CSV logs, ``config.yaml``, ``summary.json`` and checkpoints go to this
  folder itself, and W&B's files to ``<dir>/wandb``, instead of ``runs/<name>/version_N``.
- ``WANDB_RUN_GROUP``: the W&B group, over the config's ``group:`` (wandb itself would let the
  config win, and every trial of a synthetic sweep would land in group ``synthetic``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import pydoc
import signal
import sys
import typing
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from jsonargparse import Namespace
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

import ctxlit.blocks  # noqa: F401  (block classes resolvable by short name, e.g. GlobalContext)
from ctxlit import preflight
from ctxlit.errors import ConfigError, CtxlitError
from ctxlit.help_pages import HelpWithClassOptions
from ctxlit.parse_errors import one_line
from ctxlit.run_evaluation import RESULTS_FOLDERS, results_folder, run_of_checkpoint, wandb_run_of, write_test_metrics
from ctxlit.tasks.attention_maps import AttentionMaps
from ctxlit.tasks.callbacks import BestAndLastCheckpoint, RunSummary, ValidateAtLastStep, scalar_metrics
from ctxlit.tasks.faults import AtomicCheckpointIO, NonFiniteGuard
from ctxlit.tasks.predictions import PredictionWriter


class _DropLightningAdverts(logging.Filter):
    """Lightning's tip to install its cloud logger, printed at every Trainer: not ours to show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropLightningAdverts())
# torch deprecates the LeafSpec that Lightning's own pytree helper builds at every dataloader
# fetch: Lightning's to fix, printed at every run, and nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class CtxlitCLI(LightningCLI):
    #: set by run_cli: printed when the config has parsed and the run starts
    start_notice: str | None = None
    #: the run folder of the checkpoint that validate/test/predict evaluates (ctxlit.run_evaluation)
    _evaluated_run: Path | None = None

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        # ``fit`` is the default subcommand (ctxlit.fit inserts it), so its usage line and the
        # tip under an error read without it: jsonargparse names it "python -m ctxlit.fit
        # [options] fit", which its tip printed as "python -m ctxlit.fit fit --help".
        # argparse keeps subparsers only in its _actions; no public accessor exists.
        for action in self.parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, subparser in action.choices.items():
                    subparser.prog = self.parser.prog if name == "fit" else f"{self.parser.prog} {name}"

    def init_parser(self, **kwargs):
        kwargs.setdefault("prog", "python -m ctxlit.fit")
        # --trainer.max_epoch is a typo, not max_epochs: in a sweep file it would pass unseen.
        kwargs.setdefault("allow_abbrev", False)
        # --help also lists the chosen task's and data module's options (ctxlit.help_pages)
        kwargs.setdefault("add_help", False)
        parser = super().init_parser(**kwargs)
        parser.add_argument("-h", "--help", action=HelpWithClassOptions, help="show this help message and exit")
        # On a bad option print the message alone, not ~70 lines of usage above it, and in one
        # line where jsonargparse would print its tree of Union members (ctxlit.parse_errors).
        parser.print_usage = lambda file=None: None
        error = parser.error
        # argparse keeps the option strings only in its _option_string_actions
        parser.error = lambda message, ex=None: error(one_line(message, list(parser._option_string_actions)), ex)
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        ints_before_floats(parser)
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc1",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(RunSummary, "summary")
        # --attention.every_n_epochs=N: the blocks' attention drawn every N validations (0: off)
        parser.add_lightning_class_args(AttentionMaps, "attention")
        # --predictions.top_k / .path: what `predict` writes (one CSV row per image)
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument("--resume.allow_changed", type=list[str], default=[],
                            help="model options (init_args keys) a --ckpt_path resume may change, e.g. [lr]")
        parser.add_argument("--threads", type=int | None, default=None,
                            help="CPU threads for the math of this process (torch.set_num_threads); default: "
                                 "torch's, one per core. On a shared CPU fewer can be much faster")

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the model options of the command line by the checkpoint's with no
        word; instead, check the file, and refuse a resume that changes the model (see
        :func:`ctxlit.preflight.check_resume`). The allowed changes are kept as given.
        A private method: LightningCLI calls it between parsing and instantiation, and no public
        hook runs there with --ckpt_path still unapplied (tests/test_preflight.py covers it)."""
        self._resumed_hparams = None
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if config is None or not config.get("ckpt_path"):
            return
        checkpoint = preflight.read_checkpoint(config.ckpt_path)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        if hparams:
            differ = preflight.check_resume(hparams, config.model, config.resume.allow_changed, subcommand)
            if differ:
                print(preflight.training_options_note(subcommand, differ), file=sys.stderr)
        self._resumed_hparams = hparams

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.start_notice and logs_to_wandb(config.trainer.logger):
            print(self.start_notice, file=sys.stderr)
        preflight.check_ranges(config)
        if config.get("threads"):
            torch.set_num_threads(config.threads)
        run_dir = os.environ.get("CTXLIT_RUN_DIR")
        preflight.check_writable("CTXLIT_RUN_DIR", run_dir)
        preflight.check_writable("--trainer.default_root_dir", config.trainer.get("default_root_dir"))
        if config.get("checkpoint") is not None:
            preflight.check_writable("--checkpoint.dirpath", config.checkpoint.get("dirpath"))
        place_loggers(config.trainer.logger, run_dir, os.environ.get("WANDB_RUN_GROUP"), config.trainer.get("default_root_dir"))
        self._evaluated_run = run_of_checkpoint(config.get("ckpt_path")) if self.subcommand in RESULTS_FOLDERS else None
        if self._evaluated_run is not None:
            place_in_run(config, self._evaluated_run, self.subcommand)
        if self.subcommand == "predict" and config.get("predictions") is not None:
            preflight.check_prediction_path(config.predictions.get("path"), predicted_kind(config))

    def instantiate_classes(self) -> None:
        # jsonargparse builds an option typed as a callable and given as class_path + init_args
        # (a block: --model.init_args.block=ctxlit.blocks.GlobalContext) as
        # partial(<its instantiator>, cls, **init_args). The model gets the plain
        # functools.partial(cls, **init_args) instead, so no layer below this one needs to know
        # how jsonargparse wraps a class. Only this call sees the converted config: the saved
        # config.yaml and the hyperparameters keep the class_path form.
        instantiate, model = self.parser.instantiate_classes, f"{self.subcommand}.model" if self.subcommand else "model"
        self.parser.instantiate_classes = lambda cfg, **kw: instantiate(plain_class_partials(cfg, model), **kw)
        try:
            super().instantiate_classes()
        finally:
            del self.parser.instantiate_classes

    def after_instantiate_classes(self) -> None:
        # The checkpoint names the function that rebuilds the task from its hyper-parameters
        # (Lightning's key "_instantiator"); ours makes the same plain block partials as above.
        if self.model.hparams.get("_instantiator") == "pytorch_lightning.cli.instantiate_module":
            self.model.hparams["_instantiator"] = "ctxlit.cli.instantiate_module"
        saved = (self._resumed_hparams or {}).get("num_classes")
        given = getattr(self.datamodule, "num_classes", None)
        if saved is not None and given is not None and saved != given:
            raise ConfigError(f"--ckpt_path was trained for {saved} classes and this data has {given}: resume "
                              f"needs the same data; to fine-tune on new classes use --model.init_args.backbone_weights")
        prepare_wandb_loggers(self.trainer.loggers)  # after the last check: it makes the W&B folder

    def after_test(self) -> None:
        """``test`` of a run's checkpoint: its metrics also into ``RUN/test-metrics.json``."""
        if self._evaluated_run is not None and self.trainer.is_global_zero:
            ckpt_path = self.config[self.subcommand].ckpt_path
            path = write_test_metrics(self._evaluated_run, ckpt_path, scalar_metrics(self.trainer))
            print(f"[ctxlit] test metrics -> {path}", file=sys.stderr)

    def _instantiate_trainer(self, config, callbacks):
        # A private method: the public instantiate_trainer(**kwargs) cannot drop a callback or
        # add a plugin to what the config gives; this is where both lists are known (covered by
        # tests/test_fit_cli.py's fast_dev_run and enable_checkpointing tests).
        # --trainer.enable_checkpointing=false: leave out our checkpoint callback instead of
        # letting Lightning refuse the combination with a traceback.
        # fast_dev_run: Lightning suppresses checkpointing, but our callback would still write one
        # (into ./checkpoints, where the default dirpath points without a logger).
        if config.get("enable_checkpointing") is False or config.get("fast_dev_run"):
            callbacks = [c for c in callbacks if not isinstance(c, BestAndLastCheckpoint)]
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config = {**config, "plugins": [*plugins, AtomicCheckpointIO()]}
        return super()._instantiate_trainer(config, [*callbacks, ValidateAtLastStep(), NonFiniteGuard()])


def ints_before_floats(parser) -> None:
    """Parse ``--trainer.limit_val_batches=1`` as the int 1 (one batch), not 1.0 (all of them).

    Lightning annotates ``limit_*_batches``, ``overfit_batches`` and ``val_check_interval`` as
    ``Optional[Union[int, float]]`` (int: batches, float: a fraction), but ``typing`` caches
    unions by set equality, so the hint jsonargparse reads is the ``Union[float, int]`` that
    lightning_fabric wrote first, and jsonargparse tries the members in order. Each such union
    of the parser (read from argparse's ``_actions``, jsonargparse's ``_typehint``: no public
    accessor) is rebuilt flat with ``int`` first, which no cached nested union can replace.
    """
    for action in parser._actions:
        hint = getattr(action, "_typehint", None)
        members = list(getattr(hint, "__args__", ()))
        if typing.get_origin(hint) is typing.Union and int in members and float in members:
            if members.index(float) < members.index(int):
                members.remove(int)
                members.insert(members.index(float), int)
                action._typehint = typing.Union[tuple(members)]


def plain_class_partials(config: Namespace, key: str) -> Namespace:
    """A copy of ``config`` in which each option of the class at ``key`` (its ``init_args``
    in subclass mode) given as ``class_path`` + ``init_args`` is ``functools.partial(cls,
    **init_args)`` (see ``CtxlitCLI.instantiate_classes``)."""
    config = config.clone()
    options = config.get(key)
    options = options.get("init_args", options) if isinstance(options, Namespace) else None
    for name, value in (options.items(branches=True, nested=False) if isinstance(options, Namespace) else ()):
        if isinstance(value, Namespace) and value.get("class_path"):
            kwargs = value.get("init_args")
            options[name] = functools.partial(pydoc.locate(value.class_path), **(kwargs.as_dict() if kwargs else {}))
    return config


def instantiate_module(class_type: type, config: dict):
    """Rebuild a task from a checkpoint's hyper-parameters as Lightning's
    ``pytorch_lightning.cli.instantiate_module`` does, with its block options made plain
    partials like a fit's. Checkpoints written by ``python -m ctxlit.fit`` name this function
    (see ``CtxlitCLI.after_instantiate_classes``), so ``load_from_checkpoint`` comes here."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    if "_class_path" in config:
        parser.add_subclass_arguments(class_type, "module", fail_untyped=False)
        config = {"class_path": config["_class_path"], "dict_kwargs": {k: v for k, v in config.items() if k != "_class_path"}}
    else:
        parser.add_class_arguments(class_type, "module", fail_untyped=False)
    cfg = parser.parse_object({"module": config})
    return parser.instantiate(plain_class_partials(cfg, "module")).module


def logs_to_wandb(loggers) -> bool:
    """Whether the parsed ``--trainer.logger`` (a Namespace, a list of them, or a bool) has a W&B
    logger: the offline notice is only said to a run that logs there."""
    return any(getattr(logger, "class_path", "").endswith(".WandbLogger") for logger in _as_list(loggers))


def _as_list(loggers) -> list:
    """``--trainer.logger`` as parsed (one Namespace, a list of them, or a bool) as a list."""
    return loggers if isinstance(loggers, list) else [loggers]


def place_loggers(loggers, run_dir: str | None, group: str | None, root: str | None = None) -> None:
    """Point the configured CSV and W&B loggers (parsed, not yet built) at ``run_dir`` and
    ``group``; see the module docstring. ``loggers`` is a Namespace, a list of them, or a bool.
    ``root`` (``--trainer.default_root_dir``) is where relative logger folders go when there is
    no ``run_dir``: Lightning applies it to checkpoints only, and the logs stayed in ./runs."""
    for logger in _as_list(loggers):
        class_path = getattr(logger, "class_path", "")
        args = getattr(logger, "init_args", None)
        if args is None:
            continue
        save_dir = getattr(args, "save_dir", None)
        if not run_dir and root and save_dir and not os.path.isabs(save_dir):
            args.save_dir = save_dir = os.path.join(root, save_dir)
        if run_dir and class_path.endswith(".CSVLogger"):
            args.save_dir, args.name, args.version = run_dir, "", ""
        elif class_path.endswith(".WandbLogger"):
            # Absolute: wandb-core outlives a run and resolves relative paths against the working
            # directory of the first run in this process (a second in-process run lost its data).
            args.save_dir = os.path.abspath(run_dir or args.save_dir or ".")
            if group:
                args.group = group


def predicted_kind(config) -> str:
    """What ``predict`` of the config's task returns (its class's ``predicts``)."""
    return getattr(pydoc.locate(config.model.class_path), "predicts", "probabilities")


def place_in_run(config, run: Path, subcommand: str) -> None:
    """Point an evaluation of a run's checkpoint (parsed config, not yet built) at the run
    folder (see :mod:`ctxlit.run_evaluation`): the CSV log and the config used in
    ``RUN/<subcommand's folder>``, W&B's logger at the run's own W&B run, ``predict``'s output in
    ``RUN/predictions/`` unless ``--predictions.path`` names a place. Says so in one line."""
    folder = results_folder(run, subcommand)
    preflight.check_writable(f"{subcommand} --ckpt_path {config.ckpt_path}: the run folder", folder)
    config.trainer.default_root_dir = str(folder)  # the config's copy when no logger is set
    wandb_run = wandb_run_of(run)
    for logger in _as_list(config.trainer.logger):
        class_path, args = getattr(logger, "class_path", ""), getattr(logger, "init_args", None)
        if args is None:
            continue
        if class_path.endswith(".CSVLogger"):
            args.save_dir, args.name, args.version = str(run), folder.name, ""
        elif class_path.endswith(".WandbLogger") and wandb_run is not None:
            # Lightning's WandbLogger resumes a given id (resume="allow"): the run's own W&B run
            args.save_dir, args.id = wandb_run["save_dir"], wandb_run["id"]
    if subcommand == "predict" and config.get("predictions") is not None and not config.predictions.get("path"):
        labels = predicted_kind(config) == "label_maps"
        config.predictions.path = str(folder if labels else folder / "predictions.csv")
    resumed = f"; W&B run {wandb_run['id']} continued" if wandb_run and logs_to_wandb(config.trainer.logger) else ""
    print(f"[ctxlit] {subcommand} of a checkpoint of run {run}: results in {folder}{resumed}", file=sys.stderr)


def prepare_wandb_loggers(loggers) -> None:
    """Two W&B warnings at every run that no config can act on, removed at their cause:

    - "The anonymous setting has no effect": Lightning's WandbLogger passes ``anonymous=None``
      to ``wandb.init`` when the option is unset (its init kwargs are only in the private
      ``_wandb_init``), and wandb >= 0.2x warns about the key whatever its value.
    - "git root <save_dir> does not exist": wandb looks for the git commit from the run's
      folder, which Lightning creates only later. Made here, after the model and data were
      built (a bad config has stopped by now), the commit of the repository it is in is logged.
    """
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous", "") is None:
            del init["anonymous"]
        if logger.save_dir:
            os.makedirs(logger.save_dir, exist_ok=True)


def run_cli(argv: list[str], from_command_line: bool = False, start_notice: str | None = None) -> int:
    """Run the CLI on ``argv``; a ``CtxlitError`` raised while building the model or data
    (before training starts) becomes one line on stderr and exit code 2.

    ``from_command_line``: ``argv`` is the process's own command line (with defaults filled
    in); it then goes through ``sys.argv``, which Lightning's DDP launcher also re-executes.
    ``start_notice``: a line for stderr once the command line is parsed and a run starts (not
    on a parse error or a help page).
    """
    code = 1
    if from_command_line:
        sys.argv[1:] = argv
    try:
        preflight.check_config_files(argv)
        CtxlitCLI.start_notice = start_notice
        with warnings.catch_warnings():
            if argv[:1] != ["fit"]:
                # validate/test/predict save no checkpoint, yet Lightning warns at each of them
                # that the checkpoint callback's folder differs from the one in --ckpt_path
                warnings.filterwarnings("ignore", message="The dirpath has changed from")
            CtxlitCLI(
                model_class=pl.LightningModule,
                datamodule_class=pl.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                args=None if from_command_line else argv,
                auto_configure_optimizers=False,
            )
        code = 0
    except (CtxlitError, ValueError) as err:
        cause = ctxlit_cause(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        code = cause.exit_code
    except SIGTERMException:
        # Lightning turns SIGTERM into an exit with status 0; a pre-empted run did not succeed.
        print("error: stopped by SIGTERM; resume with --ckpt_path <run dir>/checkpoints/last.ckpt "
              "(the state at the signal, saved above)", file=sys.stderr)
        code = 128 + signal.SIGTERM
    finally:
        CtxlitCLI.start_notice = None
        finish_wandb(code)
    return code


def ctxlit_cause(err: BaseException) -> CtxlitError | None:
    """The outermost ``CtxlitError`` in ``err``'s chain: jsonargparse wraps errors raised
    while it instantiates classes in a ``ValueError`` listing every Union member it tried."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, CtxlitError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def finish_wandb(exit_code: int) -> None:
    """Close the W&B run WandbLogger opened, so its data is flushed before we return (the
    logger leaves it open; an agent or a test may start another run in this process)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
