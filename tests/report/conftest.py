"""Runs from real short fits, shared by the report tests: synthetic, 2 configurations x 2
seeds (2 epochs of 4 steps, attention drawn every epoch), plus one segmentation run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import TINY, run_fit
from tests.data.conftest import write_cityscapes_pair

ROOT = Path(__file__).parents[2]
CONFIGS = {"none": ["--model.init_args.block=none"], "gc": []}  # the baseline; the default config's GC
SEEDS = (0, 1)


def offline_environment(home: Path) -> dict[str, str]:
    drop = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RUN_GROUP",
            "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "CTXLIT_RUN_DIR", "WANDB_SERVICE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), WANDB_CONFIG_DIR=str(home / ".config" / "wandb"),
               WANDB_CACHE_DIR=str(home / ".cache" / "wandb"), WANDB_MODE="offline")
    return env


@pytest.fixture(scope="session")
def study_runs(tmp_path_factory) -> Path:
    """``<root>/study/<config>-seed<k>/`` (classification) and ``<root>/seg/`` (segmentation)."""
    root = tmp_path_factory.mktemp("report-runs")
    env = offline_environment(root / "home")
    for name, flags in CONFIGS.items():
        for seed in SEEDS:
            run_dir = root / "study" / f"{name}-seed{seed}"
            result = run_fit([*TINY, *flags, f"--seed_everything={seed}",
                              "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1",
                              "--attention.every_n_epochs=1", "--attention.num_images=2"],
                             cwd=root, env={**env, "CTXLIT_RUN_DIR": str(run_dir)})
            assert result.returncode == 0, result.stderr[-3000:]
    tree = root / "cityscapes"
    for split, city in (("train", "aachen"), ("train", "bochum"), ("val", "frankfurt")):
        for frame in range(2):
            write_cityscapes_pair(tree, split, city, frame)
    result = run_fit([
        "--config", str(ROOT / "experiments" / "cityscapes" / "fcn_resnet50.yaml"), f"--data.init_args.root={tree}",
        "--data.init_args.crop_height=32", "--data.init_args.crop_width=32", "--data.init_args.num_workers=0",
        "--model.init_args.backbone=resnet10", "--model.init_args.backbone_options.width=8",
        "--model.init_args.head_channels=16", "--trainer.max_steps=2", "--trainer.check_val_every_n_epoch=1",
        "--trainer.precision=32", "--trainer.enable_progress_bar=false"],
        cwd=root, env={**env, "CTXLIT_RUN_DIR": str(root / "seg")})
    assert result.returncode == 0, result.stderr[-3000:]
    return root
