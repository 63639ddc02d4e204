"""Shared cases for the block tests (imported by the test files; pytest puts this folder on sys.path)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ctxlit.blocks import BLOCKS, build_block

CHANNELS = 64
SHAPE = (2, CHANNELS, 8, 8)


def grid(name: str, **choices) -> list:
    """pytest params for the product of ``choices`` (option -> list of values)."""
    keys = list(choices)
    out = []
    for values in itertools.product(*(choices[k] for k in keys)):
        options = dict(zip(keys, values))
        label = "-".join(f"{k}={v}" for k, v in options.items()) or "default"
        out.append(pytest.param(name, options, id=f"{name}[{label}]"))
    return out


CASE_GRIDS = {
    "gc": dict(ratio=[1 / 16, 1 / 4], pooling=["att", "avg"], fusion=["add", "mul", "both"], layernorm=[True, False]),
    "snl": {},
    "se": dict(reduction=[16, 4]),
    "nl": dict(
        mode=["embedded_gaussian", "gaussian", "dot_product", "concatenation"],
        subsample=[False, True],
        scaled=[False, True],
    ),
    "glore": dict(normalize=[False, True]),
    "spm": {},
    "mpm": {},
    "sk": dict(out_channels=[None, 128], stride=[1, 2]),
    "lr": dict(phi=["squared_diff", "abs_diff", "product"], out_channels=[None, 128], stride=[1, 2]),
}



def _valid(case) -> bool:
    name, options = case.values
    return not (name == "nl" and options["scaled"] and options["mode"] in ("dot_product", "concatenation"))


CASES = [case for name, choices in CASE_GRIDS.items() if name in BLOCKS for case in grid(name, **choices) if _valid(case)]


def make(name: str, options: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_block(name, CHANNELS, **options)


def expected_shape(options: dict) -> tuple[int, ...]:
    n, c, h, w = SHAPE
    stride = options.get("stride", 1)
    out = options.get("out_channels") or c
    return (n, out, (h - 1) // stride + 1, (w - 1) // stride + 1)


def sample(seed: int = 1, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 2) -> None:
    """Give zero-initialised parameters (last convs, BN gammas) non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
