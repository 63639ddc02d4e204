"""Global Context block (``gc``) and Simplified Non-local block (``snl``).

Paper: "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
Yue Cao, Jiarui Xu, Stephen Lin, Fangyun Wei, Han Hu, 2019, arXiv:1904.11492.

GCNet observes that Non-local attention maps are almost the same for every query position, so
one query-independent context vector per image suffices. Shapes for an input ``x`` of
``(N, C, H, W)``:

Simplified Non-local (``SimplifiedNonLocal``)::

    a = softmax_HW(W_k x)          (N, 1, H, W)   W_k: 1x1 conv C -> 1
    c = sum_j a_j x_j              (N, C, 1, 1)
    z = x + W_v c                  (N, C, H, W)   W_v: 1x1 conv C -> C (zero-initialised)

Global Context block (``GlobalContext``)::

    context   pooling="att": as above (N, C, 1, 1); pooling="avg": mean over H, W
    transform t = W2 ReLU(LN(W1 c))   W1: C -> C*ratio, LN over [C*ratio, 1, 1], W2: C*ratio -> C
    fusion    "add": x + t_add;  "mul": x * sigmoid(t_mul);  "both": x * sigmoid(t_mul) + t_add
              (two separate transforms for "both", as in the reference implementation)

Initialisation follows the paper: the last 1x1 conv of every transform is zero, so ``add``
starts as the identity. With ``fusion="mul"`` (or ``"both"``) the zero conv gives
``sigmoid(0) = 0.5``: the block starts as ``0.5 * x``, *not* the identity. That is the
paper's behaviour and is kept on purpose (see the GCNet ablation, where ``mul`` trails ``add``).

The attention softmax is computed in float32 so it stays finite under bf16/fp16 autocast.
Read-out: inside :func:`ctxlit.blocks.record_attention`, ``pooling="att"`` blocks and SNL
record the pooling weights ``a`` as ``(N, 1, H, W)`` (sums to 1 over H, W).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ctxlit.blocks._common import RecordsAttention, hidden_width
from ctxlit.utils.checks import check_choice

Pooling = Literal["att", "avg"]
Fusion = Literal["add", "mul", "both"]


def attention_pool(x: torch.Tensor, key: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax-weighted sum over positions: context (N, C, 1, 1) and weights (N, 1, H, W)."""
    n, _, h, w = x.shape
    weights = key(x).reshape(n, h * w).float().softmax(dim=-1).reshape(n, 1, h, w)
    # einsum handles channels_last strides without a copy; autocast picks the matmul dtype
    context = torch.einsum("nchw,nhw->nc", x, weights[:, 0].to(x.dtype))
    return context[:, :, None, None], weights


class SimplifiedNonLocal(RecordsAttention, nn.Module):
    """Simplified Non-local block: query-independent attention pooling + 1x1 transform, added."""

    spatial_operator = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.key = nn.Conv2d(channels, 1, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.key.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.key.bias)
        # zero W_v so the block starts as the identity, like Non-local's zero BN gamma
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, weights = attention_pool(x, self.key)
        if self._attention_sink is not None:
            self._record(weights)
        return x + self.value(context)


class GlobalContext(RecordsAttention, nn.Module):
    """Global Context block: context modelling, bottleneck transform, fusion.

    Args:
        channels: input and output channels C.
        ratio: bottleneck ratio, hidden width ``int(C * ratio)`` (paper: 1/16 default, 1/4).
        pooling: ``"att"`` (softmax attention pooling) or ``"avg"`` (global average pooling).
        fusion: ``"add"`` (x + t), ``"mul"`` (x * sigmoid(t)) or ``"both"``.
        layernorm: LayerNorm([C*ratio, 1, 1]) inside the transform (paper ablation: on).
    """

    spatial_operator = False

    def __init__(
        self,
        channels: int,
        *,
        ratio: float = 1 / 16,
        pooling: Pooling = "att",
        fusion: Fusion = "add",
        layernorm: bool = True,
    ) -> None:
        super().__init__()
        check_choice("pooling", pooling, Pooling, owner="GlobalContext")
        check_choice("fusion", fusion, Fusion, owner="GlobalContext")
        hidden = hidden_width("GlobalContext", "ratio", channels, ratio)
        self.channels, self.hidden = channels, hidden
        self.ratio, self.pooling, self.fusion, self.layernorm = ratio, pooling, fusion, layernorm
        self.key = nn.Conv2d(channels, 1, kernel_size=1) if pooling == "att" else None
        self.transform_add = self._transform(channels, hidden, layernorm) if fusion in ("add", "both") else None
        self.transform_mul = self._transform(channels, hidden, layernorm) if fusion in ("mul", "both") else None
        self.reset_parameters()

    @staticmethod
    def _transform(channels: int, hidden: int, layernorm: bool) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]) if layernorm else nn.Identity(),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def reset_parameters(self) -> None:
        if self.key is not None:
            nn.init.kaiming_normal_(self.key.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.key.bias)
        for transform in (self.transform_add, self.transform_mul):
            if transform is None:
                continue
            first, norm, _, last = transform
            first.reset_parameters()
            if isinstance(norm, nn.LayerNorm):
                norm.reset_parameters()
            nn.init.zeros_(last.weight)  # the paper's zero-initialised last layer
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.key is not None:
            context, weights = attention_pool(x, self.key)
            if self._attention_sink is not None:
                self._record(weights)
        else:
            context = x.mean(dim=(2, 3), keepdim=True)
        out = x
        if self.transform_mul is not None:
            out = out * torch.sigmoid(self.transform_mul(context))
        if self.transform_add is not None:
            out = out + self.transform_add(context)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, ratio={self.ratio}, pooling={self.pooling!r}, fusion={self.fusion!r}, "
            f"layernorm={self.layernorm}"
        )
