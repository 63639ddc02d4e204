"""Checks of a resolved ``python -m ctxlit.fit`` config that run before any model, logger, run
folder or W&B run exists, so a bad input is one ``error:`` line and exit 2 with nothing written:

- numeric ranges of the task, data and trainer options (:data:`RANGES`);
- ``--ckpt_path``: a readable Lightning checkpoint (:func:`read_checkpoint`);
- resume keeps the model it resumes (:func:`resume_changes`): a command line that changes the
  checkpoint's model options is refused unless ``--resume.allow_changed`` names the keys;
- output folders that can be written (:func:`check_writable`, :func:`check_prediction_path`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from ctxlit.errors import ConfigError
from ctxlit.utils.files import unwritable_reason

#: dotted key -> (test, what it allows). A missing key (an option the chosen task or data
#: module does not have) is not checked; ``None`` fails every numeric rule but :data:`OPTIONAL`'s.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "model.init_args.lr": (lambda v: v > 0, "a number > 0"),
    "model.init_args.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.init_args.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "model.init_args.label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.init_args.warmup_epochs": (lambda v: v >= 0, "a number >= 0"),
    "model.init_args.min_lr_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "data.init_args.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.init_args.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "trainer.max_epochs": (lambda v: v >= -1, "-1 (no limit) or an integer >= 0"),
    "trainer.max_steps": (lambda v: v >= -1, "-1 (no limit) or an integer >= 0"),
    "threads": (lambda v: v >= 1, "an integer >= 1"),
}
#: rules for options that also take other shapes, checked only for a number (the synthetic
#: benchmark's image_size is [height, width] and checked by its data module)
NUMBER_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    # every backbone downsamples 32x; smaller photos end as 1x1 maps (food at 1 px: loss 1e29)
    "data.init_args.image_size": (lambda v: v >= 32, "an integer >= 32 (the backbones downsample 32x)"),
}
#: task options that change how fast a step runs, not what it computes (ctxlit.tasks.speed)
SPEED_OPTIONS = ("compile", "channels_last")
#: how a checkpoint is evaluated, not what it learnt: free to change when ``validate``, ``test``
#: or ``predict`` loads it (a single-scale model tested multi-scale + flip), never in ``fit``
EVALUATION_OPTIONS = ("scales", "flip", "sliding_window", "window", "stride")
#: how the weights were trained, not what they compute: free to differ when ``validate``,
#: ``test`` or ``predict`` loads a checkpoint (the run's config may be edited since), with a note
TRAINING_OPTIONS = ("optimizer", "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_steps", "min_lr_ratio",
                    "poly_power", "label_smoothing", "use_class_weights", "ohem_thresh", "ohem_min_kept",
                    "backbone_weights", "freeze_backbone", "pretrained_lr_ratio")
#: keys whose ``None`` means "not set" (Lightning's own defaults)
OPTIONAL = {"trainer.max_epochs", "data.init_args.num_workers", "threads"}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ranges(config) -> None:
    """``config`` is the parsed jsonargparse Namespace, whose ``get`` follows dotted keys."""
    for key, (test, allowed) in {**RANGES, **NUMBER_RANGES}.items():
        if key not in config:
            continue
        value = config.get(key)
        if (value is None and key in OPTIONAL) or (key in NUMBER_RANGES and not _is_number(value)):
            continue
        ok = _is_number(value) and math.isfinite(value) and test(value)
        if not ok:
            raise ConfigError(f"--{key}: must be {allowed}; got {json.dumps(value)}")


def check_writable(option: str, path: str | os.PathLike | None, given: str | os.PathLike | None = None) -> None:
    """The folder ``path`` exists and is writable, or can be made: its nearest existing
    ancestor is a folder in which a file can be created. Tried, not read from the mode bits:
    root may write anywhere the bits forbid, but not on a read-only filesystem. ``given``: the
    value the error names (default ``path``), when ``path`` is the folder of a file given."""
    if not path:
        return
    problem = unwritable_reason(path)
    if problem:
        raise ConfigError(f"{option} {path if given is None else given}: {problem}")


def check_prediction_path(path: str | os.PathLike | None, predicts: str) -> None:
    """``--predictions.path`` can take what ``predict`` writes there (see
    :class:`ctxlit.tasks.predictions.PredictionWriter`): for ``"probabilities"`` one CSV file (not
    a folder in a writable one), for ``"label_maps"`` a folder of PNGs."""
    if not path:
        return
    target = Path(path)
    if predicts == "label_maps":
        if target.exists() and not target.is_dir():
            raise ConfigError(f"--predictions.path {path}: a file; segmentation writes a folder of PNGs there")
        check_writable("--predictions.path", target)
        return
    if target.is_dir():
        raise ConfigError(f"--predictions.path {path}: a folder; classification writes one CSV file "
                          f"(e.g. --predictions.path={target / 'predictions.csv'})")
    check_writable("--predictions.path", target.absolute().parent, path)  # the file is replaced by a rename there


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint's contents (tensors memory-mapped), or one ConfigError naming the
    file and what is wrong with it."""
    import torch

    file = Path(path)
    if not file.exists():
        raise ConfigError(f"--ckpt_path {path}: no such file")
    if not file.is_file():
        raise ConfigError(f"--ckpt_path {path}: not a file")
    if file.stat().st_size == 0:
        raise ConfigError(f"--ckpt_path {path}: the file is empty (a save that was cut off?)")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except PermissionError:
        raise ConfigError(f"--ckpt_path {path}: not readable (permission denied)") from None
    except Exception as error:  # noqa: BLE001  (torch raises several types for a damaged file)
        raise ConfigError(f"--ckpt_path {path}: not a readable PyTorch checkpoint "
                          f"({type(error).__name__}); the file is damaged or of another kind") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "pytorch-lightning_version" not in checkpoint:
        raise ConfigError(f"--ckpt_path {path}: a PyTorch file, but not a Lightning checkpoint (no state_dict "
                          f"and pytorch-lightning_version); for weights alone use --model.init_args.backbone_weights")
    return checkpoint


