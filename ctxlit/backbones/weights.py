"""Load weights from a local checkpoint into a backbone (no downloads).

Accepts a plain state dict (``torch.save(model.state_dict())``, torchvision's ``.pth``
files), a dict holding one under ``state_dict`` / ``model`` / ``model_state_dict`` (Lightning
``.ckpt``, many training scripts), with any common key prefix (``module.``,
``model.backbone.``, ...): the prefix that makes most keys match the model is stripped (or,
for a plain backbone checkpoint loaded into a wrapper module, the wrapper's prefix is added).

A weights file never runs code: ``.safetensors`` files are read with the safetensors library,
anything else with ``torch.load(weights_only=True)``, which unpickles tensors and plain
containers only. A file that holds other pickled objects is refused with the command that
converts it (:data:`CONVERT_COMMAND`), for the user to run on a file they trust.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import shlex
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ctxlit.errors import ConfigError, CtxlitError

from .plugins import REPLACE_POSITIONS, describe_plugins

log = logging.getLogger("ctxlit.backbones")

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "net")

#: Harmless classes checkpoints pickle besides tensors: old Lightning versions saved the
#: hyper-parameters as an argparse Namespace, a plain attribute holder that runs no code on load.
SAFE_GLOBALS = [argparse.Namespace]

#: Run by the user, knowingly, on a file they trust that ``torch.load(weights_only=True)`` refuses:
#: unpickles it in full (which runs whatever code it holds) and keeps its tensors alone. The
#: README quotes it.
CONVERT_COMMAND = (
    'python -c "import sys, torch; o = torch.load(sys.argv[1], map_location=\'cpu\', weights_only=False); '
    "o = o.state_dict() if isinstance(o, torch.nn.Module) else o.get('state_dict', o); "
    'torch.save({{k: v for k, v in o.items() if isinstance(v, torch.Tensor)}}, sys.argv[2])" '
    "{path} {converted}"
)


class WeightsFileError(CtxlitError, FileNotFoundError):
    """The weights file does not exist; the message names the path. (A file that is not a
    checkpoint raises ``ConfigError``, a ``ValueError``.)"""


@dataclass
class LoadReport:
    """What ``load_weights`` did. ``str(report)`` is the readable summary."""

    path: str
    prefix: str
    added_prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    missing_plugins: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    outside_prefix: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Every backbone tensor came from the checkpoint (plugins aside) and nothing was skipped."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.path}" + (f" (prefix {self.prefix!r} stripped)" if self.prefix else "")
            + (f" (into {self.added_prefix!r})" if self.added_prefix else "")]
        if self.missing_plugins:
            mods = sorted({k.split(".plugins.")[0] + ".plugins" if ".plugins." in k else k.rsplit(".", 1)[0] for k in self.missing_plugins})
            lines.append(
                f"  expected: {len(self.missing_plugins)} plugin tensors not in the checkpoint "
                f"(newly initialised) in {len(mods)} modules: {_short(mods)}"
            )
        if self.missing:
            lines.append(f"  missing (kept their initialisation): {len(self.missing)}: {_short(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {len(self.unexpected)}: {_short(self.unexpected)}")
        if self.outside_prefix:
            groups = Counter(k.split(".")[0] for k in self.outside_prefix)
            desc = ", ".join(f"{g}.* ({n})" for g, n in groups.most_common())
            lines.append(f"  outside the backbone (ignored): {len(self.outside_prefix)} tensors: {desc}")
        if self.shape_mismatch:
            lines.append(
                "  shape mismatch (skipped, kept initialisation): "
                + "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.shape_mismatch)
            )
        return "\n".join(lines)


def _short(keys: list[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def _unpickle_tensors(path: str) -> Any:
    """``torch.load`` with ``weights_only=True``; a file it refuses (it names a class or function
    to import) is a ``ConfigError`` that says why and how to convert a trusted file."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if not named:  # not a pickle, or a damaged one
            why = str(err).split("WeightsUnpickler error:")[-1].strip().split("\n\n")[0]
            raise ConfigError(f"cannot read weights file {path}: not a PyTorch or safetensors file ({why})") from None
        converted = os.path.splitext(path)[0] + "-tensors.pth"
        raise ConfigError(
            f"weights file {path} holds pickled objects besides tensors (it names {named.group(1)}); "
            f"loading it would run the code it names, so it is refused. If you trust the file, keep its "
            f"tensors once with: {CONVERT_COMMAND.format(path=shlex.quote(path), converted=shlex.quote(converted))}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConfigError(f"cannot read weights file {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"cannot read weights file {path}: not a valid safetensors file ({err})") from None


def _read(path: str | os.PathLike) -> Mapping[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"weights file not found: {path}")
    obj = _read_safetensors(path) if path.endswith(".safetensors") else _unpickle_tensors(path)
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    for key in _NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(
            f"{path} contains no tensors (keys: {list(obj)[:10]}); expected a state dict or a checkpoint with 'state_dict'"
        )
    return tensors


def _prefix_votes(keys: list[str], targets: set[str]) -> Counter[str]:
    """For each key, the shortest leading ``a.b.`` whose removal makes it one of ``targets``."""
    votes: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in targets:
                votes[".".join(parts[:i]) + ("." if i else "")] += 1
                break
    return votes


def _best(votes: Counter[str]) -> tuple[str, int]:
    if not votes:
        return "", 0
    best = max(votes.values())
    return min((p for p, n in votes.items() if n == best), key=len), best


def _align(ckpt_keys: list[str], model_keys: set[str]) -> tuple[str, str]:
    """(prefix to strip from checkpoint keys, prefix to add) that matches the most keys.

    Stripping covers ``module.`` / ``model.backbone.`` checkpoints; adding covers loading a
    plain backbone checkpoint into a wrapper (``task.network.layer1...``).
    """
    strip, n_strip = _best(_prefix_votes(ckpt_keys, model_keys))
    add, n_add = _best(_prefix_votes(list(model_keys), set(ckpt_keys)))
    return (strip, "") if n_strip >= n_add else ("", add)


def _is_plugin_key(key: str, model: nn.Module, replaced: set[str]) -> bool:
    return ".plugins." in key or key.startswith("plugins.") or any(key.startswith(r + ".") for r in replaced)


def load_weights(
    model: nn.Module, path: str | os.PathLike, *, strict_shapes: bool = True, strict: bool = False
) -> LoadReport:
    """Load a torchvision or ctxlit checkpoint from ``path`` into ``model``.

    Keys are matched after stripping the prefix that matches most of them (``module.``,
    ``model.backbone.``, ...); checkpoint keys outside it (a Lightning module's head, say)
    are ignored and counted. Plugin tensors absent from a plain checkpoint are expected and
    reported as such. ``num_batches_tracked`` buffers absent from old checkpoints are not
    reported.

    Args:
        strict_shapes: refuse (``ValueError`` listing key and both shapes) any tensor whose
            shape differs; with ``False`` those tensors are skipped and reported (e.g. a
            classifier with another number of classes).
        strict: also refuse missing non-plugin tensors and unexpected tensors.

    Returns a :class:`LoadReport` (``str()`` gives the summary, also logged at INFO on the
    ``ctxlit.backbones`` logger).
    """
    state = _read(path)
    own = model.state_dict()
    prefix, added = _align(list(state), set(own))
    report = LoadReport(path=os.fspath(path), prefix=prefix, added_prefix=added)
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            report.outside_prefix.append(key)
            continue
        name = added + key[len(prefix):]
        if name not in own:
            report.unexpected.append(name)
        elif tuple(own[name].shape) != tuple(value.shape):
            report.shape_mismatch.append((name, tuple(value.shape), tuple(own[name].shape)))
        else:
            usable[name] = value
    if report.shape_mismatch and strict_shapes:
        detail = "\n".join(f"  {k}: checkpoint {a} vs model {b}" for k, a, b in report.shape_mismatch)
        raise ConfigError(
            f"weights in {report.path} do not fit the model ({len(report.shape_mismatch)} shape mismatches):\n{detail}\n"
            "pass strict_shapes=False to skip these tensors"
        )
    replaced = _replaced_convs(model)
    for name in own:
        if name in usable or not name.startswith(added):
            continue
        if _is_plugin_key(name, model, replaced):
            report.missing_plugins.append(name)
        elif name.endswith("num_batches_tracked") or any(name == k for k, _, _ in report.shape_mismatch):
            continue
        else:
            report.missing.append(name)
    if strict and (report.missing or report.unexpected):
        raise ConfigError(f"weights in {report.path} do not match the model strictly:\n{report}")
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    log.info("%s", report)
    return report


def _replaced_convs(model: nn.Module) -> set[str]:
    return {info.path for info in describe_plugins(model) if info.position in REPLACE_POSITIONS}
