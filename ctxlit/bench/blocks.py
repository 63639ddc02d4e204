"""``python -m ctxlit.bench blocks``: what each context block costs next to a plain 3x3 conv.

For every registered block at every ``CxHxW`` shape (batch ``--batch-size``) on one device:

* forward+backward time, train mode, as wall time (``perf_counter``) and CPU time of this
  process (``process_time``; on CUDA that is host time only). After warm-up, the block and
  ``nn.Conv2d(C, C, 3, padding=1, bias=False)`` on the same input are timed in turn, ``--repeats``
  rounds of (block, conv, block, conv, ...), so load from other processes hits both alike;
  ratios are medians over medians of those interleaved rounds. On a shared CPU the CPU-time
  ratio is the steadier one (a descheduled process accrues wall time, not CPU time).
* activation memory, FLOPs (``ctxlit.utils.complexity.count_flops``) and parameters,

each also as a ratio to the conv. Add-on blocks are built as ``Block(C)``, spatial operators
as ``Block(C, C, stride=1)``, all with their paper defaults. Optional columns:

* ``--channels-last``: block and conv both in channels_last (module and input), ratio to that conv;
* ``--compile``: both through ``torch.compile`` (inductor), ratio to the compiled conv. Warm-up
  compiles each block once: on CPU that takes seconds to minutes per block, so it is off by
  default and not part of ``--quick``;
* ``--baseline DIR``: the same block from another checkout (e.g. ``git worktree add /tmp/base
  HEAD~3``), timed in the same rounds: ``base/this`` is its speed-up, measured in one process.

Fast paths are compared with their explicit references: Non-local's ``scaled_dot_product_attention``
vs the materialised HW x HW matrix and vs an mmcv-style ``NonLocal2d`` (view/permute, ``matmul``,
softmax, ``matmul``; written here from the paper's definition), and Local Relation's offset
loop vs the unfold-based layer. ``--nl-shapes`` (``NxCxHxW``) times Non-local alone at larger
shapes, e.g. ResNet-50's c4 ``8x1024x14x14``.

Memory: ``saved_bytes`` is the size of the distinct storages autograd keeps for backward in
one forward (parameters excluded; ``saved_tensors_hooks``): deterministic, on every device,
the activation memory a block adds to a training step. On CUDA ``peak_bytes`` (max allocated
over forward+backward above the baseline) is reported too; on CPU it is ``null``.

``--quick`` times 64x28x28 at batch 2 with 3 rounds (a few seconds): the size of the issue-13
measurements, so its ratios agree with a longer run at that size within the noise (a 16x16
map would be dominated by per-op overhead and rank loop-based blocks wrongly).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
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
from ctxlit.utils.malloc import keep_freed_memory

MEMORY_NOTE = (
    "saved_bytes = tensors autograd keeps for backward in one forward (unique storages, "
    "parameters excluded, via saved_tensors_hooks); peak_bytes = CUDA max_memory_allocated "
    "over forward+backward above the baseline (CUDA only)"
)
TIME_NOTE = (
    "forward+backward; medians of interleaved rounds (block, conv, block, conv, ...); "
    "wall = perf_counter, cpu = process_time of this process; ratios are median / median"
)
Forward = Callable[[torch.Tensor], torch.Tensor]


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


def _step(forward: Forward, module: nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    forward(x).float().square().mean().backward()


def time_interleaved(candidates: dict[str, tuple[nn.Module, Forward, torch.Tensor]], repeats: int) -> dict[str, dict]:
    """Warm each candidate up, then ``repeats`` rounds timing every candidate once in turn.

    Returns per label: ``time_ms`` (best wall), ``time_median_ms``, ``cpu_ms`` (median CPU).
    """
    prepared = {k: (m, f, x.detach().requires_grad_(True)) for k, (m, f, x) in candidates.items()}
    for module, forward, x in prepared.values():
        for _ in range(2):  # warm-up (allocator, oneDNN primitives, compilation)
            _step(forward, module, x)
        _sync(x.device)
    wall: dict[str, list[float]] = {k: [] for k in prepared}
    cpu: dict[str, list[float]] = {k: [] for k in prepared}
    for _ in range(max(1, repeats)):
        for label, (module, forward, x) in prepared.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            _step(forward, module, x)
            _sync(x.device)
            wall[label].append((time.perf_counter() - start_wall) * 1e3)
            cpu[label].append((time.process_time() - start_cpu) * 1e3)
    for module, _, x in prepared.values():
        module.zero_grad(set_to_none=True)
    return {
        k: {"time_ms": min(wall[k]), "time_median_ms": statistics.median(wall[k]), "cpu_ms": statistics.median(cpu[k])}
        for k in prepared
    }


def memory(module: nn.Module, x: torch.Tensor, forward: Forward | None = None) -> dict[str, int | None]:
    """Saved-tensor bytes of one forward and (CUDA) the peak over forward+backward."""
    forward = forward or module
    x = x.detach().requires_grad_(True)
    peak = None
    if x.device.type == "cuda":
        module.zero_grad(set_to_none=True)
        torch.cuda.synchronize(x.device)
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        _step(forward, module, x)
        torch.cuda.synchronize(x.device)
        peak = torch.cuda.max_memory_allocated(x.device) - base
    saved = saved_tensor_bytes(lambda: forward(x), exclude=module)
    module.zero_grad(set_to_none=True)
    return {"saved_bytes": saved, "peak_bytes": peak}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _vs(t: dict, ref: dict) -> dict:
    """Timing columns of ``t`` with its wall and CPU ratios to ``ref``."""
    return {**t, "time_ratio": _ratio(t["time_median_ms"], ref["time_median_ms"]), "cpu_ratio": _ratio(t["cpu_ms"], ref["cpu_ms"])}


def parse_shape(text: str, parts: int = 3) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
        if len(values) != parts:
            raise ValueError
    except ValueError:
        example = "256x56x56 (CxHxW)" if parts == 3 else "8x1024x14x14 (NxCxHxW)"
        raise argparse.ArgumentTypeError(f"shape must look like {example}; got {text!r}") from None
    return values


def load_baseline(root: Path, name: str) -> type[nn.Module]:
    """The class registered as ``name``, loaded from the same file under another checkout ``root``."""
    cls = BLOCKS[name]
    source = Path(sys.modules[cls.__module__].__file__).name
    path = root / "ctxlit" / "blocks" / source
    spec = importlib.util.spec_from_file_location(f"ctxlit_baseline_{path.stem}", path)
    if spec is None or not path.is_file():
        raise FileNotFoundError(f"--baseline: no {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls.__name__)


def _variants(conv: nn.Module, block: nn.Module, x: torch.Tensor, opts: argparse.Namespace) -> dict:
    """The interleaved candidates for one block: conv and block, plus the optional columns."""
    cands = {"conv": (conv, conv, x), "block": (block, block, x)}
    if opts.channels_last:
        fmt = torch.channels_last
        x_cl = x.contiguous(memory_format=fmt)
        for label, m in (("conv_cl", conv), ("block_cl", block)):
            m_cl = copy.deepcopy(m).to(memory_format=fmt)
            cands[label] = (m_cl, m_cl, x_cl)
    if opts.compile:
        for label, m in (("conv_compiled", conv), ("block_compiled", block)):
            cands[label] = (m, torch.compile(m), x)
    return cands


def bench_blocks(names, shapes, batch, repeats, device, opts: argparse.Namespace | None = None) -> list[dict]:
    opts = opts or argparse.Namespace(channels_last=False, compile=False, baseline=None)
    rows = []
    for c, h, w in shapes:
        x = torch.randn(batch, c, h, w, device=device)
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False).to(device)
        base_flops, base_params = count_flops(conv, tuple(x.shape)), count_parameters(conv)
        base_memory = memory(conv, x)
        for name in names:
            options = {"out_channels": c, "stride": 1} if is_spatial_operator(name) else {}
            torch.manual_seed(0)
            block = build_block(name, c, **options).to(device)
            cands = _variants(conv, block, x, opts)
            if opts.baseline:
                torch.manual_seed(0)
                old = load_baseline(Path(opts.baseline), name)(c, **options).to(device)
                cands["baseline"] = (old, old, x)
            timing = time_interleaved(cands, repeats)
            result, base = {**timing["block"], **memory(block, x)}, {**timing["conv"], **base_memory}
            flops, params = count_flops(block, tuple(x.shape)), count_parameters(block)
            row = {
                "block": name, "shape": [batch, c, h, w], **result, "flops": flops, "params": params,
                "conv3x3": {**base, "flops": base_flops, "params": base_params},
                "time_ratio": _ratio(result["time_median_ms"], base["time_median_ms"]),
                "cpu_ratio": _ratio(result["cpu_ms"], base["cpu_ms"]),
                "flop_ratio": _ratio(flops, base_flops), "param_ratio": _ratio(params, base_params),
                "saved_ratio": _ratio(result["saved_bytes"], base["saved_bytes"]),
                "peak_ratio": _ratio(result["peak_bytes"], base["peak_bytes"]),
            }
            for key, (b, ref) in {"channels_last": ("block_cl", "conv_cl"), "compile": ("block_compiled", "conv_compiled"),
                                  "baseline": ("baseline", "conv")}.items():
                if b in timing:
                    row[key] = _vs(timing[b], timing[ref])
            if "baseline" in row:
                row["baseline"]["speedup_cpu"] = _ratio(timing["baseline"]["cpu_ms"], result["cpu_ms"])
                row["baseline"]["speedup_wall"] = _ratio(timing["baseline"]["time_median_ms"], result["time_median_ms"])
            rows.append(row)
            print(_block_line(row), flush=True)
            del block, cands
    return rows


def mmcv_style_non_local(block: NonLocal, x: torch.Tensor) -> torch.Tensor:
    """Embedded-Gaussian Non-local as mmcv's ``NonLocal2d`` computes it (paper definition):
    1x1 convs, reshape + permute views, ``matmul`` for the L x L map, softmax, ``matmul``, then
    the output 1x1 conv + BN and the residual. Unscaled, like the block's default."""
    n, _, h, w = x.shape
    theta = block.theta(x).reshape(n, block.inter, -1).permute(0, 2, 1)  # (N, L, Ci)
    phi = block.phi(x).reshape(n, block.inter, -1)  # (N, Ci, L)
    g = block.g(x).reshape(n, block.inter, -1).permute(0, 2, 1)  # (N, L, Ci)
    attention = torch.matmul(theta, phi).softmax(dim=-1)  # (N, L, L)
    y = torch.matmul(attention, g).permute(0, 2, 1).contiguous().reshape(n, block.inter, h, w)
    return x + block.bn(block.out(y))


