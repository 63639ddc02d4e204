"""Selective Kernel convolution (``sk``), a spatial operator replacing a 3x3 conv.

Paper: "Selective Kernel Networks", Xiang Li, Wenhai Wang, Xiaolin Hu, Jian Yang, 2019
(CVPR 2019), arXiv:1903.06586.

Shapes for ``x`` of ``(N, C_in, H, W)``, output ``(N, C, H', W')`` with ``C = out_channels``,
``H' = (H - 1) // stride + 1``::

    split   U_m = ReLU(BN(conv3x3_m(x)))   (N, C, H', W')  m = 1..M, dilation m, groups G
    fuse    U   = sum_m U_m                (N, C, H', W')
            s   = mean_HW(U)               (N, C)
            z   = ReLU(BN(W_z s))          (N, d)     d = max(C / r, L), W_z: C -> d (no bias)
    select  a   = softmax_m(A_m z)         (N, M, C)  A_m: d -> C per branch (no bias)
            V   = sum_m a_m * U_m          (N, C, H', W')

Defaults as in the paper's SKNet-50: M=2 (3x3 with dilation 1 and 2, i.e. a 5x5 receptive
field), G=32, r=16, L=32. Both ``in_channels`` and ``out_channels`` must be divisible by G.
The branch softmax is computed in float32 (float64 for float64 inputs). Read-out: the branch
weights ``a`` as ``(N, M, C)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ctxlit.blocks._common import RecordsAttention, check_positive_options, memory_format_of
from ctxlit.errors import ConfigError


class _ToFormat(torch.autograd.Function):
    """``x.contiguous(memory_format=fmt)`` whose backward returns the gradient in ``x``'s layout.

    Plain ``.contiguous()`` passes the incoming gradient through as it is, so an NCHW gradient
    would reach the channels_last branch tensors and every element-wise backward op there
    (ReLU, the branch weighting, BN) would mix layouts, which costs several times a same-layout
    pass on CPU. Converting the gradient once, where the layout changed, keeps them on one layout.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
        ctx.fmt = memory_format_of(x)
        return x.contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.contiguous(memory_format=ctx.fmt), None


class _Select(torch.autograd.Function):
    """V = sum_m a_m * U_m, returned in layout ``fmt``, for U_m (N, C, H, W) and a (N, M, C).

    Autograd's version of this sum (and of the layout change after it) allocates a full-size
    buffer per term of the forward and two per branch in the backward (``grad * a_m`` and the
    ``grad * U_m`` that is summed over H, W for the weight gradient). On CPU every fresh
    (N, C, H, W) buffer costs page faults as well as a pass, since the allocator hands freed
    memory back to the OS between steps. Here the forward accumulates in place, and the backward
    reuses one buffer for all weight gradients and then branch 0's gradient, and turns its own
    layout-converted copy of ``grad`` into the last branch's gradient in place.
    """

    @staticmethod
    def forward(ctx, fmt: torch.memory_format, weights: torch.Tensor, *feats: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weights, *feats)
        w = weights[..., None, None]  # (N, M, C, 1, 1)
        out = feats[0] * w[:, 0]  # (N, C, H, W), the branches' layout
        for m, f in enumerate(feats[1:], start=1):
            out.addcmul_(f, w[:, m])
        return out.contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weights, *feats = ctx.saved_tensors
        w = weights[..., None, None]  # (N, M, C, 1, 1)
        need_weights, need_feats = ctx.needs_input_grad[1], ctx.needs_input_grad[2:]
        # element-wise ops run fastest when all operands share one layout: the branches'
        grad_in = grad.contiguous(memory_format=memory_format_of(feats[0]))
        owned = grad_in.data_ptr() != grad.data_ptr()  # a fresh copy we may overwrite
        buffer = torch.empty_like(grad_in)
        grad_weights = torch.empty_like(weights) if need_weights else None  # (N, M, C)
        for m, f in enumerate(feats if need_weights else ()):  # dL/da_m = sum_HW grad * U_m
            torch.sum(torch.mul(grad_in, f, out=buffer), dim=(2, 3), out=grad_weights[:, m])
        grad_feats: list[torch.Tensor | None] = []  # dL/dU_m = grad * a_m
        for m in range(len(feats)):
            if not need_feats[m]:
                grad_feats.append(None)
            elif m == 0:
                grad_feats.append(torch.mul(grad_in, w[:, 0], out=buffer))
            elif m == len(feats) - 1 and owned:
                grad_feats.append(grad_in.mul_(w[:, m]))
            else:
                grad_feats.append(grad_in * w[:, m])
        return None, grad_weights, *grad_feats