def _canonical(value) -> str:
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    return json.dumps(value, sort_keys=True, default=str)


def resume_changes(hparams: dict, model) -> dict[str, tuple[object, object]]:
    """{option: (in the checkpoint, on this command line)} for the model options that differ.
    ``model`` is the config's ``model`` (``class_path`` + ``init_args``); ``num_classes`` is
    linked from the data and checked once the data module exists."""
    saved = {k: v for k, v in hparams.items() if k not in ("_instantiator", "_class_path", "num_classes")}
    given = model.init_args.as_dict()
    changes = {}
    saved_class, given_class = hparams.get("_class_path"), model.class_path
    if saved_class and saved_class != given_class:
        changes["class_path"] = (saved_class, given_class)
    for key, value in saved.items():
        if key in given and _canonical(value) != _canonical(given[key]):
            changes[key] = (value, given[key])
    return changes


def check_resume(hparams: dict, model, allowed: list[str], subcommand: str = "fit") -> dict[str, tuple[object, object]]:
    """Refuse to load a checkpoint with model options other than its own, except ``allowed``,
    :data:`SPEED_OPTIONS` (the same weights, only faster or slower) and, outside ``fit``,
    :data:`EVALUATION_OPTIONS` and :data:`TRAINING_OPTIONS`. Returns the training options that
    differ outside ``fit`` (for a note), else {}."""
    allowed = {key.removeprefix("model.init_args.") for key in allowed} | set(SPEED_OPTIONS)
    if subcommand != "fit":
        allowed |= set(EVALUATION_OPTIONS) | set(TRAINING_OPTIONS)
    changes = resume_changes(hparams, model)
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: {_canonical(old)} in the checkpoint, {_canonical(new)} here"
                           for k, (old, new) in refused.items())
        loads = "resumes a run" if subcommand == "fit" else f"loads the model that {subcommand} runs"
        raise ConfigError(
            f"--ckpt_path {loads}, and this command line changes its model: {listed}. Drop these options "
            f"to use it as it was, allow a change on purpose with --resume.allow_changed=[{','.join(refused)}] "
            f"(e.g. a lower lr), or start a new run from its weights with --model.init_args.backbone_weights")
    return {k: v for k, v in changes.items() if subcommand != "fit" and k in TRAINING_OPTIONS}


def training_options_note(subcommand: str, changes: dict[str, tuple[object, object]]) -> str:
    """One line saying which training-only options differ from the checkpoint's, and that
    ``subcommand`` does not use them."""
    listed = ", ".join(f"{k} {_canonical(old)} -> {_canonical(new)}" for k, (old, new) in changes.items())
    return f"[ctxlit] {subcommand}: training-only options differ from the checkpoint's ({listed}); not used here"


def config_files(argv: list[str]) -> list[str]:
    """The values of every ``--config``/``-c`` in ``argv``."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith(("--config=", "-c=")):
            files.append(arg.split("=", 1)[1])
    return files


def check_config_files(argv: list[str]) -> None:
    """Each ``--config`` file exists and holds a YAML mapping: the parser would report an empty,
    list-shaped or malformed file without its path (``Unexpected config:``), which matters when
    a sweep passes two. A value that is not a path (an inline YAML string) is left to the parser."""
    from ctxlit.utils.yaml_files import YAMLFileError, load_yaml

    for value in config_files(argv):
        path = Path(value)
        if not path.exists():
            if value.endswith((".yaml", ".yml", ".json")):
                raise ConfigError(f"--config {value}: no such file")
            continue
        if not path.is_file():
            raise ConfigError(f"--config {value}: not a file")
        try:
            content = load_yaml(path.read_text())
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--config {value}: cannot be read ({err})") from None
        except YAMLFileError as err:
            raise ConfigError(f"--config {value}: {err}") from None
        if not isinstance(content, dict) or not content:
            shape = "empty" if content is None or content == {} else f"a {type(content).__name__}"
            raise ConfigError(f"--config {value}: is {shape}; a config file holds a mapping of options "
                              f"(e.g. `trainer: {{max_epochs: 5}}`)")