def _fast_vs_references(name: str, block: nn.Module, x: torch.Tensor, repeats: int, labels: tuple) -> dict:
    cands = {"fast": (block, block, x), "reference": (block, block._reference_forward, x)}
    if name == "nl":
        cands["mmcv"] = (block, lambda t: mmcv_style_non_local(block, t), x)
    timing = time_interleaved(cands, repeats)
    parts = {k: {**timing[k], **memory(block, x, f)} for k, (_, f, _) in cands.items()}
    fast, ref = parts["fast"], parts["reference"]
    row = {
        "block": name, "shape": list(x.shape),
        "fast": {"method": labels[0], **fast}, "reference": {"method": labels[1], **ref},
        "speedup": _ratio(ref["time_median_ms"], fast["time_median_ms"]),
        "cpu_speedup": _ratio(ref["cpu_ms"], fast["cpu_ms"]),
        "saved_reduction": _ratio(ref["saved_bytes"], fast["saved_bytes"]),
        "peak_reduction": _ratio(ref["peak_bytes"], fast["peak_bytes"]),
    }
    if "mmcv" in parts:
        row["mmcv"] = {"method": "mmcv-style NonLocal2d (matmul)", **parts["mmcv"]}
        row["vs_mmcv_cpu"] = _ratio(parts["mmcv"]["cpu_ms"], fast["cpu_ms"])
        row["vs_mmcv_wall"] = _ratio(parts["mmcv"]["time_median_ms"], fast["time_median_ms"])
    return row