class SelectiveKernelConv(RecordsAttention, nn.Module):
    """Selective Kernel convolution: M dilated grouped 3x3 branches mixed by channel attention.

    Args:
        in_channels, out_channels (default: in_channels), stride: as for the 3x3 conv it replaces.
        branches: M, branch m has dilation m (paper: 2).
        groups: G of the grouped 3x3 convs (paper: 32).
        reduction: r in d = max(C / r, L) (paper: 16).
        min_dim: L in d = max(C / r, L) (paper: 32).
    """

    spatial_operator = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        *,
        branches: int = 2,
        groups: int = 32,
        reduction: int = 16,
        min_dim: int = 32,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        check_positive_options(
            "SelectiveKernelConv", stride=stride, branches=branches, groups=groups, reduction=reduction, min_dim=min_dim
        )
        for option, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value % groups:
                raise ConfigError(
                    f"SelectiveKernelConv: {option}={value} must be divisible by groups={groups}"
                )
        dim = max(out_channels // reduction, min_dim)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.branches, self.groups, self.reduction, self.min_dim, self.dim = branches, groups, reduction, min_dim, dim
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    in_channels, out_channels, 3, stride=stride, padding=m, dilation=m, groups=groups, bias=False
                ),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
            for m in range(1, branches + 1)
        )
        self.squeeze = nn.Sequential(
            nn.Conv2d(out_channels, dim, kernel_size=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
        )
        self.select = nn.Conv2d(dim, branches * out_channels, kernel_size=1, bias=False)  # A, B, ... stacked
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The grouped 3x3 convs (C / G = 2 channels per group at C=64) cost about a full 3x3
        # conv each in NCHW on CPU and half that in channels_last, so they run channels_last
        # there; the output (and the input's gradient) go back to the input's layout. Computing
        # them as 9 shifted (G, Cg, Cg) multiply-adds instead measured about 10x slower than
        # oneDNN's channels_last grouped conv forward+backward at C=64, so there is no such path.
        inner = _ToFormat.apply(x, torch.channels_last) if x.device.type == "cpu" else x
        feats = [conv(inner) for conv in self.convs]  # M x (N, C, H', W')
        # s = mean_HW(sum_m U_m), without materialising the sum (or a stack) of the branches.
        # sum then divide: sum's backward hands each branch an expanded (N, C, 1, 1) view that
        # is added in the branch's layout, where mean's backward writes a full NCHW tensor first.
        # The sums accumulate in at least float32, so a float16 branch over a large map cannot overflow.
        dtype, acc = feats[0].dtype, torch.promote_types(feats[0].dtype, torch.float32)
        area = feats[0].shape[2] * feats[0].shape[3]
        summary = sum(f.sum(dim=(2, 3), keepdim=True, dtype=acc) for f in feats)  # (N, C, 1, 1)
        summary = (summary / area).to(dtype)
        logits = self.select(self.squeeze(summary)).reshape(x.shape[0], self.branches, self.out_channels)
        weights = logits.to(acc).softmax(dim=1)  # (N, M, C)
        if self._attention_sink is not None:
            self._record(weights)
        return _Select.apply(memory_format_of(x), weights.to(dtype), *feats)  # (N, C, H', W')

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, branches={self.branches}, "
            f"groups={self.groups}, reduction={self.reduction}, min_dim={self.min_dim}"
        )
