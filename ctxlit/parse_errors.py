"""One line for a command-line or config error, instead of jsonargparse's Union dump.

A bad value under ``model`` or ``data`` (subclass mode, so a Union of classes) is reported by
jsonargparse as a 10-20-line tree of every Union member it tried, with the allowed values
buried inside. :func:`one_line` finds the option and what it allows in that tree::

    --model.init_args.block.init_args.fusion=bogus: allowed values are add, mul, both
    --model.init_args.blok: no such option of ctxlit.tasks.ClassificationTask; did you mean --model.init_args.block?
    --trainer.max_epoch: no such option; did you mean --trainer.max_epochs?

A message of another shape is returned unchanged.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import re

_NESTED = re.compile(r"Given value: NestedArg\(key='([^']+)', val='([^']*)'\)")
_TOP = re.compile(r'^Parser key "([^"]+)":')
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*?)\](?:\. Got value: (\S+?)\.?(?:\s|$)|\s*$)", re.M)


def _init_options(class_path: str) -> list[str]:
    """The keyword options of a class's ``__init__`` (and its bases', through ``**kwargs``)."""
    try:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


_UNRECOGNIZED = re.compile(r"^[Uu]nrecognized arguments: (.*)$", re.S)


def one_line(message: str, options: list[str] | None = None) -> str:
    """``message`` in one line; ``options`` (the parser's option strings) give an unknown
    option's closest spelling."""
    unrecognized = _UNRECOGNIZED.match(message.strip())
    if unrecognized and options:
        return _unknown_options(unrecognized.group(1), options) or message
    top = _TOP.match(message)
    given = _NESTED.findall(message)
    unaccepted = _SECTION_KEY.match(message)
    if unaccepted:
        return _unknown_section_key(*unaccepted.groups()) or message
    if not top or "Does not validate against any of the Union subtypes" not in message:
        return message
    if not given and _NOT_ACCEPTED.search(message):  # from a config file or a sweep's trial
        return _unknown_file_key(top.group(1), message)
    if not given:  # a plain option of a Union type, e.g. trainer.max_epochs: int | None
        return _plain(top.group(1), message)
    key, value = given[-1]  # the outermost: the option as the user gave it, below the top key
    dotted = f"{top.group(1)}.init_args.{key}" if top.group(1) in ("model", "data") else f"{top.group(1)}.{key}"
    unknown = _NOT_ACCEPTED.search(message)
    if unknown:
        owner = _CLASS.search(message)
        return _suggest(unknown.group(1), owner.group(1) if owner else top.group(1), f"--{dotted[: -len(unknown.group(1))]}")
    literals = _LITERAL.findall(message)
    if not literals:
        return message
    # The Literal that names the value given, else the first (a registry name was expected).
    allowed, got = next(((a, g) for a, g in literals if g), literals[0])
    choices = _choices(allowed)
    line = f"--{dotted}={value}: allowed values are {', '.join(choices)}"
    if not got and "Callable[[int]" in message:
        line += ", or a block class by its class_path (e.g. ctxlit.blocks.GlobalContext)"
    return line


def _unknown_options(given: str, options: list[str]) -> str | None:
    """``--trainer.max_epoch: no such option; did you mean --trainer.max_epochs?`` for the first
    unknown ``--option`` in ``given`` (argparse's "unrecognized arguments" list), or None."""
    for token in given.split():
        name = token.split("=", 1)[0]
        if not name.startswith("--"):
            continue
        section, _, key = name.rpartition(".")
        # the keys of the same section, compared without it (a shared prefix says nothing)
        keys = {o.rpartition(".")[2]: o for o in options if o.startswith("--") and o.rpartition(".")[0] == section}
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
        return f"{name}: no such option" + (f"; did you mean {keys[close[0]]}?" if close else "")
    return None


#: A key of a config file (or a sweep's trial) the parser has no option for, before the Union dump:
#: the classes and parser keys it went through, down to the option not accepted.
_PATH_STEP = re.compile(r"Problem with given class_path '([^']+)'|Parser key \"([^\"]+)\"")
_GOT_CLASS = re.compile(r"Got value: Namespace\(class_path='([^']+)'")
_SECTION_KEY = re.compile(r"^Subcommand '\w+' does not accept option '(\w+)\.([\w.]+)'$")
#: sections of the config that are one class's options, as ctxlit.cli adds them
_SECTION_CLASSES = {
    "trainer": "pytorch_lightning.Trainer",
    "checkpoint": "ctxlit.tasks.callbacks.BestAndLastCheckpoint",
    "summary": "ctxlit.tasks.callbacks.RunSummary",
    "attention": "ctxlit.tasks.attention_maps.AttentionMaps",
    "predictions": "ctxlit.tasks.predictions.PredictionWriter",
}
#: what a section without a class_path could name
_EXAMPLE_CLASS = {"model": "ctxlit.tasks.ClassificationTask", "data": "ctxlit.data.SyntheticContextDataModule"}


def _suggest(unknown: str, owner: str, prefix: str) -> str:
    """``<prefix><unknown>: no such option of <owner>``, with the closest option or the list."""
    options = _init_options(owner)
    close = difflib.get_close_matches(unknown, options, n=1)
    line = f"{prefix}{unknown}: no such option of {owner}"
    if close:
        return line + f"; did you mean {prefix}{close[0]}?"
    return line + (f" (its options: {', '.join(options)})" if options else "")


def _unknown_file_key(top: str, message: str) -> str:
    """``model.init_args.blok: no such option of ...; did you mean model.init_args.block?`` for a
    key written in a config file or a sweep (jsonargparse shows the whole section's value)."""
    unknown = _NOT_ACCEPTED.search(message)
    before, line_end = message[:unknown.start()], message.find("\n", unknown.end())
    path, owner = [top], None
    for class_path, key in _PATH_STEP.findall(before[_TOP.match(message).end():]):
        path.append("init_args" if class_path else key)
        owner = class_path or owner
    value_class = _GOT_CLASS.search(message[unknown.end():None if line_end < 0 else line_end])
    if value_class:  # a class option (block) given as class_path + init_args
        owner = value_class.group(1)
        path.append("init_args")
    if owner is None:
        return message
    line = _suggest(unknown.group(1), owner, ".".join(path) + ".")
    if owner.startswith("pytorch_lightning."):  # jsonargparse's stand-in when no class was named
        line += f"; the config names no {top}.class_path (e.g. {_EXAMPLE_CLASS.get(top, '...')})"
    return line


def _unknown_section_key(section: str, key: str) -> str | None:
    """``trainer.max_epoch: no such option of pytorch_lightning.Trainer; did you mean ...`` for a
    key of a config file (or a sweep's trial) in a section that is one class, or in none."""
    owner = _SECTION_CLASSES.get(section)
    if owner is not None:
        return None if "." in key else _suggest(key, owner, f"{section}.")
    close = difflib.get_close_matches(section, [*_SECTION_CLASSES, "model", "data", "resume"], n=1)
    return f"{section}.{key}: no such section{f'; did you mean {close[0]}.{key}?' if close else ''}"


_TYPE = re.compile(r"^\s*- Expected a <class '([\w.]+)'>", re.M)
_VALUE = re.compile(r"^\s*Given value: (.*)$", re.M)


def _plain(key: str, message: str) -> str:
    types = ["null" if t == "NoneType" else t for t in _TYPE.findall(message)]
    literals = [c for allowed, _ in _LITERAL.findall(message) for c in _choices(allowed)]
    value = _VALUE.findall(message)
    if not (types or literals) or not value:
        return message
    expected = " or ".join([*types, *(f"one of {', '.join(literals)}" for _ in [0] if literals)])
    return f"--{key}={value[-1]}: expected {expected}"


def _choices(allowed: str) -> list[str]:
    try:
        return [str(c) for c in ast.literal_eval(f"[{allowed}]")]
    except (ValueError, SyntaxError):
        return [allowed]