def bench_fast_paths(shapes, batch, repeats, device, lr_kernel: int, nl_shapes=()) -> list[dict]:
    cases = {
        "nl": ("NonLocal.forward", "explicit HWxHW softmax", lambda c: NonLocal(c)),
        "lr": (f"offset loop k={lr_kernel}", f"unfold k={lr_kernel}", lambda c: LocalRelation(c, kernel_size=lr_kernel)),
    }
    jobs = [(name, (batch, *shape)) for shape in shapes for name in cases]
    jobs += [("nl", tuple(s)) for s in nl_shapes]
    rows = []
    for name, (n, c, h, w) in jobs:
        x = torch.randn(n, c, h, w, device=device)
        torch.manual_seed(0)
        fast_label, ref_label, factory = cases[name]
        block = factory(c).to(device)
        rows.append(_fast_vs_references(name, block, x, repeats, (fast_label, ref_label)))
        print(_fast_line(rows[-1]), flush=True)
        del block
    return rows


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _block_line(r: dict) -> str:
    shape = "x".join(map(str, r["shape"][1:]))
    extra = "".join(f" {_x(r[k]['cpu_ratio']):>8}" if k in r else "" for k in ("channels_last", "compile"))
    if "baseline" in r:
        extra += f" {_x(r['baseline']['cpu_ratio']):>8} {_x(r['baseline']['speedup_cpu']):>8}"
    return (
        f"{r['block']:<6} {shape:>11} {r['time_median_ms']:>8.2f} {r['cpu_ms']:>8.2f} {r['conv3x3']['cpu_ms']:>8.2f} "
        f"{_x(r['time_ratio']):>8} {_x(r['cpu_ratio']):>8} {r['flops'] / 1e9:>8.4f} {_x(r['flop_ratio']):>8} "
        f"{_mb(r['saved_bytes']):>8} {_x(r['saved_ratio']):>8} {_mb(r['peak_bytes']):>7}{extra}"
    )


