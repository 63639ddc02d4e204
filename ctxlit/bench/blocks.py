"""``python -m ctxlit.bench blocks``: what each context block costs next to a plain 3x3 conv.

For every registered block at every ``CxHxW`` shape (batch ``--batch-size``) on one device:

* forward+backward time (best of ``--repeats`` after one warm-up, train mode; the median is in
  the JSON too),
* activation memory, FLOPs (``ctxlit.utils.complexity.count_flops``) and parameters,

each also as a ratio to ``nn.Conv2d(C, C, 3, padding=1, bias=False)`` on the same input.
Add-on blocks are built as ``Block(C)``, spatial operators as ``Block(C, C, stride=1)``, all
with their paper defaults. Two fast paths are compared with their explicit references:
Non-local ``scaled_dot_product_attention`` vs the materialised HW x HW matrix, and Local
Relation's offset loop vs the unfold-based layer.

Memory: ``saved_bytes`` is the size of the tensors autograd keeps for backward during one
forward (unique storages, parameters excluded), measured with
``torch.autograd.graph.saved_tensors_hooks``. It is deterministic and works on every device;
it is the activation memory a block adds to a training step, not the transient peak inside
the forward. On CUDA ``peak_bytes`` (``torch.cuda.max_memory_allocated`` over forward+backward,
minus what was allocated before) is reported too; on CPU it is ``null``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ctxlit.blocks import BLOCKS, LocalRelation, NonLocal, build_block, is_spatial_operator
from ctxlit.utils.complexity import NOTE_NOT_COUNTED, count_flops, count_parameters

MEMORY_NOTE = (
    "saved_bytes = tensors autograd keeps for backward in one forward (unique storages, "
    "parameters excluded, via saved_tensors_hooks); peak_bytes = CUDA max_memory_allocated "
    "over forward+backward above the baseline (CUDA only)"
)


def saved_tensor_bytes(forward: Callable[[], object], exclude: nn.Module | None = None) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``forward()`` runs."""
    skip = set()
    if exclude is not None:
        skip = {p.untyped_storage().data_ptr() for p in exclude.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return t
        ptr = storage.data_ptr()
        if ptr not in skip:
            storages[ptr] = max(storages.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(forward: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    forward(x).float().square().mean().backward()


def measure(
    module: nn.Module, x: torch.Tensor, repeats: int, forward: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> dict[str, float | int | None]:
    """Forward+backward time (ms, median), saved-tensor bytes and (CUDA) peak bytes."""
    forward = forward or module
    device = x.device
    x = x.detach().requires_grad_(True)
    _step(forward, module, x)  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(forward, module, x)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = None
    if device.type == "cuda":
        module.zero_grad(set_to_none=True)
        x.grad = None
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _step(forward, module, x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    saved = saved_tensor_bytes(lambda: forward(x), exclude=module)
    module.zero_grad(set_to_none=True)
    # best of the repeats: the least disturbed by other load on a shared machine
    return {"time_ms": min(times), "time_median_ms": statistics.median(times), "saved_bytes": saved, "peak_bytes": peak}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 256x56x56 (CxHxW); got {text!r}") from None
    return c, h, w


def bench_blocks(names, shapes, batch, repeats, device) -> list[dict]:
    rows = []
    for c, h, w in shapes:
        x = torch.randn(batch, c, h, w, device=device)
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False).to(device)
        base = measure(conv, x, repeats)
        base_flops = count_flops(conv, tuple(x.shape))
        base_params = count_parameters(conv)
        print(_block_line({"block": "conv3", "shape": [batch, c, h, w], **base, "flops": base_flops,
                           "time_ratio": 1.0, "flop_ratio": 1.0, "saved_ratio": 1.0}), flush=True)
        for name in names:
            torch.manual_seed(0)
            options = {"out_channels": c, "stride": 1} if is_spatial_operator(name) else {}
            block = build_block(name, c, **options).to(device)
            result = measure(block, x, repeats)
            flops = count_flops(block, tuple(x.shape))
            params = count_parameters(block)
            rows.append(
                {
                    "block": name,
                    "shape": [batch, c, h, w],
                    **result,
                    "flops": flops,
                    "params": params,
                    "conv3x3": {**base, "flops": base_flops, "params": base_params},
                    "time_ratio": _ratio(result["time_ms"], base["time_ms"]),
                    "flop_ratio": _ratio(flops, base_flops),
                    "param_ratio": _ratio(params, base_params),
                    "saved_ratio": _ratio(result["saved_bytes"], base["saved_bytes"]),
                    "peak_ratio": _ratio(result["peak_bytes"], base["peak_bytes"]),
                }
            )
            print(_block_line(rows[-1]), flush=True)
            del block
    return rows


def bench_fast_paths(shapes, batch, repeats, device, lr_kernel: int) -> list[dict]:
    rows = []
    cases = [
        ("nl", "SDPA (scale=1)", "explicit HWxHW softmax", lambda c: NonLocal(c)),
        ("lr", f"offset loop k={lr_kernel}", f"unfold k={lr_kernel}", lambda c: LocalRelation(c, kernel_size=lr_kernel)),
    ]
    for c, h, w in shapes:
        x = torch.randn(batch, c, h, w, device=device)
        for name, fast_label, ref_label, factory in cases:
            torch.manual_seed(0)
            block = factory(c).to(device)
            fast = measure(block, x, repeats)
            ref = measure(block, x, repeats, forward=block._reference_forward)
            row = {
                "block": name,
                "shape": [batch, c, h, w],
                "fast": {"method": fast_label, **fast},
                "reference": {"method": ref_label, **ref},
                "speedup": _ratio(ref["time_ms"], fast["time_ms"]),
                "saved_reduction": _ratio(ref["saved_bytes"], fast["saved_bytes"]),
                "peak_reduction": _ratio(ref["peak_bytes"], fast["peak_bytes"]),
            }
            rows.append(row)
            print(_fast_line(row), flush=True)
            del block
    return rows


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _block_line(r: dict) -> str:
    shape = "x".join(map(str, r["shape"][1:]))
    return (
        f"{r['block']:<6} {shape:>11} {r['time_ms']:>9.2f} {_x(r['time_ratio']):>8} {r['flops'] / 1e9:>8.4f} "
        f"{_x(r['flop_ratio']):>8} {_mb(r['saved_bytes']):>9} {_x(r['saved_ratio']):>8} {_mb(r['peak_bytes']):>8}"
    )


def _fast_line(r: dict) -> str:
    shape = "x".join(map(str, r["shape"][1:]))
    f, ref = r["fast"], r["reference"]
    return (
        f"{r['block']:<4} {shape:>11} {f['time_ms']:>9.2f} {ref['time_ms']:>9.2f} {_x(r['speedup']):>8} "
        f"{_mb(f['saved_bytes']):>9} {_mb(ref['saved_bytes']):>9} {_x(r['saved_reduction']):>8} "
        f"{_mb(f['peak_bytes']):>8} {_mb(ref['peak_bytes']):>8}   {f['method']} vs {ref['method']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxlit.bench blocks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shapes", default="256x56x56,512x28x28,1024x14x14", help="comma-separated CxHxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocks", default=",".join(BLOCKS), help="comma-separated registry names")
    parser.add_argument("--lr-kernel", type=int, default=7, help="k for the Local Relation comparison")
    parser.add_argument("--json", default="bench-results/blocks.json", help="where to write the results")
    parser.add_argument("--quick", action="store_true", help="tiny CI-sized run: batch 2, 64x16x16, 1 repeat")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: leave torch's default). On a CPU shared with other jobs, 1 avoids "
        "OpenMP threads waiting on each other, which penalises blocks made of many small ops",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    names = [n for n in args.blocks.split(",") if n]
    unknown = [n for n in names if n not in BLOCKS]
    if unknown:
        parser.error(f"unknown block(s) {', '.join(unknown)}; allowed: {', '.join(BLOCKS)}")
    batch, repeats = args.batch_size, args.repeats
    if args.quick:
        batch, repeats, shapes = 2, 1, [(64, 16, 16)]
    device = torch.device(args.device)

    print(f"device {device}, batch {batch}, repeats {repeats}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"memory: {MEMORY_NOTE}")
    print(f"flops: {NOTE_NOT_COUNTED}")
    print("\nblock cost next to a 3x3 conv of the same width (forward+backward, train mode)")
    print(f"{'block':<6} {'CxHxW':>11} {'ms':>9} {'ms/conv':>8} {'GFLOPs':>8} {'fl/conv':>8} {'saved MB':>9} {'sv/conv':>8} {'peak MB':>8}")
    blocks = bench_blocks(names, shapes, batch, repeats, device)
    print("\nfast paths vs explicit references (forward+backward)")
    print(f"{'':<4} {'CxHxW':>11} {'fast ms':>9} {'ref ms':>9} {'speedup':>8} {'fast MB':>9} {'ref MB':>9} {'saved/':>8} {'fpk MB':>8} {'rpk MB':>8}")
    fast_paths = bench_fast_paths(shapes, batch, repeats, device, args.lr_kernel)

    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch,
        "repeats": repeats,
        "shapes": [list(s) for s in shapes],
        "memory_note": MEMORY_NOTE,
        "flops_note": NOTE_NOT_COUNTED,
        "blocks": blocks,
        "fast_paths": fast_paths,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
