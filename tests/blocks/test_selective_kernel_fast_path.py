"""Selective Kernel: the fused branch selection and layout handling equal plain autograd.

The block's forward runs the grouped convs channels_last on CPU and mixes the branches with a
custom autograd Function (``_Select``) that reuses buffers in its backward. The reference here
is the paper's formula written with plain autograd ops on the same submodules, in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ctxlit.bench.blocks import saved_tensor_bytes
from ctxlit.blocks.selective_kernel import SelectiveKernelConv, _Select

CL = torch.channels_last


def reference(block: SelectiveKernelConv, x: torch.Tensor) -> torch.Tensor:
    """V = sum_m softmax_m(A_m z)_m * U_m with z from mean_HW(sum_m U_m), plain autograd, NCHW."""
    feats = [conv(x) for conv in block.convs]  # M x (N, C, H', W')
    summary = sum(f.mean(dim=(2, 3), keepdim=True) for f in feats)  # (N, C, 1, 1)
    logits = block.select(block.squeeze(summary)).reshape(x.shape[0], block.branches, block.out_channels)
    weights = logits.softmax(dim=1)[..., None, None]  # (N, M, C, 1, 1)
    return sum(f * weights[:, m] for m, f in enumerate(feats))


def make_block(in_channels: int, out_channels: int, stride: int, branches: int) -> SelectiveKernelConv:
    torch.manual_seed(0)
    block = SelectiveKernelConv(in_channels, out_channels, stride, branches=branches).double()
    with torch.no_grad():  # non-trivial BN affine parameters, so their gradients are checked too
        for module in block.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return block


@pytest.mark.parametrize(
    "in_channels, out_channels, stride, branches",
    [(64, 64, 1, 2), (64, 128, 2, 2), (32, 32, 2, 2), (128, 64, 1, 3), (96, 96, 2, 1)],
)
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_block_matches_autograd_reference(in_channels, out_channels, stride, branches, layout):
    block = make_block(in_channels, out_channels, stride, branches)
    ref_block = copy.deepcopy(block)
    torch.manual_seed(1)
    x = torch.randn(2, in_channels, 9, 7, dtype=torch.float64).contiguous(memory_format=layout)
    grad_out = torch.randn(2, out_channels, (9 - 1) // stride + 1, (7 - 1) // stride + 1, dtype=torch.float64)

    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    out, ref = block(xs[0]), reference(ref_block, xs[1])
    out.backward(grad_out)
    ref.backward(grad_out)

    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-10, atol=1e-10)
    params, ref_params = dict(block.named_parameters()), dict(ref_block.named_parameters())
    assert params.keys() == ref_params.keys()
    for name, p in params.items():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-10, atol=1e-10, msg=name)
    # the layout of the input is kept for the output and for the input's gradient
    assert out.is_contiguous(memory_format=layout) and xs[0].grad.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("branches", [1, 2, 3])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_select_gradcheck(branches, fmt):
    torch.manual_seed(0)
    weights = torch.rand(2, branches, 3, dtype=torch.float64, requires_grad=True)
    feats = [
        torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_(True)
        for _ in range(branches)
    ]
    assert torch.autograd.gradcheck(lambda w, *f: _Select.apply(fmt, w, *f), (weights, *feats))


def test_upstream_gradient_is_not_overwritten():
    """With a channels_last input the incoming gradient is used as it is, never written into."""
    block = make_block(64, 64, 1, 2)
    x = torch.randn(2, 64, 6, 6, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_(True)
    out = block(x)
    grad_out = torch.randn_like(out)
    kept = grad_out.clone()
    out.backward(grad_out)
    assert torch.equal(grad_out, kept)


def test_saved_memory_not_above_autograd_reference():
    """Saved-for-backward bytes equal plain autograd's (conv inputs and outputs, ReLU outputs)."""
    block = SelectiveKernelConv(64)
    x = torch.randn(4, 64, 28, 28).requires_grad_(True)
    saved = saved_tensor_bytes(lambda: block(x), exclude=block)
    ref_saved = saved_tensor_bytes(lambda: reference(block, x.contiguous(memory_format=CL)), exclude=block)
    full = x.numel() * x.element_size()
    assert saved <= ref_saved
    assert saved < 5 * full + 64 * 1024  # x in channels_last + 2 x (conv out, ReLU out) + small tensors


def test_bf16_autocast_channels_last_is_finite():
    block = SelectiveKernelConv(64, 128, stride=2)
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=CL).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    out.float().square().mean().backward()
    assert out.is_contiguous(memory_format=CL)
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())