def _fast_line(r: dict) -> str:
    shape = "x".join(map(str, r["shape"]))
    f, ref = r["fast"], r["reference"]
    mmcv = f"{r['mmcv']['cpu_ms']:>9.2f} {_x(r['vs_mmcv_cpu']):>8}" if "mmcv" in r else f"{'-':>9} {'-':>8}"
    return (
        f"{r['block']:<4} {shape:>14} {f['cpu_ms']:>9.2f} {ref['cpu_ms']:>9.2f} {_x(r['cpu_speedup']):>8} {_x(r['speedup']):>8} "
        f"{mmcv} {_mb(f['saved_bytes']):>8} {_mb(ref['saved_bytes']):>8} {_x(r['saved_reduction']):>8} "
        f"{_mb(f['peak_bytes']):>7} {_mb(ref['peak_bytes']):>7}   {f['method']} vs {ref['method']}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctxlit.bench blocks", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--batch-size", type=int, default=8)
    add("--shapes", default="256x56x56,512x28x28,1024x14x14", help="comma-separated CxHxW")
    add("--repeats", type=int, default=5, help="interleaved timing rounds (medians are reported)")
    add("--blocks", default=",".join(BLOCKS), help="comma-separated registry names")
    add("--lr-kernel", type=int, default=7, help="k for the Local Relation comparison")
    add("--nl-shapes", default="", help="comma-separated NxCxHxW: Non-local vs its references there too "
        "(e.g. 8x1024x14x14, ResNet-50's c4)")
    add("--channels-last", action="store_true", help="add a column: block and conv in channels_last")
    add("--compile", action="store_true", help="add a column: block and conv through torch.compile (slow warm-up on CPU)")
    add("--baseline", help="another checkout's root: time its version of each block in the same rounds")
    add("--no-fast-paths", action="store_true", help="skip the fast-path vs reference comparison")
    add("--json", default="bench-results/blocks.json", help="where to write the results")
    add("--quick", action="store_true", help="CI-sized run: batch 2, 64x28x28, 3 rounds (ratios as at that size)")
    add("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default). On a CPU shared "
        "with other jobs, 1 avoids OpenMP threads waiting on each other, which penalises blocks made of many small ops")
    return parser


def _header(opts) -> str:
    extra = (" cl/conv" if opts.channels_last else "") + (" cmp/conv" if opts.compile else "")
    extra += " base/cnv base/this" if opts.baseline else ""
    return (f"{'block':<6} {'CxHxW':>11} {'wall ms':>8} {'cpu ms':>8} {'conv cpu':>8} {'wall/cnv':>8} {'cpu/conv':>8} "
            f"{'GFLOPs':>8} {'fl/conv':>8} {'saved MB':>8} {'sv/conv':>8} {'peak MB':>7}{extra}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    nl_shapes = [parse_shape(s, parts=4) for s in args.nl_shapes.split(",") if s]
    names = [n for n in args.blocks.split(",") if n]
    unknown = [n for n in names if n not in BLOCKS]
    if unknown:
        parser.error(f"unknown block(s) {', '.join(unknown)}; allowed: {', '.join(BLOCKS)}")
    batch, repeats = args.batch_size, args.repeats
    if args.quick:
        batch, repeats, shapes = 2, 3, [(64, 28, 28)]
    device = torch.device(args.device)
    allocator = keep_freed_memory()  # as in a fit: blocks and convs are timed in the process a run has

    print(f"device {device}, batch {batch}, repeats {repeats}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(allocator)
    print(f"time: {TIME_NOTE}\nmemory: {MEMORY_NOTE}\nflops: {NOTE_NOT_COUNTED}")
    print("\nblock cost next to a 3x3 conv of the same width (forward+backward, train mode)")
    print(_header(args))
    blocks = bench_blocks(names, shapes, batch, repeats, device, args)
    fast_paths = []
    if not args.no_fast_paths:
        print("\nfast paths vs explicit references (forward+backward; cpu ms, speed-ups: cpu then wall)")
        print(f"{'':<4} {'NxCxHxW':>14} {'fast cpu':>9} {'ref cpu':>9} {'cpu x':>8} {'wall x':>8} {'mmcv cpu':>9} "
              f"{'mmcv/fst':>8} {'fast MB':>8} {'ref MB':>8} {'saved/':>8} {'fpk MB':>7} {'rpk MB':>7}")
        fast_paths = bench_fast_paths(shapes, batch, repeats, device, args.lr_kernel, nl_shapes)

    result = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": batch, "repeats": repeats,
        "shapes": [list(s) for s in shapes], "time_note": TIME_NOTE, "memory_note": MEMORY_NOTE, "flops_note": NOTE_NOT_COUNTED,
        "malloc": allocator, "options": {"channels_last": args.channels_last, "compile": args.compile, "baseline": args.baseline},
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
