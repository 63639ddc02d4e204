"""The AttentionMaps callback: what it draws is what the blocks recorded."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ctxlit.errors import ConfigError
from ctxlit.report import attention as report_attention
from ctxlit.report.attention import attention_figures, context_maps, latest_maps, recorded
from ctxlit.report.runs import find_runs
from ctxlit.report.study import build_studies
from ctxlit.tasks.attention_maps import MIN_ROW_HEIGHT, AttentionMaps, checkpoint_maps, draw


def test_gc_picture_is_brightest_at_the_recorded_maps_argmax(study_runs):
    folder = sorted((study_runs / "study" / "gc-seed0" / "attention").glob("epoch-*"))[-1]
    record = torch.load(folder / "maps.pt", weights_only=True)
    images = record["images"]
    n, _, h, w = images.shape
    assert n == 2
    for run in (study_runs / "study").iterdir():  # drawn at every validation of every run
        assert sorted(p.name for p in (run / "attention").iterdir()) == ["epoch-000", "epoch-001"]
    scale = -(-MIN_ROW_HEIGHT // h)
    gc_blocks = [name for name, kind in record["kinds"].items() if kind == "GlobalContext"]
    assert len(gc_blocks) == 3  # one per block of stages 2-4 of ResNet-10
    for name in gc_blocks:
        weights = record["maps"][name]  # (N, 1, Hm, Wm), sums to 1
        assert torch.allclose(weights.sum(dim=(2, 3)), torch.ones(n, 1), atol=1e-5)
        picture = np.asarray(Image.open(folder / f"{name}.png").convert("RGB")).astype(float)
        lightness = picture @ [0.299, 0.587, 0.114]
        for i in range(n):
            # row i: [image | 4 px gap | map], rows 4 px apart
            top, left = i * (h * scale + 4), w * scale + 4
            panel = lightness[top:top + h * scale, left:left + w * scale]
            y, x = np.unravel_index(panel.argmax(), panel.shape)
            hm, wm = weights.shape[-2:]
            fy, fx = h * scale // hm, w * scale // wm
            value = weights[i, 0]
            assert value[y // fy, x // fx] == pytest.approx(float(value.max())), (name, i)


def test_attention_images_reach_wandb_offline(study_runs):
    run_dir = study_runs / "study" / "gc-seed0"
    media = list((run_dir / "wandb").glob("offline-run-*/files/media/images/attention_*.png"))
    assert len(media) == 2 * 3  # 2 validations x 3 GC blocks


def test_non_local_draws_one_panel_per_query_and_marks_it():
    images = torch.rand(1, 3, 16, 32)
    maps = torch.rand(1, 3, 8, 16)  # (N, Q, Hk, Wk)
    picture = draw(images, maps, "NonLocal", [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
    scale = -(-MIN_ROW_HEIGHT // 16)
    assert picture.shape == (16 * scale, 4 * 32 * scale + 3 * 4, 3)
    first = picture[:, 32 * scale + 4: 2 * 32 * scale + 4]
    assert tuple(first[0, 0]) == (255, 0, 0)  # query (0, 0) marked in its own panel
    assert draw(images, torch.rand(1, 2, 9, 16, 32), "LocalRelation") is None  # maps.pt only


@pytest.mark.parametrize("kwargs", [{"every_n_epochs": -1}, {"num_images": 0}])
def test_bad_options_are_one_config_error(kwargs):
    with pytest.raises(ConfigError, match="attention: every_n_epochs must be >= 0"):
        AttentionMaps(**kwargs)


def test_maps_from_a_checkpoint_are_the_ones_recorded_at_its_epoch(study_runs):
    """The run's last checkpoint, rebuilt from its own hyper-parameters, gives the maps the
    callback recorded at that last validation (same images, same weights)."""
    run_dir = study_runs / "study" / "gc-seed0"
    recorded = torch.load(run_dir / "attention" / "epoch-001" / "maps.pt", weights_only=True)
    computed = checkpoint_maps(run_dir / "checkpoints" / "last.ckpt", num_images=2, queries=recorded["queries"])
    assert computed["epoch"] == recorded["epoch"] == 1 and computed["kinds"] == recorded["kinds"]
    assert torch.equal(computed["images"], recorded["images"])
    for name, value in recorded["maps"].items():
        assert torch.allclose(computed["maps"][name], value, atol=1e-5), name


def test_the_report_draws_attention_from_checkpoints_when_nothing_was_recorded(study_runs, tmp_path):
    for name in ("none-seed0", "gc-seed0"):
        shutil.copytree(study_runs / "study" / name, tmp_path / "runs" / name, ignore=shutil.ignore_patterns("attention"))
    (study,) = build_studies(find_runs([str(tmp_path / "runs")]))
    figure = context_maps(recorded(study))
    assert figure is not None and "epoch 1, last checkpoint" in figure[1]
    (run,) = find_runs([str(tmp_path / "runs" / "gc-seed0")])
    (tmp_path / "runs" / "gc-seed0" / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    assert latest_maps(run) is None  # a damaged checkpoint leaves the figure out, not the report


def test_each_runs_attention_is_read_once_for_all_figures(study_runs, monkeypatch):
    """The context maps and the SK figure share one read per group (a checkpoint's costs a
    model load and a forward pass)."""
    reads = []
    real = report_attention.latest_maps
    monkeypatch.setattr(report_attention, "latest_maps", lambda run: reads.append(run.dir) or real(run))
    (study,) = build_studies(find_runs([str(study_runs / "study")]))
    assert attention_figures([study])
    assert len(reads) == len(study.groups) == 2  # the lowest seed of each group has a record
