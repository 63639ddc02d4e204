"""YAML that ctxlit reads from the user (``--config`` files, sweep files), strictly and boundedly.

Plain ``yaml.safe_load`` lets the last of two equal keys win without a word, and builds an
alias-laden file ("billion laughs": each level ten aliases of the one before) as a small graph of
shared objects that anything walking it afterwards (jsonargparse, a JSON dump) expands into
billions of values: 77 s and a MemoryError. :func:`load_yaml` refuses both, with one line:

- a key given twice in one mapping, named with both lines (merge keys ``<<`` may be overridden);
- a document whose aliases expand past :data:`MAX_EXPANDED_VALUES` values, counted on the
  composed node graph before anything is built (each node's size computed once: milliseconds).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

#: Values (scalars, lists and mappings) a document may hold once its aliases are expanded. A
#: config or a sweep file holds hundreds; a "billion laughs" file, 10**9.
MAX_EXPANDED_VALUES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLFileError(ValueError):
    """YAML that ctxlit refuses; the message is one line, without the file's name."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            _refuse_duplicates(self, node)
        return super().construct_mapping(node, deep=deep)


def _refuse_duplicates(loader: yaml.SafeLoader, node: MappingNode) -> None:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            line = first_line.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key (a list): yaml refuses it itself
            continue
        if line != key_node.start_mark.line + 1:
            raise ConstructorError(f"duplicate key {key!r}", None,
                                   f"at line {key_node.start_mark.line + 1} (first at line {line})", key_node.start_mark)


def expanded_size(node: Node, sizes: dict[int, int] | None = None) -> int:
    """The number of values ``node`` stands for with every alias expanded; each distinct node
    is counted once (``sizes`` memoises by identity), so a billion laughs costs microseconds."""
    sizes = {} if sizes is None else sizes
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a recursive alias (a list holding itself) counts once, not forever
    if isinstance(node, SequenceNode):
        children = node.value
    elif isinstance(node, MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = []
    sizes[id(node)] = min(1 + sum(expanded_size(child, sizes) for child in children), MAX_EXPANDED_VALUES + 1)
    return sizes[id(node)]


def _one_line(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else f": {problem}"


def load_yaml(text: str) -> Any:
    """The document in ``text`` as ``yaml.safe_load`` gives it, or :class:`YAMLFileError`: not
    valid YAML, a duplicate key, or aliases expanding past :data:`MAX_EXPANDED_VALUES`."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > MAX_EXPANDED_VALUES:
            raise YAMLFileError(f"its aliases (*name) expand to more than {MAX_EXPANDED_VALUES:,} values; "
                                f"refused (a 'billion laughs' file?)")
        return loader.construct_document(node)
    except ConstructorError as err:
        if str(err.context).startswith("duplicate key"):
            raise YAMLFileError(f"{err.context} {err.problem}") from None
        raise YAMLFileError(f"not valid YAML{_one_line(err)}") from None
    except yaml.YAMLError as err:
        raise YAMLFileError(f"not valid YAML{_one_line(err)}") from None
    except RecursionError:
        raise YAMLFileError("nested too deeply to read") from None
    finally:
        loader.dispose()
