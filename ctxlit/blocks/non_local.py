"""Non-local block (``nl``).

Paper: "Non-local Neural Networks", Xiaolong Wang, Ross Girshick, Abhinav Gupta, Kaiming He,
2018 (CVPR 2018), arXiv:1711.07971.

Shapes for ``x`` of ``(N, C, H, W)``, ``L = H*W``, ``Ci = C / reduction`` (paper: C/2)::

    theta = W_theta x, phi = W_phi x, g = W_g x      1x1 convs C -> Ci, each (N, Ci, H, W)
    subsample: phi, g <- maxpool2x2(phi), maxpool2x2(g)   key positions Lk = L or ~L/4
    f  (N, L, Lk)  pairwise function, one of
        embedded_gaussian  softmax_j(theta_i . phi_j)                       (default)
        gaussian           softmax_j(x_i . x_j)         (no theta/phi: raw features)
        dot_product        (theta_i . phi_j) / Lk
        concatenation      ReLU(w_f . [theta_i, phi_j]) / Lk      w_f: 2*Ci -> 1
    y  = f g                                         (N, Ci, H, W)
    z  = x + BN(W_z y)                               W_z: 1x1 conv Ci -> C, BN gamma = 0

As in the paper there is no 1/sqrt(d) scaling of the logits; ``scaled=True`` adds it (only for
the two softmax modes). BN's gamma starts at 0 so the block starts as the identity.

Fast paths (``forward``): the embedded-Gaussian and Gaussian forms are exactly
``scaled_dot_product_attention(theta, phi, g, scale=1)``; its fused kernels (flash attention on
CPU, flash / memory-efficient on GPU) never keep the L x Lk matrix, which at Cityscapes
resolution would not fit. They need a unit-stride feature dim: theta, phi and g are computed
as one matrix product on the token matrix (their 1x1 convs' weights stacked), which yields
exactly that layout with no copy per projection, and the output 1x1 conv is a matrix product
on the attention output's tokens. For the Gaussian form q/v widths must match (g is
zero-padded to C and the result sliced). On CPU, small maps with wide heads go through the
explicit softmax instead, by a measured crossover (``EXPLICIT_MIN_DIM``, ``EXPLICIT_MAX_PAIRS``).
The dot-product form is computed as ``theta (phi^T g) / Lk``, linear in L. Concatenation has
no shortcut. ``_reference_forward`` always computes the explicit pairwise matrix (tests and
the benchmark compare).

Read-out: attention of chosen query positions (relative (y, x) from
:func:`ctxlit.blocks.record_attention`) over the key positions, ``(N, Q, Hk, Wk)``. GCNet's
observation is that these maps are nearly the same for every query.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctxlit.blocks._common import RecordsAttention, memory_format_of, query_indices, reduced_width
from ctxlit.utils.checks import check_choice
from ctxlit.errors import ConfigError

#: CPU crossover between SDPA's fused (flash) kernel and the explicit L x Lk softmax, measured
#: forward+backward with one thread (torch 2.14, a 2-core EPYC): with head dim 128 or 512 the
#: explicit path took 0.6-0.8x the fused time for L = 64..1600 (parity at 3136); with head
#: dim 32 it took 1.3-2x from L = 196 on. With head dim 256 (C = 512, a segmentation head)
#: at batch 1, the fused path took 1.02-1.08x the explicit time at L = 1536 and 2048 and
#: 0.82-0.88x from L = 3072 on (at batch 2 and L = 2048 already 0.91x), so the explicit path
#: is capped at 2^22 pairs (L = Lk = 2048, a 16 MB map per image kept for backward); above,
#: only the fused path's memory is O(L).
#: CUDA always takes the fused kernels.
EXPLICIT_MIN_DIM, EXPLICIT_MAX_PAIRS = 64, 1 << 22


def _fused(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether softmax attention goes through SDPA (else the explicit, materialised map)."""
    if query.device.type != "cpu":
        return True
    return query.shape[-1] < EXPLICIT_MIN_DIM or query.shape[1] * key.shape[1] > EXPLICIT_MAX_PAIRS


Mode = Literal["embedded_gaussian", "gaussian", "dot_product", "concatenation"]
SOFTMAX_MODES = ("embedded_gaussian", "gaussian")


