"""Optimisers and learning-rate schedules shared by the tasks."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

OptimizerName = Literal["sgd", "adamw"]


#: Layers whose parameters are scales and shifts, not weights to shrink.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, weight_decay: float, lr: float,
                     pretrained: frozenset[int] = frozenset(), pretrained_lr_ratio: float = 1.0) -> list[dict]:
    """Weight decay on weights; none on biases and normalisation parameters; the parameters
    whose ``id`` is in ``pretrained`` at ``lr * pretrained_lr_ratio``. Frozen parameters
    (``requires_grad=False``) are left out. Empty groups are dropped.

    Decided by module type and name, not by ``ndim``: GC's ``LayerNorm([C, 1, 1])`` has 3-D
    parameters, and some 1-D parameters are real weights (Non-local's concat projection).
    """
    groups: dict[tuple[bool, bool], list] = {(d, p): [] for d in (True, False) for p in (False, True)}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                decays = not (isinstance(module, NORM_LAYERS) or name == "bias")
                groups[decays, id(param) in pretrained].append(param)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0,
             "lr": lr * (pretrained_lr_ratio if is_pretrained else 1.0)}
            for (decays, is_pretrained), params in groups.items() if params]


def build_optimizer(
    model: nn.Module, name: OptimizerName, lr: float, momentum: float, weight_decay: float,
    pretrained: frozenset[int] = frozenset(), pretrained_lr_ratio: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over :func:`parameter_groups`."""
    groups = parameter_groups(model, weight_decay, lr, pretrained, pretrained_lr_ratio)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr)


#: Warm-up never takes more than this share of a run's optimizer steps, so a short sweep trial
#: (one epoch with ``warmup_epochs: 1``) still spends most of its budget at full and decaying
#: learning rate instead of ending at peak LR. The default run (64 of 640 steps) sits at the cap.
MAX_WARMUP_FRACTION = 0.1


def budgeted_warmup(requested_steps: int, total_steps: int) -> int:
    """``requested_steps`` of warm-up, capped at ``MAX_WARMUP_FRACTION`` of ``total_steps``."""
    return max(0, min(requested_steps, int(MAX_WARMUP_FRACTION * total_steps)))


def with_warmup(decay: Callable[[float], float], warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor per step: linear from 1/(warmup+1) to 1 over ``warmup_steps``, then
    ``decay(t)`` with ``t`` going from 0 to 1 over the remaining steps (and staying at 1)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return decay(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return factor


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Warmup, then a cosine from 1 down to ``min_ratio``."""
    return with_warmup(lambda t: min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)),
                       warmup_steps, total_steps)


def warmup_poly(warmup_steps: int, total_steps: int, power: float = 0.9) -> Callable[[int], float]:
    """Warmup, then ``(1 - t) ** power`` (the segmentation "poly" schedule)."""
    return with_warmup(lambda t: (1.0 - t) ** power, warmup_steps, total_steps)


class StepSchedule(torch.optim.lr_scheduler.LambdaLR):
    """A per-step ``LambdaLR`` that remembers the learning rates its optimizer was configured
    with (``configured_lrs``, one per parameter group), which a checkpoint does not overwrite:
    :func:`resume_schedule` rebuilds the schedule from them."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> None:
        self.configured_lrs = [group["lr"] for group in optimizer.param_groups]
        super().__init__(optimizer, factor)

    def state_dict(self) -> dict:
        # this run's configuration, not state: a resume keeps the one it was configured with
        return {k: v for k, v in super().state_dict().items() if k != "configured_lrs"}

    def load_state_dict(self, state_dict: dict) -> None:
        configured = self.configured_lrs
        super().load_state_dict(state_dict)
        self.configured_lrs = configured


def step_schedule(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> dict:
    """A per-step :class:`StepSchedule` in Lightning's ``configure_optimizers`` format."""
    scheduler = StepSchedule(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def resume_schedule(trainer) -> list[tuple[float, float]]:
    """Set each per-step schedule's learning rates for the step training starts at, from this
    run's configured rates; returns the (checkpoint's, this run's) base rates that differ.

    A resumed run's optimizer and scheduler state bring back the old run's base rates
    (``base_lrs``, each group's ``initial_lr``), so a lr changed on purpose on resume
    (``--resume.allow_changed=[lr]``) would be ignored; and the learning rate of the old
    schedule's last step, which LambdaLR uses for the first step before recomputing it (when
    the run was extended, a larger ``max_epochs``, that rate belongs to the old schedule, e.g.
    0 at the end of a cosine). A fresh run's rates are unchanged (they are the schedule's own).
    """
    changed = []
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            continue
        if isinstance(scheduler, StepSchedule):
            changed += [(old, new) for old, new in zip(scheduler.base_lrs, scheduler.configured_lrs) if old != new]
            scheduler.base_lrs = list(scheduler.configured_lrs)
        for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * factor(scheduler.last_epoch)
    if changed and trainer.is_global_zero:
        rates = ", ".join(f"{old:g} -> {new:g}" for old, new in dict.fromkeys(changed))
        print(f"[ctxlit] resume: the schedule goes on from this step with this run's learning rate "
              f"(the checkpoint's -> this run's: {rates})", file=sys.stderr)
    return changed
