"""Run folders written directly through ctxlit.runs (config.yaml, metrics.csv, summary.json), with
values chosen by the test: a study whose effects are known."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import yaml

from ctxlit import runs

METRIC = "val/acc1"
DEFAULT = Path(__file__).parents[2] / "experiments" / "synthetic" / "default.yaml"
GRID = {"pooling": ("att", "avg"), "fusion": ("add", "mul"), "layernorm": (True, False)}
#: The truth of the planted study: layernorm on +0.05, fusion add +0.04 only with layernorm on
#: (so fusion's main effect is +0.02, layernorm's +0.07, their interaction +0.04), pooling none.
TRUTH = {"layernorm": 0.07, "fusion": 0.02, "pooling": 0.0, "fusion × layernorm": 0.04,
         "fusion × pooling": 0.0, "layernorm × pooling": 0.0}
BASE = 0.60
BASELINE_GAP = -0.20  # the no-block baseline: far below every cell (mixing it in moves any effect)


def block(pooling, fusion, layernorm) -> dict:
    return {"class_path": "ctxlit.blocks.GlobalContext",
            "init_args": {"ratio": 0.25, "pooling": pooling, "fusion": fusion, "layernorm": layernorm}}


def config(block_value, seed: int, max_epochs: int = 5, **extra) -> dict:
    """The synthetic default experiment's config with this block, seed, budget and model options."""
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["seed_everything"] = seed
    cfg["trainer"]["max_epochs"] = max_epochs
    cfg["model"]["init_args"].update(block=block_value, **extra)
    return cfg


def write_run(folder: Path, cfg: dict, value: float | None, status: str = "finished", **summary) -> Path:
    """A run folder as fit leaves it: config.yaml, metrics.csv (2 epochs, the last = value) and
    summary.json (``status``; the metrics when ``value`` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / runs.CONFIG).write_text(yaml.safe_dump(cfg))
    last = value if value is not None else 0.1
    (folder / runs.METRICS).write_text(f"epoch,step,{METRIC},train/loss\n0,9,{last - 0.1},\n0,9,,2.0\n"
                                       f"1,19,{last},\n1,19,,1.5\n")
    record = {"status": status, "task": "ClassificationTask", "monitor": METRIC, "params": 1000, "flops": 2e6,
              **summary}
    if value is not None:
        record["metrics"] = {METRIC: value}
    runs.write_summary(folder, record)
    return folder


def planted_study(root: Path, seeds=range(5), noise: float = 0.003, seed_spread: float = 0.08,
                  rng_seed: int = 1) -> Path:
    """The GCNet grid (8 cells) plus the no-block baseline, each over ``seeds``: value = BASE +
    the seed's offset (shared by every group: what pairing removes) + the planted effects +
    independent noise."""
    rng = np.random.default_rng(rng_seed)
    offsets = {s: rng.normal(0, seed_spread) for s in seeds}
    for seed in seeds:
        write_run(root / f"none-seed{seed}", config("none", seed),
                  BASE + BASELINE_GAP + offsets[seed] + rng.normal(0, noise))
        for pooling, fusion, layernorm in itertools.product(*GRID.values()):
            value = BASE + offsets[seed] + 0.05 * layernorm + 0.04 * (layernorm and fusion == "add")
            name = f"{pooling}-{fusion}-{'ln' if layernorm else 'noln'}-seed{seed}"
            write_run(root / name, config(block(pooling, fusion, layernorm), seed), value + rng.normal(0, noise))
    return root
