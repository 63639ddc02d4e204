"""Speed switches shared by every task: ``compile`` and ``channels_last`` (one implementation).

Both are plain task options, so each is one dotted key in YAML, on the command line and in a
sweep (``--model.init_args.compile=true``, ``--model.init_args.channels_last=true``). Neither
changes what is computed, only how fast: the loss of a step is the same up to float rounding.

- ``compile``: ``torch.compile`` on the network that takes the images, compiled in place
  (``nn.Module.compile``). ``torch.compile(module)`` would wrap it in an ``OptimizedModule``
  whose state dict prefixes every name with ``_orig_mod.``; in place, the names stay those of
  the plain network, so a checkpoint moves freely between ``compile: true`` and ``false``.
  The first steps pay for the compilation (seconds to minutes); it pays off on long GPU runs.
- ``channels_last``: every 4-D parameter and buffer of the task in NHWC order, and the images
  converted on their way into the network (a forward pre-hook, so training, evaluation,
  sliding windows, multi-scale inference and predict all get it, whoever calls the network).
  With ``precision: bf16-mixed`` on a GPU this is what lets cuDNN pick its fast NHWC kernels.

Weight averaging (EMA) is not a task option: it is Lightning's ``EMAWeightAveraging``
callback, listed under ``trainer.callbacks`` (see the configs in ``experiments/``).
"""

from __future__ import annotations

import torch
from torch import nn


def apply_speed_switches(task: nn.Module, network: nn.Module, *, compile: bool, channels_last: bool) -> None:
    """Apply the switches to ``task`` (all its parameters) and ``network`` (the module the images
    go into, and the one compiled). Call it at the end of the task's ``__init__``, when every
    layer exists. With both off nothing changes."""
    if channels_last:
        task.to(memory_format=torch.channels_last)
        network.register_forward_pre_hook(_images_channels_last)
    if compile:
        network.compile()


def _images_channels_last(module: nn.Module, args: tuple) -> tuple:
    """The 4-D tensors among the network's inputs in channels_last (no copy if they already are).
    A module-level function, not a closure: the task stays picklable and deep-copyable (the EMA
    callback copies it)."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)
