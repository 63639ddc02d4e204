"""Context and attention blocks, one file per block family, built by registry name.

Two kinds of block:

* **add-on blocks** map ``(N, C, H, W) -> (N, C, H, W)``; constructor
  ``Block(channels: int, *, <options>)``.
* **spatial operators** replace a 3x3 convolution; constructor
  ``Block(in_channels: int, out_channels: int | None = None, stride: int = 1, *, <options>)``.
  Their registry names are in :data:`SPATIAL_OPERATORS`; each class also has
  ``spatial_operator = True`` (``False`` for add-on blocks).

Options are plain ``int``/``float``/``bool``/``str`` values; options with a fixed set of values
are annotated ``typing.Literal[...]`` and checked at runtime (``ValueError`` naming the option
and the allowed values). A class can be bound to options and later called with the channel
count: ``functools.partial(GlobalContext, ratio=0.25)(256)``.

>>> block = build_block("gc", 256, fusion="mul")              # add-on block
>>> conv = build_block("sk", 64, out_channels=128, stride=2)  # spatial operator

Attention read-out
------------------
:func:`record_attention` is a context manager that makes every block inside ``model`` record
its attention during the forwards run in the ``with``; outside it nothing extra is computed or
kept::

    with record_attention(model, queries=[(0.5, 0.5), (0.1, 0.9)]) as maps:
        model(images)
    maps["layer3.5.gc"]      # (N, 1, H, W)

``maps`` is keyed by module name (``""`` when ``model`` is itself a block); values are detached
float32 tensors, last call wins. What each block records:

======== ======================== =====================================================
block    shape                    meaning
======== ======================== =====================================================
gc, snl  (N, 1, H, W)             attention-pooling weights, sum to 1 over H, W
                                  (``gc`` with ``pooling="avg"`` records nothing)
nl       (N, Q, Hk, Wk)           attention of each query position over the key
                                  positions (Hk, Wk halved with ``subsample``); rows sum
                                  to 1 for the (embedded) Gaussian modes. ``queries``
                                  are relative (y, x) in [0, 1], default
                                  :data:`DEFAULT_QUERIES`
glore    (N, nodes, H, W)         node projection B = theta(X) (pixel -> node weights)
se       (N, C)                   channel gates (sigmoid)
spm      (N, C, H, W)             spatial gates (sigmoid)
sk       (N, M, C_out)            branch weights, sum to 1 over the M branches
lr       (N, G, k*k, Ho, Wo)      aggregation weights per group, sum to 1 over k*k
mpm      --                       nothing (no attention-like map)
======== ======================== =====================================================
"""

from __future__ import annotations

import functools
import inspect

from torch import nn

from ctxlit.blocks._common import DEFAULT_QUERIES, record_attention
from ctxlit.blocks.global_context import GlobalContext, SimplifiedNonLocal
from ctxlit.blocks.glore import GloRe
from ctxlit.blocks.local_relation import LocalRelation
from ctxlit.blocks.non_local import NonLocal
from ctxlit.blocks.selective_kernel import SelectiveKernelConv
from ctxlit.blocks.squeeze_excite import SqueezeExcite
from ctxlit.blocks.strip_pooling import MixedPooling, StripPooling
from ctxlit.errors import ConfigError

__all__ = [
    "BLOCKS",
    "DEFAULT_QUERIES",
    "SPATIAL_OPERATORS",
    "GloRe",
    "GlobalContext",
    "LocalRelation",
    "MixedPooling",
    "NonLocal",
    "SelectiveKernelConv",
    "SimplifiedNonLocal",
    "SqueezeExcite",
    "StripPooling",
    "block_class",
    "block_factory",
    "build_block",
    "is_spatial_operator",
    "record_attention",
]

#: registry name -> block class
BLOCKS: dict[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "gc": GlobalContext,
    "snl": SimplifiedNonLocal,
    "nl": NonLocal,
    "glore": GloRe,
    "spm": StripPooling,
    "mpm": MixedPooling,
    "sk": SelectiveKernelConv,
    "lr": LocalRelation,
}

#: registry names of the blocks that replace a 3x3 conv (in_channels, out_channels, stride)
SPATIAL_OPERATORS: frozenset[str] = frozenset(name for name, cls in BLOCKS.items() if cls.spatial_operator)


def is_spatial_operator(block: str | type[nn.Module] | object) -> bool | None:
    """Whether a registry name or block class is a spatial operator (replaces a 3x3 conv), as
    the class declares it in ``spatial_operator``; ``None`` for a class that does not declare it."""
    cls = block_class(block) if isinstance(block, str) else block
    flag = getattr(cls, "spatial_operator", None)
    return flag if isinstance(flag, bool) else None


def block_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; ``ConfigError`` listing the names otherwise."""
    try:
        return BLOCKS[name]
    except KeyError:
        raise ConfigError(f"unknown block {name!r}; allowed names: {', '.join(sorted(BLOCKS))}") from None


def block_factory(name: str, **options) -> functools.partial:
    """``functools.partial(<the class of name>, **options)``, after checking the name and that
    the block has each option (``ConfigError`` listing the names, or the options it has).
    Add-on blocks are then called with ``channels``; spatial operators with ``in_channels``
    and ``out_channels``/``stride`` keywords."""
    cls = block_class(name)
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in list(params)[2:] if params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"block {name!r} has no option(s) {', '.join(unknown)}; allowed options: {', '.join(allowed) or 'none'}"
        )
    return functools.partial(cls, **options)


def build_block(name: str, channels: int, **options) -> nn.Module:
    """Build block ``name`` for ``channels`` input channels with keyword ``options``
    (spatial operators accept ``out_channels`` and ``stride`` among them); see :func:`block_factory`."""
    return block_factory(name, **options)(channels)
