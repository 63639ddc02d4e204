"""What ``python -m ctxlit.fit --help`` shows below Lightning's page: the options of the task
and data module the config chose, spelled as configs, sweeps and the README write them.

In subclass mode jsonargparse lists the model as one entry (``--model CONFIG |
CLASS_PATH_OR_NAME | .INIT_ARG_NAME VALUE``) and prints its options only under ``--model.help
CLASS``, spelled ``--model.lr``. This page adds, for the classes named by the config (and by any
flag before ``--help``), each option as ``--model.init_args.lr`` with the value this run would
use as its default::

    Options of the task, ctxlit.tasks.ClassificationTask (from the config; ...):
      ...
      --model.init_args.lr LR
                            peak learning rate, reached after warmup. (type:
                            float, default: 0.2)
"""

from __future__ import annotations

import argparse
import contextlib
import pydoc

from jsonargparse import ArgumentParser, Namespace

#: the sections of the page: the config key and what it holds
SECTIONS = (("model", "task"), ("data", "data module"))


class HelpWithClassOptions(argparse._HelpAction):
    """``-h/--help``: the parser's help, then :func:`class_options_help` of what was parsed so far
    (the config inserted before ``--help``, and flags given before it). A subclass of argparse's
    own help action: jsonargparse looks that type up for the tip under an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        extra = class_options_help(namespace)
        if extra:
            print(f"\n{extra}")
        parser.exit()


def class_options_help(namespace) -> str:
    """The ``init_args`` options of the classes at ``model`` and ``data`` in ``namespace``, as
    help sections; "" when neither names a class."""
    pages = []
    for key, what in SECTIONS:
        value = namespace.get(key) if isinstance(namespace, Namespace) else None
        class_path = value.get("class_path") if isinstance(value, Namespace) else None
        cls = pydoc.locate(class_path) if class_path else None
        if isinstance(cls, type):
            title = (f"Options of the {what}, {class_path} (from the config; another {what}: "
                     f"--{key}=CLASS, its options: --{key}.help CLASS)")
            pages.append(f"{title}:\n{_options_of(cls, f'{key}.init_args', value.get('init_args'))}")
    return "\n\n".join(pages)


def _options_of(cls: type, prefix: str, given: Namespace | None) -> str:
    """``cls``'s options as help lines under ``--<prefix>.<name>``, ``given`` values as defaults."""
    parser = ArgumentParser(add_help=False)
    parser.add_class_arguments(cls, prefix, fail_untyped=False, sub_configs=True)
    for name, value in (given.items(branches=True, nested=False) if isinstance(given, Namespace) else ()):
        with contextlib.suppress(Exception):  # a value the help cannot show as a default keeps the class's
            parser.set_defaults({f"{prefix}.{name}": value})
    for action in parser._actions:  # argparse keeps them only there
        if "torch.nn.Module" in (getattr(action, "extra_help", lambda: "")() or ""):
            # every nn.Module subclass torch defines (~150 names) would be listed as "known"
            action.extra_help = _block_classes
    text = parser.format_help()
    # drop argparse's usage block: the page above has one, and the options follow here
    return text.split("\n\n", 1)[1].rstrip("\n") if "\n\n" in text else text


def _block_classes() -> str:
    from ctxlit.blocks import BLOCKS

    return ", blocks: " + ", ".join(f"ctxlit.blocks.{cls.__name__}" for cls in BLOCKS.values())
