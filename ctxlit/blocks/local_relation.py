"""Local Relation layer (``lr``), a spatial operator replacing a 3x3 (or 7x7) conv.

Paper: "Local Relation Networks for Image Recognition", Han Hu, Zheng Zhang, Zhenda Xie,
Stephen Lin, 2019 (ICCV 2019), arXiv:1904.11491.

Shapes for ``x`` of ``(N, C, H, W)``, ``G = C / m`` aggregation groups (m channels per group
share one set of weights, m=8), ``k x k`` neighbourhood (k=7), ``K = k*k`` offsets, output
positions ``p'`` on the stride grid ``(Ho, Wo) = ((H-1)//stride + 1, (W-1)//stride + 1)``::

    q = W_q x, kmap = W_k x                    (N, G, H, W)   1x1 convs: one scalar per group
    a(p', p) = Phi(q_p', k_p)                  appearance composability, p in the k x k window
        squared_diff: -(q - k)^2 (default), abs_diff: -|q - k|, product: q * k
    g(p - p') = MLP(p - p')                    (K, G)  geometry prior: Linear(2, hidden), ReLU,
                                                        Linear(hidden, G) on relative (dy, dx)
    w(p', p) = softmax_p(a + g)                (N, G, K, Ho, Wo)  over the window
    y_p' = sum_p w(p', p) x_p                  (N, C, Ho, Wo)  per group, m channels share w
    out = W_out y                              (N, C_out, Ho, Wo)  1x1 conv

Window positions outside the image are excluded from the softmax (not zero-padded keys).
The relative offsets are a non-persistent buffer derived from k; the geometry MLP is a
regular submodule, so it is trained and saved (the seed code's positions were neither; its
``forward`` also referenced an undefined ``m`` and sized key/query maps with ``k``).

Memory: an unfold-based layer copies x k*k times (49x the activation at k=7), and keeps that
copy for backward. ``forward`` instead loops over the k*k offsets with strided views of the
padded input, so the only k*k-sized tensors are the weights, ``K * G = K * C / m`` values per
position (49/8 ~ 6x C at k=7, m=8), computed with one float32 softmax over the stacked logits.
``_reference_forward`` is the unfold version (tests and the benchmark compare the two).
The squared difference is evaluated as ``2qk - k^2 - q^2`` so autograd saves only views of q
and k instead of a per-offset difference tensor.

Read-out: the aggregation weights ``w`` as ``(N, G, k*k, Ho, Wo)`` (sum to 1 over k*k).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctxlit.blocks._common import RecordsAttention, check_choice, check_positive_options
from ctxlit.errors import ConfigError

Phi = Literal["squared_diff", "abs_diff", "product"]


class LocalRelation(RecordsAttention, nn.Module):
    """Local Relation layer: adaptive local aggregation weights from key/query relations.

    Args:
        in_channels, out_channels (default: in_channels), stride: as for the conv it replaces.
        kernel_size: k, odd (paper: 7).
        channels_per_group: m, channels sharing one aggregation weight (paper: 8).
        phi: appearance composability, ``"squared_diff"``, ``"abs_diff"`` or ``"product"``.
        geometry_hidden: hidden width of the geometry-prior MLP (the paper only says "small").
    """

    spatial_operator = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        *,
        kernel_size: int = 7,
        channels_per_group: int = 8,
        phi: Phi = "squared_diff",
        geometry_hidden: int = 32,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        check_choice("LocalRelation", "phi", phi, Phi)
        check_positive_options(
            "LocalRelation", stride=stride, channels_per_group=channels_per_group, geometry_hidden=geometry_hidden
        )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"LocalRelation: kernel_size must be a positive odd number; got {kernel_size}")
        if in_channels % channels_per_group:
            raise ConfigError(
                f"LocalRelation: in_channels={in_channels} must be divisible by channels_per_group={channels_per_group}"
            )
        groups = in_channels // channels_per_group
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_size, self.channels_per_group, self.groups = kernel_size, channels_per_group, groups
        self.phi, self.geometry_hidden = phi, geometry_hidden
        self.query = nn.Conv2d(in_channels, groups, kernel_size=1, bias=False)
        self.key = nn.Conv2d(in_channels, groups, kernel_size=1, bias=False)
        self.geometry = nn.Sequential(nn.Linear(2, geometry_hidden), nn.ReLU(inplace=True), nn.Linear(geometry_hidden, groups))
        r = kernel_size // 2
        dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        # (k*k, 2) relative (dy, dx), row-major like F.unfold; derived from k, so not saved
        self.register_buffer("offsets", torch.stack([dy, dx], dim=-1).reshape(-1, 2).float(), persistent=False)
        self.project = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.query, self.key, self.project, self.geometry[0], self.geometry[2]):
            module.reset_parameters()

    def _appearance(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.phi == "squared_diff":
            return -(q - k) ** 2
        if self.phi == "abs_diff":
            return -(q - k).abs()
        return q * k

    def _geometry_prior(self) -> torch.Tensor:
        """(k*k, G) float32 prior per offset and group."""
        return self.geometry(self.offsets.to(self.geometry[0].weight.dtype)).float()

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        return (h - 1) // self.stride + 1, (w - 1) // self.stride + 1

    def _finish(self, weights: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self._attention_sink is not None:
            self._record(weights)
        return self.project(y.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k, s, r, g = self.kernel_size, self.stride, self.kernel_size // 2, self.groups
        ho, wo = self._out_size(h, w)
        q = self.query(x)[:, :, ::s, ::s].float()
        keys = F.pad(self.key(x).float(), (r, r, r, r))
        values = F.pad(x, (r, r, r, r)).reshape(n, g, self.channels_per_group, h + 2 * r, w + 2 * r)
        inside = F.pad(torch.ones(1, 1, h, w, dtype=torch.bool, device=x.device), (r, r, r, r))
        prior = self._geometry_prior()

        def window(t: torch.Tensor, i: int, j: int) -> torch.Tensor:
            return t[..., i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s]

        if self.phi == "squared_diff":
            # -(q - k)^2 = 2qk - k^2 - q^2: autograd saves views of 2q and k, not per-offset diffs
            key_sq, q_sq, q_twice = keys * keys, q * q, 2 * q
        offsets = [(i, j) for i in range(k) for j in range(k)]
        logits = []
        for o, (i, j) in enumerate(offsets):
            k_o = window(keys, i, j)
            if self.phi == "squared_diff":
                a = q_twice * k_o - window(key_sq, i, j) - q_sq
            else:
                a = self._appearance(q, k_o)
            a = a + prior[o].reshape(1, g, 1, 1)
            logits.append(a.masked_fill(~window(inside, i, j), float("-inf")))
        weights = torch.stack(logits, dim=2).softmax(dim=2)  # (N, G, k*k, Ho, Wo) float32
        y = None
        for o, (i, j) in enumerate(offsets):
            term = weights[:, :, o, None] * window(values, i, j)
            y = term if y is None else y + term
        return self._finish(weights, y.reshape(n, c, ho, wo), x.dtype)

    def _reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Straightforward unfold version: materialises k*k copies of x (memory reference)."""
        n, c, h, w = x.shape
        k, s, r, g, kk = self.kernel_size, self.stride, self.kernel_size // 2, self.groups, self.kernel_size**2
        ho, wo = self._out_size(h, w)

        def unfold(t: torch.Tensor) -> torch.Tensor:
            return F.unfold(t, k, padding=r, stride=s).reshape(t.shape[0], t.shape[1], kk, ho, wo)

        q = self.query(x)[:, :, ::s, ::s].float()[:, :, None]
        keys = unfold(self.key(x).float())  # (N, G, K, Ho, Wo)
        inside = unfold(torch.ones(1, 1, h, w, device=x.device)) > 0
        logits = self._appearance(q, keys) + self._geometry_prior().t()[None, :, :, None, None]
        weights = logits.masked_fill(~inside, float("-inf")).softmax(dim=2)
        values = unfold(x).reshape(n, g, self.channels_per_group, kk, ho, wo)
        y = (weights[:, :, None] * values).sum(dim=3)
        return self._finish(weights, y.reshape(n, c, ho, wo), x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, kernel_size={self.kernel_size}, "
            f"channels_per_group={self.channels_per_group}, phi={self.phi!r}"
        )
