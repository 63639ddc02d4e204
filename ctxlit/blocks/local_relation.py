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
copy for backward. Here the only k*k-sized tensor is the weights, ``K * G = K * C / m`` values
per position (49/8 ~ 6x C at k=7, m=8): the logits of all offsets are computed into that
buffer (float32 at least) and soft-maxed in place. Logits, softmax and aggregation are ONE
autograd Function with a hand-written backward that keeps only q, the key map, x, the
weights and y (x and y are kept by the 1x1 convs anyway): ~8.4x the activation in all. The
aggregation and the backward work on views of the padded input, one window row (k offsets)
at a time, and accumulate each gradient in one buffer (autograd through 49 slices would
allocate 49 full-size gradients). Other temporaries are x-sized or at most about one image's
weights (the (G, K, Ho, Wo) logit bias; the backward's grad_y * x products for the k offsets
of a window row, max(1, N // k) images at a time).

Speed (CPU): at stride 1 the padded maps are laid out so that every window offset is one
contiguous run (see ``_grid``): each per-offset op is then a single long vectorised loop
instead of Ho short strided rows, which halves its cost; one window row of weights at a time
is copied onto that grid. The softmax runs in base 2 (``exp2`` is ~3x faster than ``exp`` on
CPU; log2(e) is folded into the logit ops). No batch-sized k*k buffer is allocated besides the
saved weights (a fresh multi-MB buffer costs page faults on every step). What remains is mostly
3 x k*k element-wise passes over x-sized tensors (aggregation, gradient of x, gradient of the
weights). ``_reference_forward`` is the unfold version (tests and the benchmark compare the
two).

Read-out: the aggregation weights ``w`` as ``(N, G, k*k, Ho, Wo)`` (sum to 1 over k*k).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctxlit.blocks._common import RecordsAttention, check_positive_options
from ctxlit.utils.checks import check_choice
from ctxlit.errors import ConfigError

Phi = Literal["squared_diff", "abs_diff", "product"]
_LOG2E = math.log2(math.e)  # softmax in base 2: e^l = 2^(l log2(e))


def _grid(k: int, stride: int, h: int, w: int) -> tuple[int, int, int, int, int]:
    """(Ho, Wo, Wg, Hp, Wp): output size, width of the grid computed on, padded input size.

    The input is padded with r = k // 2 zero columns on the LEFT only (a window running off the
    right edge wraps into the next row's left padding, which is zero as well), r rows on top
    and r + e at the bottom (e extra rows keep the last wrapped windows inside the buffer).
    At stride 1 the grid is Ho x Wp, so each window offset is ONE contiguous run of the
    flattened map and every op below is a long vectorised loop; the last r columns of each
    grid row are junk, computed and dropped (r / W extra work). At stride > 1 windows are
    strided anyway and the grid is Ho x Wo.
    """
    r = k // 2
    ho, wo, wp = (h - 1) // stride + 1, (w - 1) // stride + 1, w + r
    hp = h + 2 * r + -(-2 * r // wp)
    return ho, wo, (wp if stride == 1 else wo), hp, wp


def _pad(t: torch.Tensor, r: int, hp: int) -> torch.Tensor:
    """(..., H, W) -> (..., Hp, W + r) zero-padded as in :func:`_grid`, row-major contiguous."""
    h = t.shape[-2]
    return F.pad(t, (r, 0, r, hp - h - r)).contiguous()


def _pad_cols(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero columns on the right up to ``width`` (grid layout; junk columns 0), row-major: a
    channels_last operand would make the per-offset element-wise ops iterate in a poor order."""
    return (F.pad(t, (0, width - t.shape[-1])) if width > t.shape[-1] else t).contiguous()


def _offsets(t: torch.Tensor, k: int, stride: int, ho: int, wg: int) -> torch.Tensor:
    """(..., k, k, Ho, Wg) view of padded ``t`` (..., Hp, Wp): every window offset, no copy."""
    *lead, _, wp = t.shape
    strides = (*t.stride()[:-2], wp, 1, stride * wp, stride)
    return t.as_strided((*lead, k, k, ho, wg), strides, t.storage_offset())


def _window_rows(t: torch.Tensor, k: int, stride: int, ho: int, wg: int) -> list[torch.Tensor]:
    """The k window rows (..., k, Ho, Wg) of padded ``t``: row i holds offsets i * k + j."""
    return list(_offsets(t, k, stride, ho, wg).unbind(-4))


@functools.lru_cache(maxsize=64)
def _outside(k: int, stride: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(k*k, Ho, Wo) additive mask: -inf at window positions outside the image, else 0.

    Cached per geometry and dtype (read-only; a few kB).
    """
    ho, wo, _, hp, _ = _grid(k, stride, h, w)
    ones = _pad(torch.ones(1, h, w, device=device), k // 2, hp)
    outside = _offsets(ones, k, stride, ho, wo).reshape(k * k, ho, wo) == 0
    return torch.zeros(outside.shape, device=device, dtype=dtype).masked_fill_(outside, float("-inf"))


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16 inputs (finite softmax logits under autocast); float64 stays."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _appearance(phi: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Phi(q, k), the appearance composability term."""
    if phi == "squared_diff":
        return -(q - k).square()
    if phi == "abs_diff":
        return -(q - k).abs()
    return q * k


def _logits(phi: str, q: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor, k: int, stride: int):
    """log2(e) * (Phi(q, keys) + bias) for all k*k offsets -> (N, G, k*k, Ho, Wo), in base 2
    for :func:`_softmax_`: the one k*k-sized buffer, softmax-ed in place into the weights.

    q (N, G, Ho, Wo), padded keys (N, G, Hp, Wp), bias (G, k*k, Ho, Wo): geometry prior and
    the -inf mask, already scaled by log2(e). The first op reads the overlapping
    (N, G, k, k, Ho, Wo) view of the keys; the scale is folded into ops that run anyway.
    """
    n, g, ho, wo = q.shape
    out = q.new_empty(n, g, k * k, ho, wo)
    window, q = _offsets(keys, k, stride, ho, wo), q[:, :, None, None]
    if phi == "product":
        torch.mul(window, q * _LOG2E, out=out.view(n, g, k, k, ho, wo))
        return out.add_(bias)
    torch.sub(window, q, out=out.view(n, g, k, k, ho, wo))  # k - q
    if phi == "squared_diff":
        return torch.addcmul(bias, out, out, value=-_LOG2E, out=out)  # bias - log2(e) (k - q)^2
    return torch.sub(bias, out.abs_(), alpha=_LOG2E, out=out)  # bias - log2(e) |k - q|


def _softmax_(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` of base-2 logits, in place: 2^(l - max) / sum. exp2 is ~3x faster
    than exp on CPU, and no second k*k-sized buffer (a fresh one costs page faults)."""
    logits.sub_(logits.amax(dim, keepdim=True)).exp2_()
    return logits.mul_(logits.sum(dim, keepdim=True).reciprocal_())


def _aggregate(weights: torch.Tensor, values: torch.Tensor, k: int, stride: int, wg: int) -> torch.Tensor:
    """y = sum_o w_o * window_o(values) on the grid: w (N, G, K, Ho, Wo), values (N, G, m, Hp, Wp)
    -> (N, G, m, Ho, Wg). One window row of weights at a time is copied onto the grid."""
    n, g, _, ho, wo = weights.shape
    row, y = weights.new_zeros(n, g, k, 1, ho, wg), None  # (junk columns stay 0)
    for i, values_row in enumerate(_window_rows(values, k, stride, ho, wg)):  # (N, G, m, k, Ho, Wg)
        row[..., 0, :, :wo] = weights[:, :, i * k : (i + 1) * k]
        for w_o, x_o in zip(row.unbind(2), values_row.unbind(3)):
            y = torch.mul(w_o, x_o) if y is None else y.addcmul_(w_o, x_o)  # in the weights' dtype
    return y


def _aggregate_row_backward_(grad_row, grad_y, dot, values_row, grad_values_row, product, dw_row):
    """Aggregation and softmax backward for one window row (k offsets), in place.

    grad_row (N, G, k, Ho, Wg) holds the row's weights w_o and becomes grad logits
    w_o (dw_o - dot), with dw_o = sum_m grad_y * x_o and dot = sum_o w_o dw_o (N, G, Ho, Wg).
    grad_y (N, G, m, Ho, Wg); values_row / grad_values_row: (N, G, m, k, Ho, Wg) windows of the
    padded values and of their gradient (None: not needed), which gets grad_y * w_o added.
    Scratch: dw_row like grad_row, product (B, G, m, k, Ho, Wg): dw of the row's k offsets is
    one product and one sum over m for B images at a time (faster than offset by offset).
    """
    if grad_values_row is not None:
        for w_o, view in zip(grad_row.unbind(2), grad_values_row.unbind(3)):
            view.addcmul_(grad_y, w_o[:, :, None])
    n, chunk = grad_y.shape[0], product.shape[0]
    for i in range(0, n, chunk):
        images = slice(i, i + chunk)
        terms = torch.mul(grad_y[images, :, :, None], values_row[images], out=product[: min(chunk, n - i)])
        torch.sum(terms, 2, out=dw_row[images])
    grad_row.mul_(dw_row.sub_(dot[:, :, None]))


def _logits_row_backward_(phi, grad_row, q, keys_row, grad_q, temp):
    """Backward of :func:`_logits` for one window row, in place.

    grad_row (N, G, k, Ho, Wg), the row's grad logits (base e), becomes the gradient of each
    offset's key; grad_q (N, G, Ho, Wg) is accumulated. keys_row: (N, G, k, Ho, Wg) view of the
    padded keys; temp: a buffer like grad_row.
    """
    q = q[:, :, None]
    if phi == "product":  # d/dq = k, d/dk = q
        grad_q.add_(torch.mul(keys_row, grad_row, out=temp).sum(2))
        grad_row.mul_(q)
        return
    diff = torch.sub(q, keys_row, out=temp)
    # d/dk -(q - k)^2 = 2 (q - k); d/dk -|q - k| = sign(q - k); d/dq = -d/dk
    grad_row.mul_(diff.mul_(2) if phi == "squared_diff" else diff.sign_())
    grad_q.sub_(grad_row.sum(2))


def _backward_by_rows(phi, weights, grad_y, dot, values, grad_values, q, keys, k, stride):
    """Backward of aggregation, softmax and logits, one window row (k offsets) at a time, so no
    k*k-sized buffer is allocated. Accumulates into grad_values (padded, or None: not needed).

    weights (N, G, K, Ho, Wo) as saved; grid-shaped (Wg columns): grad_y (N, G, m, Ho, Wg),
    dot (N, G, Ho, Wg), q (N, G, Ho, Wg); padded values (N, G, m, Hp, Wp), keys (N, G, Hp, Wp).
    Returns grad q (grid), grad padded keys, grad prior (K, G).
    """
    n, g, m, ho, wg = grad_y.shape
    wo = weights.shape[-1]
    grad_q, grad_keys, grad_prior = torch.zeros_like(q), torch.zeros_like(keys), q.new_empty(k, k, g)
    row = q.new_zeros(n, g, k, ho, wg)  # the row's weights, then its gradients; junk columns stay 0
    scratch = q.new_empty(n, g, k, ho, wg)
    product = q.new_empty(max(1, n // k), g, m, k, ho, wg)  # x-sized, or one image's k offsets
    grad_values_rows = _window_rows(grad_values, k, stride, ho, wg) if grad_values is not None else [None] * k
    for i, (values_row, grad_values_row, keys_row, grad_keys_row) in enumerate(zip(
        _window_rows(values, k, stride, ho, wg), grad_values_rows,
        _window_rows(keys, k, stride, ho, wg), _window_rows(grad_keys, k, stride, ho, wg),
    )):
        row[..., :wo] = weights[:, :, i * k : (i + 1) * k]
        _aggregate_row_backward_(row, grad_y, dot, values_row, grad_values_row, product, scratch)
        grad_prior[i] = row.sum((0, 3, 4)).t()
        _logits_row_backward_(phi, row, q, keys_row, grad_q, scratch)
        for view, d_o in zip(grad_keys_row.unbind(-3), row.unbind(2)):  # windows overlap
            view.add_(d_o)
    return grad_q, grad_keys, grad_prior.reshape(k * k, g)


class _LocalRelationFn(torch.autograd.Function):
    """(q, key map, x, geometry prior) -> (y, w): logits, softmax and aggregation in one node.

    q (N, G, Ho, Wo) and the key map (N, G, H, W) are float32 (or float64); x (N, C, H, W);
    prior (K, G). Returns y (N, C, Ho, Wo) in q's dtype and the weights w (N, G, K, Ho, Wo),
    the only k*k-sized tensor kept for backward (x is kept by the q/k convs anyway, y by the
    output projection); backward rebuilds the padded maps and the grid layout from them.
    """

    @staticmethod
    def forward(ctx, q, keymap, x, prior, phi: str, k: int, stride: int, m: int):
        n, c, h, w = x.shape
        ho, wo, wg, hp, wp = _grid(k, stride, h, w)
        bias = (prior.t() * _LOG2E)[:, :, None, None] + _outside(k, stride, h, w, x.device, q.dtype)  # (G, K, Ho, Wo)
        weights = _softmax_(_logits(phi, q, _pad(keymap, k // 2, hp), bias, k, stride), dim=2)  # (N, G, K, Ho, Wo)
        y = _aggregate(weights, _pad(x, k // 2, hp).reshape(n, c // m, m, hp, wp), k, stride, wg)
        y = y.reshape(n, c, ho, wg)[..., :wo].contiguous()
        ctx.set_materialize_grads(False)  # no zero tensor for the weights' (absent) gradient
        ctx.geometry = (phi, k, stride, m)
        ctx.save_for_backward(q, keymap, x, weights, y)
        ctx.mark_non_differentiable(weights)
        return y, weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor | None, _: torch.Tensor | None):
        if grad_y is None:
            return None, None, None, None, None, None, None, None
        q, keymap, x, weights, y = ctx.saved_tensors
        phi, k, stride, m = ctx.geometry
        (n, c, h, w), r = x.shape, k // 2
        ho, wo, wg, hp, wp = _grid(k, stride, h, w)
        g = c // m
        grad_y = grad_y.to(y.dtype)
        # softmax backward needs sum_o w_o dw_o = sum_m dy * y (per group and position)
        dot = _pad_cols((grad_y * y).reshape(n, g, m, ho, wo).sum(2), wg)  # (N, G, Ho, Wg)
        grad_y = _pad_cols(grad_y, wg).reshape(n, g, m, ho, wg)
        values, keys, q = _pad(x, r, hp).reshape(n, g, m, hp, wp), _pad(keymap, r, hp), _pad_cols(q, wg)
        grad_v = grad_y.new_zeros(values.shape) if ctx.needs_input_grad[2] else None  # in q's dtype
        grad_q, grad_keys, grad_prior = _backward_by_rows(phi, weights, grad_y, dot, values, grad_v, q, keys, k, stride)
        grad_x = None
        if grad_v is not None:
            grad_x = grad_v.reshape(n, c, hp, wp)[..., r : r + h, r:].to(x.dtype)
        return grad_q[..., :wo], grad_keys[..., r : r + h, r:], grad_x, grad_prior, None, None, None, None


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
        return _at_least_fp32(self.geometry(self.offsets.to(self.geometry[0].weight.dtype)))

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        return (h - 1) // self.stride + 1, (w - 1) // self.stride + 1

    def _finish(self, weights: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self._attention_sink is not None:
            self._record(weights)
        return self.project(y.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, g = self.stride, self.groups
        # q and k in one 1x1 conv over x (one pass instead of two; parameter names unchanged)
        qk = F.conv2d(x, torch.cat([self.query.weight, self.key.weight]))  # (N, 2G, H, W)
        qk = _at_least_fp32(qk).contiguous()  # row-major even for channels_last x (2G channels)
        q, keymap = qk[:, :g, ::s, ::s], qk[:, g:]  # (N, G, Ho, Wo), (N, G, H, W)
        prior = self._geometry_prior()  # (K, G)
        y, weights = _LocalRelationFn.apply(q, keymap, x, prior, self.phi, self.kernel_size, s, self.channels_per_group)
        return self._finish(weights, y, x.dtype)

    def _reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Straightforward unfold version: materialises k*k copies of x (memory reference)."""
        n, c, h, w = x.shape
        k, s, r, g, kk = self.kernel_size, self.stride, self.kernel_size // 2, self.groups, self.kernel_size**2
        ho, wo = self._out_size(h, w)

        def unfold(t: torch.Tensor) -> torch.Tensor:
            return F.unfold(t, k, padding=r, stride=s).reshape(t.shape[0], t.shape[1], kk, ho, wo)

        q = _at_least_fp32(self.query(x)[:, :, ::s, ::s])[:, :, None]
        keys = unfold(_at_least_fp32(self.key(x)))  # (N, G, K, Ho, Wo)
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
