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
import os
import pydoc
import sys

from jsonargparse import ArgumentParser, Namespace

#: the sections of the page: the config key and what it holds
SECTIONS = (("model", "task"), ("data", "data module"))


class HelpWithClassOptions(argparse._HelpAction):
    """``-h/--help``: ctxlit's page, with the values this run would use (the config inserted
    before ``--help`` and the flags given before it) as every option's default: ctxlit's own
    options, then :func:`class_options_help` of the chosen task and data module, and a line
    naming ``--help=full``, which adds Lightning's ~70 Trainer options after them.

    A subclass of argparse's own help action: jsonargparse looks that type up for the tip under
    an error. Its ``nargs`` is "?" (argparse's is 0) for the ``=full``."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):  # noqa: A002
        argparse.Action.__init__(self, option_strings=option_strings, dest=dest, default=default, nargs="?",
                                 metavar="full", help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        if values not in (None, "full"):
            parser.error(f"--help={values}: allowed values are none (ctxlit's options) and full (Lightning's too)")
        show_values_of_this_run(parser, namespace)
        page = ctxlit_help(parser, full=values == "full")
        extra = class_options_help(namespace)
        write_page(page.replace(CLASS_OPTIONS_HERE, f"{extra}\n\n" if extra else ""))
        parser.exit()


#: where :func:`ctxlit_help` puts the task's and data module's options, after ctxlit's own
CLASS_OPTIONS_HERE = "\0class options\0"
#: the section of Lightning's Trainer options
TRAINER = "trainer"


def _is_trainers(dest: str) -> bool:
    return dest == TRAINER or dest.startswith(f"{TRAINER}.")


def show_values_of_this_run(parser, namespace) -> None:
    """Make each option's shown default the value parsed so far (the config's, the flags'):
    argparse shows the parser's defaults, whatever the config says. The model's and data
    module's own options are shown by :func:`class_options_help`."""
    if not isinstance(namespace, Namespace):
        return
    for action in parser._actions:  # argparse keeps them only there
        if action.dest in (argparse.SUPPRESS, "model", "data") or action.dest not in namespace:
            continue
        value = namespace.get(action.dest)
        if isinstance(value, Namespace):  # a whole section (--trainer CONFIG) or a class: its keys show theirs
            continue
        if isinstance(value, list):
            value = [v.as_dict() if isinstance(v, Namespace) else v for v in value]
        action.default = value


def ctxlit_help(parser, full: bool) -> str:
    """The parser's help in this order: its general options, :data:`CLASS_OPTIONS_HERE` (the
    task's and data module's options go there), ctxlit's other sections, and Lightning's
    Trainer sections only when ``full`` (else one line naming them)."""
    groups = parser._action_groups  # argparse keeps them only there; restored below
    trainer = [g for g in groups if g._group_actions and all(_is_trainers(a.dest) for a in g._group_actions)]
    ours = [g for g in groups if g not in trainer and g._group_actions]  # the first: general options
    saved = parser.usage, parser.description, parser.epilog
    count = sum(len(g._group_actions) for g in trainer)

    def section(action_groups, usage=argparse.SUPPRESS, description=None) -> str:
        parser._action_groups, parser.usage, parser.description = action_groups, usage, description
        return parser.format_help().strip("\n") + "\n\n"

    parser.epilog = None
    try:
        usage = f"{parser.prog} [--config FILE] [--SECTION.KEY=VALUE ...] [--help[=full]]"
        page = section(ours[:1], usage, saved[1]) + CLASS_OPTIONS_HERE + section(ours[1:])
        if full:
            page += section(trainer)
        else:
            page += (f"Lightning's Trainer options (--trainer.*, {count} of them; the config sets the usual ones): "
                     f"--help=full\n")
    finally:
        parser._action_groups = groups
        parser.usage, parser.description, parser.epilog = saved
    return page


def write_page(text: str) -> None:
    """Print ``text``; a reader that stops early (``--help | head``) ends it without a
    BrokenPipeError traceback (Python's documented handling: stdout to devnull, then exit)."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush at exit would fail again
        sys.exit(0)


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
