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
The logits and the aggregation are two small autograd Functions with hand-written backwards
that accumulate gradients in one buffer each (autograd through 49 slices would allocate 49
full-size gradients) and save only q, the padded keys, the weights and the padded input.
``_reference_forward`` is the unfold version (tests and the benchmark compare the two).

Read-out: the aggregation weights ``w`` as ``(N, G, k*k, Ho, Wo)`` (sum to 1 over k*k).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctxlit.blocks._common import RecordsAttention, check_positive_options
from ctxlit.utils.checks import check_choice
from ctxlit.errors import ConfigError

Phi = Literal["squared_diff", "abs_diff", "product"]


def _window(t: torch.Tensor, i: int, j: int, stride: int, ho: int, wo: int) -> torch.Tensor:
    """Strided view of padded ``t`` at window offset (i, j): (..., Ho, Wo), no copy."""
    return t[..., i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]


def _appearance(phi: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Phi(q, k), the appearance composability term."""
    if phi == "squared_diff":
        return -(q - k).square()
    if phi == "abs_diff":
        return -(q - k).abs()
    return q * k


class _LocalLogits(torch.autograd.Function):
    """logits[:, :, o] = Phi(q, window_o(keys)) for the k*k offsets o, hand-written backward.

    Saves only q (N, G, Ho, Wo) and the padded keys (N, G, H + 2r, W + 2r); backward
    accumulates both gradients in place (no per-offset difference tensors, no per-slice
    full-size gradients).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, keys: torch.Tensor, phi: str, geometry: tuple[int, int, int, int]) -> torch.Tensor:
        k, stride, ho, wo = geometry
        ctx.phi, ctx.geometry = phi, geometry
        ctx.save_for_backward(q, keys)
        out = q.new_empty(q.shape[0], q.shape[1], k * k, ho, wo)
        for o in range(k * k):
            out[:, :, o] = _appearance(phi, q, _window(keys, o // k, o % k, stride, ho, wo))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        q, keys = ctx.saved_tensors
        k, stride, ho, wo = ctx.geometry
        grad_q, grad_keys = torch.zeros_like(q), torch.zeros_like(keys)
        for o in range(k * k):
            key_o, grad_o = _window(keys, o // k, o % k, stride, ho, wo), grad[:, :, o]
            grad_key_o = _window(grad_keys, o // k, o % k, stride, ho, wo)
            if ctx.phi == "product":
                grad_q.addcmul_(grad_o, key_o)
                grad_key_o.addcmul_(grad_o, q)
                continue
            diff = q - key_o
            d_q = diff.mul_(-2 * grad_o) if ctx.phi == "squared_diff" else diff.sign_().mul_(grad_o).neg_()
            grad_q.add_(d_q)
            grad_key_o.sub_(d_q)
        return grad_q, grad_keys, None, None


class _LocalAggregate(torch.autograd.Function):
    """y = sum_o w[:, :, o] * window_o(values), with a hand-written backward.

    Autograd through k*k slices of ``values`` would build one full-size zero gradient per
    slice; here backward accumulates into a single gradient buffer in place, and only
    ``weights`` and the padded ``values`` are saved.
    weights: (N, G, K, Ho, Wo); values: padded input (N, G, m, H + 2r, W + 2r).
    """

    @staticmethod
    def forward(ctx, weights: torch.Tensor, values: torch.Tensor, geometry: tuple[int, int, int, int]) -> torch.Tensor:
        k, stride, ho, wo = geometry
        ctx.geometry = geometry
        ctx.save_for_backward(weights, values)
        y = None
        for o in range(k * k):
            term = weights[:, :, o, None], _window(values, o // k, o % k, stride, ho, wo)
            y = torch.mul(*term) if y is None else y.addcmul_(*term)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        weights, values = ctx.saved_tensors
        k, stride, ho, wo = ctx.geometry
        grad_w = torch.empty_like(weights) if ctx.needs_input_grad[0] else None
        grad_v = torch.zeros_like(values, dtype=grad_y.dtype) if ctx.needs_input_grad[1] else None
        for o in range(k * k):
            i, j = o // k, o % k
            if grad_w is not None:
                grad_w[:, :, o] = (grad_y * _window(values, i, j, stride, ho, wo)).sum(dim=2)
            if grad_v is not None:
                _window(grad_v, i, j, stride, ho, wo).addcmul_(grad_y, weights[:, :, o, None])
        return grad_w, None if grad_v is None else grad_v.to(values.dtype), None


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
        check_choice("phi", phi, Phi, owner="LocalRelation")
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

    def _inside(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(1, 1, k*k, Ho, Wo) bool: which window positions fall inside the H x W image."""
        k, r = self.kernel_size, self.kernel_size // 2
        ho, wo = self._out_size(h, w)
        ones = torch.ones(1, 1, h, w, device=device)
        return F.unfold(ones, k, padding=r, stride=self.stride).reshape(1, 1, k * k, ho, wo) > 0

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
        logits = _LocalLogits.apply(q, keys, self.phi, (k, s, ho, wo))  # (N, G, k*k, Ho, Wo)
        logits = logits + self._geometry_prior().t()[None, :, :, None, None]
        weights = logits.masked_fill(~self._inside(h, w, x.device), float("-inf")).softmax(dim=2)
        y = _LocalAggregate.apply(weights, values, (k, s, ho, wo))
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
        logits = _appearance(self.phi, q, keys) + self._geometry_prior().t()[None, :, :, None, None]
        weights = logits.masked_fill(~self._inside(h, w, x.device), float("-inf")).softmax(dim=2)
        values = unfold(x).reshape(n, g, self.channels_per_group, kk, ho, wo)
        y = (weights[:, :, None] * values).sum(dim=3)
        return self._finish(weights, y.reshape(n, c, ho, wo), x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, kernel_size={self.kernel_size}, "
            f"channels_per_group={self.channels_per_group}, phi={self.phi!r}"
        )
