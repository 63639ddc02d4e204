"""The CUDA paths of every block: bf16 autocast, channels_last, torch.compile, and Non-local's
SDPA kernels (flash, memory-efficient, cuDNN, math) against its explicit attention, with their
peak memory. ``pytest -m gpu`` runs them where a CUDA device exists; elsewhere they are skipped
with the reason. (The whole-network CUDA run is in tests/bench/test_bench_models.py.)"""

from __future__ import annotations

import pytest
import torch

from ctxlit.blocks import NonLocal, build_block
from blocks_cases import CASES, make, perturb, sample

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA paths need one"),
]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 off, so float32 on CUDA is compared with float32 at float32's precision."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def trained_on_cuda(name: str, options: dict) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A block with non-zero parameters in eval mode on CUDA, an input, its float32 output."""
    block = make(name, options)
    perturb(block)
    block = block.eval().to(CUDA)
    x = sample().to(CUDA)
    return block, x, block(x)


@pytest.mark.parametrize(("name", "options"), CASES)
def test_cuda_bf16_autocast_finite_and_close(name, options):
    block, x, ref = trained_on_cuda(name, options)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = block(x)
    assert torch.isfinite(out).all()
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, f"relative error {err:.3g} under CUDA bf16 autocast"


@pytest.mark.parametrize(("name", "options"), CASES)
def test_cuda_channels_last_matches_contiguous(name, options):
    block, x, ref = trained_on_cuda(name, options)
    out = block.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["se", "gc", "snl", "nl", "glore", "spm", "mpm", "sk", "lr"])
def test_cuda_compile_matches_eager_forward_and_gradients(name):
    torch.manual_seed(0)
    options = {"out_channels": 32, "stride": 1} if name in ("sk", "lr") else {}
    block = build_block(name, 32, **options)
    perturb(block)
    block = block.to(CUDA).train()
    compiled = torch.compile(block)
    x = sample(shape=(2, 32, 16, 16)).to(CUDA)
    results = []
    for forward in (block, compiled):
        block.zero_grad(set_to_none=True)
        out = forward(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in block.parameters() if p.grad is not None]))
    (eager, eager_grads), (fast, fast_grads) = results
    torch.testing.assert_close(fast, eager, rtol=1e-3, atol=1e-4)
    for a, b in zip(fast_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


SDPA_BACKENDS = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]


@pytest.mark.parametrize("backend", SDPA_BACKENDS)
@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian"])
def test_nl_sdpa_kernel_matches_explicit_attention(backend, mode):
    """Each kernel SDPA may pick on CUDA gives the explicit softmax(theta^T phi) g, under bf16
    autocast (the flash kernel takes half precision only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    block = NonLocal(64, mode=mode)
    perturb(block)
    block = block.eval().to(CUDA)
    x = sample(shape=(2, 64, 16, 16)).to(CUDA)
    ref = block._reference_forward(x)
    try:
        with sdpa_kernel(getattr(SDPBackend, backend)), torch.autocast("cuda", dtype=torch.bfloat16):
            out = block(x)
    except RuntimeError as err:  # this GPU / torch build has no such kernel for these inputs
        pytest.skip(f"SDPA {backend} not available here: {str(err).splitlines()[0]}")
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, f"SDPA {backend}: relative error {err:.3g}"


def _peak_bytes(step) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def test_nl_sdpa_path_peak_memory_at_most_the_explicit_paths():
    """ResNet-50 c4-like map (L = 32 x 32 = 1024 positions): the fused path never holds the
    L x L matrix, so its forward+backward peak is at most the explicit path's."""
    torch.manual_seed(0)
    block = NonLocal(256).to(CUDA).train()
    x = sample(shape=(4, 256, 32, 32)).to(CUDA).requires_grad_(True)

    def step(forward):
        def run():
            block.zero_grad(set_to_none=True)
            forward(x).square().mean().backward()
        return run

    with torch.autocast("cuda", dtype=torch.bfloat16):
        step(block)()  # warm-up: kernels chosen, workspaces allocated
        fused = _peak_bytes(step(block))
        explicit = _peak_bytes(step(block._reference_forward))
    assert fused <= explicit, f"SDPA path peak {fused / 2**20:.1f} MB > explicit {explicit / 2**20:.1f} MB"