class NonLocal(RecordsAttention, nn.Module):
    """Non-local block (2-D).

    Args:
        channels: input and output channels C.
        mode: pairwise function (see module docstring).
        reduction: inner width ``C // reduction`` (paper: 2).
        subsample: 2x2 max-pool on phi and g (paper's cheaper variant, Lk ~ L/4).
        scaled: divide the softmax logits by sqrt(d) like a Transformer (paper: off).
    """

    spatial_operator = False

    def __init__(
        self,
        channels: int,
        *,
        mode: Mode = "embedded_gaussian",
        reduction: int = 2,
        subsample: bool = False,
        scaled: bool = False,
    ) -> None:
        super().__init__()
        check_choice("mode", mode, Mode, owner="NonLocal")
        inter = reduced_width("NonLocal", "reduction", channels, reduction)
        if scaled and mode not in SOFTMAX_MODES:
            raise ConfigError(f"NonLocal: scaled=True needs mode 'embedded_gaussian' or 'gaussian'; got mode={mode!r}")
        self.channels, self.inter = channels, inter
        self.mode, self.reduction, self.subsample, self.scaled = mode, reduction, subsample, scaled
        self.g = nn.Conv2d(channels, inter, kernel_size=1)
        if mode != "gaussian":
            self.theta = nn.Conv2d(channels, inter, kernel_size=1)
            self.phi = nn.Conv2d(channels, inter, kernel_size=1)
        else:
            self.theta = self.phi = None
        # w_f = [w_theta, w_phi] acting on the concatenation [theta_i, phi_j]
        self.concat_project = nn.Parameter(torch.empty(2 * inter)) if mode == "concatenation" else None
        self.out = nn.Conv2d(inter, channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.g, self.theta, self.phi, self.out):
            if conv is not None:
                conv.reset_parameters()
        if self.concat_project is not None:
            bound = 1 / math.sqrt(2 * self.inter)
            nn.init.uniform_(self.concat_project, -bound, bound)
        self.bn.reset_parameters()
        nn.init.zeros_(self.bn.weight)  # paper: BN gamma 0, the block starts as the identity

    @property
    def scale(self) -> float:
        dim = self.channels if self.mode == "gaussian" else self.inter
        return 1 / math.sqrt(dim) if self.scaled else 1.0

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Queries (N, L, D), keys (N, Lk, D), values (N, Lk, Ci) and the key grid (Hk, Wk).

        theta, phi and g are ONE matrix product on the token matrix (N*L, C) with their
        weights stacked, so the three come out token-major with a unit-stride feature dim
        (what SDPA's fused kernels need) without a copy each; only x is copied to tokens
        (no copy for channels_last input). Same FLOPs as the three 1x1 convs.
        """
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2).contiguous()  # (N, L, C)
        convs = [m for m in (self.theta, self.phi, self.g) if m is not None]
        weight = torch.cat([m.weight.reshape(m.out_channels, c) for m in convs])  # (k * Ci, C)
        bias = torch.cat([m.bias for m in convs])
        proj = torch.addmm(bias, tokens.reshape(n * h * w, c), weight.t()).reshape(n, h * w, -1)
        parts = list(proj.split(self.inter, dim=-1))  # (N, L, Ci) views, feature stride 1
        value = parts.pop()
        query, key = parts if parts else (tokens.to(value.dtype), tokens.to(value.dtype))
        key_grid = (h, w)
        if self.subsample:  # 2x2 max-pool of keys and values, run on their spatial view
            def pool(t: torch.Tensor) -> torch.Tensor:
                grid = t.transpose(1, 2).reshape(n, t.shape[-1], h, w)  # channels_last strides
                pooled = F.max_pool2d(grid, 2)
                return pooled.flatten(2).transpose(1, 2).contiguous()

            key, value = pool(key), pool(value)
            key_grid = (h // 2, w // 2)
        return query, key, value, key_grid

    def _pairwise(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """f(query_i, key_j): (N, Lq, Lk), explicit; softmax in float32."""
        n_keys = key.shape[1]
        if self.mode == "concatenation":
            w_q, w_k = self.concat_project.to(query.dtype).chunk(2)
            return torch.relu((query @ w_q)[:, :, None] + (key @ w_k)[:, None, :]) / n_keys
        if self.mode == "dot_product":
            return query @ key.transpose(1, 2) / n_keys
        # the scale goes on the (Lq, D) queries, not on the (Lq, Lk) logits: one pass over L x Lk
        # less each way, and none at all unscaled (the paper's default)
        scale = self.scale
        logits = (query if scale == 1 else query * scale) @ key.transpose(1, 2)
        return logits.softmax(dim=-1, dtype=torch.float32).to(logits.dtype)

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z = x + BN(W_z y): y (N, L, Ci) tokens; W_z as a matrix product on them (the 1x1 conv's
        weights and FLOPs), back to x's memory layout before BN."""
        n, c, h, w = x.shape
        z = torch.mm(y.reshape(n * h * w, self.inter), self.out.weight.reshape(c, self.inter).t())
        z = z.reshape(n, h, w, c).permute(0, 3, 1, 2)  # (N, C, H, W) view, channels_last strides
        return x + self.bn(z.contiguous(memory_format=memory_format_of(x)))

    def _record_queries(self, query: torch.Tensor, key: torch.Tensor, x: torch.Tensor, key_grid: tuple[int, int]) -> None:
        idx = query_indices(self._attention_queries, x.shape[-2], x.shape[-1])
        maps = self._pairwise(query[:, idx], key)
        self._record(maps.reshape(x.shape[0], len(idx), *key_grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value, key_grid = self._qkv(x)
        if self._attention_sink is not None:
            self._record_queries(query, key, x, key_grid)
        if self.mode in SOFTMAX_MODES:
            y = self._attend(query, key, value) if _fused(query, key) else self._pairwise(query, key) @ value
        elif self.mode == "dot_product":
            y = query @ (key.transpose(1, 2) @ value) / key.shape[1]
        else:
            y = self._pairwise(query, key) @ value
        return self._finish(x, y)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """softmax(scale * q k^T) v through SDPA's fused kernels.

        The tokens go in as one head, (N, 1, L, D): some torch releases (2.13) send 3-D inputs
        to the math kernel, which materialises the L x Lk matrix the fused kernels avoid.
        """
        query, key, value = query[:, None], key[:, None], value[:, None]
        extra = query.shape[-1] - value.shape[-1]
        if extra > 0:
            # Gaussian mode: q, k are x (C dims), v is g (Ci dims). The fused kernels want equal
            # head dims (else the math path materialises L x Lk), so pad v with zeros and slice.
            out = F.scaled_dot_product_attention(query, key, F.pad(value, (0, extra)), scale=self.scale)[..., : -extra]
        else:
            out = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        return out[:, 0]

    def _reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Explicit version: materialises the (N, L, Lk) pairwise matrix."""
        query, key, value, _ = self._qkv(x)
        return self._finish(x, self._pairwise(query, key) @ value)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, mode={self.mode!r}, reduction={self.reduction}, subsample={self.subsample}, "
            f"scaled={self.scaled}"
        )
