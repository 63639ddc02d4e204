"""Parameter and FLOP counts for any model.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts the operators
that dominate CNN and attention cost: convolutions, ``mm``/``addmm``/``bmm``/``baddbmm`` and
the fused ``scaled_dot_product_attention`` kernels, with a multiply-add counted as 2 FLOPs.
Unlike module-hook counters it sees the matmuls inside attention blocks (Non-local, GC,
GloRe), which hook-based counters silently skip.

Some torch releases dispatch SDPA on CPU to ``aten._scaled_dot_product_flash_attention_for_cpu``,
which the counter's table lacks (torch 2.14 counts it as 0 FLOPs). ``FLOP_FORMULAS_MISSING``
adds the standard attention formula for every such kernel, so attention is counted on every path
(math, flash, efficient, cuDNN, CPU flash); ``tests/blocks/test_blocks_flops.py`` checks each.

It does *not* count element-wise work: activations, normalisation layers, softmax, pooling,
additions and multiplications by gates. ``NOTE_NOT_COUNTED`` says so in every report.

Papers (ResNet's "4.1 GFLOPs", SKNet, GCNet) usually quote multiply-adds; ``macs`` gives
that figure (``flops / 2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

NOTE_NOT_COUNTED = (
    "FLOPs from torch.utils.flop_counter: conv, matmul/bmm and SDPA, multiply-add = 2 FLOPs; "
    "element-wise ops (activations, norms, softmax, pooling, gating) are not counted"
)


def _sdpa_forward_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _missing_sdpa_formulas() -> dict:
    """Formulas for the SDPA kernels of this torch that ``flop_counter`` does not count."""
    kernels = {
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_forward_flops,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward_flops,
    }
    formulas = {}
    for name, formula in kernels.items():
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            formulas[op] = formula
    return formulas


#: ``custom_mapping`` for ``FlopCounterMode``: empty once torch counts these kernels itself.
FLOP_FORMULAS_MISSING = _missing_sdpa_formulas()


def flop_counter_mode() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the SDPA kernels torch's table misses."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS_MISSING)


@dataclass(frozen=True)
class Complexity:
    params: int
    trainable_params: int
    flops: int
    input_shape: tuple[int, ...]

    @property
    def macs(self) -> int:
        return self.flops // 2

    def as_dict(self) -> dict[str, float]:
        return {
            "params": self.params,
            "trainable_params": self.trainable_params,
            "flops": self.flops,
            "gflops": self.flops / 1e9,
            "gmacs": self.macs / 1e9,
        }


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one input of ``input_shape`` (batch dimension included).

    Runs one forward pass under ``torch.no_grad`` in eval mode (so BatchNorm uses running
    stats and nothing is updated), then restores the model's training flag.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        counter = flop_counter_mode()
        with torch.no_grad(), counter:
            model(torch.zeros(input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def measure_complexity(model: nn.Module, input_shape: tuple[int, ...]) -> Complexity:
    """Parameters and forward FLOPs of ``model`` for an input of ``input_shape`` (N, C, H, W)."""
    return Complexity(
        params=count_parameters(model),
        trainable_params=count_parameters(model, trainable_only=True),
        flops=count_flops(model, tuple(input_shape)),
        input_shape=tuple(input_shape),
    )
