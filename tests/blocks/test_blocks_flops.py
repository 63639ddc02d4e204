"""Attention FLOPs are counted on every SDPA path torch may dispatch to.

The formula: q k^T and (softmax) v are two batched matmuls, 2 * L * Lk * D and 2 * L * Lk * Dv
FLOPs per head (a multiply-add is 2). Some torch releases dispatch CPU SDPA to a kernel
``torch.utils.flop_counter`` has no entry for (torch 2.14: ``_for_cpu``, counted as 0).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import flop_counter

from ctxlit.blocks import NonLocal
from ctxlit.utils.complexity import FLOP_FORMULAS_MISSING, count_flops, flop_counter_mode

N, L, LK, D, DV = 2, 64, 48, 16, 8
FORWARD = N * (2 * L * LK * D + 2 * L * LK * DV)
aten = torch.ops.aten


def tensors(device: str):
    q = torch.randn(N, 1, L, D, device=device)
    k = torch.randn(N, 1, LK, D, device=device)
    v = torch.randn(N, 1, LK, DV, device=device)
    return q, k, v


def counted(fn) -> int:
    with flop_counter_mode() as counter:
        fn()
    return counter.get_total_flops()


def test_math_path_counts_the_two_matmuls():
    q, k, v = tensors("cpu")
    with sdpa_kernel(SDPBackend.MATH):
        assert counted(lambda: F.scaled_dot_product_attention(q, k, v)) == FORWARD


def test_default_cpu_path_counts_the_two_matmuls():
    q, k, v = tensors("cpu")
    assert counted(lambda: F.scaled_dot_product_attention(q, k, v)) == FORWARD


# The CUDA kernels and the CPU flash kernel called directly on meta tensors: only shapes matter.
OPS = {
    "flash": "_scaled_dot_product_flash_attention",
    "efficient": "_scaled_dot_product_efficient_attention",
    "cpu_flash": "_scaled_dot_product_flash_attention_for_cpu",
}
KERNELS = {
    "flash": lambda q, k, v: aten._scaled_dot_product_flash_attention(q, k, v),
    "efficient": lambda q, k, v: aten._scaled_dot_product_efficient_attention(q, k, v, None, False),
    "cpu_flash": lambda q, k, v: aten._scaled_dot_product_flash_attention_for_cpu(q, k, v),
}


def kernel_flops(kernel: str, q, k, v) -> int:
    """The counter's FLOPs for one call of ``kernel``. Where this torch has no meta kernel for
    it (torch 2.4's CUDA-only flash/efficient ops), the counter's own formula for the op is
    applied to the shapes instead: what FlopCounterMode would add when the op runs on a GPU."""
    try:
        return counted(lambda: KERNELS[kernel](q, k, v))
    except NotImplementedError:
        op = getattr(aten, OPS[kernel])
        formula = {**flop_counter.flop_registry, **FLOP_FORMULAS_MISSING}[op]
        return formula(q, k, v, out_val=None)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_each_fused_kernel_is_counted(kernel):
    q, k, v = tensors("meta")
    if kernel != "cpu_flash":  # flash/efficient kernels want equal head dims
        v = torch.randn(N, 1, LK, D, device="meta")
        expected = N * 2 * (2 * L * LK * D)
    else:
        expected = FORWARD
    assert kernel_flops(kernel, q, k, v) == expected


def test_cpu_backward_counts_its_four_matmuls():
    q, k, v = (t.requires_grad_() for t in tensors("cpu"))
    with flop_counter_mode() as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    # backward: dV = P^T dO and dP = dO V^T (L x Lk x Dv each), dQ = dS K and dK = dS^T Q (x D each)
    backward = N * (2 * 2 * L * LK * DV + 2 * 2 * L * LK * D)
    assert counter.get_total_flops() == FORWARD + backward


def test_non_local_counts_attention_on_top_of_its_convs():
    block = NonLocal(32).eval()
    h = w = 8
    seq, inter = h * w, 16
    convs = 3 * 2 * seq * 32 * inter + 2 * seq * inter * 32  # theta, phi, g, then the output 1x1
    attention = 2 * (2 * seq * seq * inter)
    assert count_flops(block, (1, 32, h, w)) == convs + attention
