"""The GPU studies' sweep files: the trials each one promises, parsed by ctxlit's own CLI
(nothing is trained: these run on ImageNet, the food photos and Cityscapes, on several GPUs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ctxlit import sweep as sweep_cli

ROOT = Path(__file__).parents[2]


def trials_and_configs(name: str, monkeypatch) -> tuple[list[dict], list[dict]]:
    monkeypatch.chdir(ROOT)
    sweep = sweep_cli.load_sweep(ROOT / "sweeps" / name)
    trials = sweep_cli.enumerate_trials(sweep)
    return trials, [sweep_cli.trial_config(sweep, t) for t in trials]


def multi_gpu(config: dict, devices: int) -> bool:
    trainer = config["trainer"]
    return (trainer["devices"], trainer["strategy"], trainer["sync_batchnorm"]) == (devices, "ddp", True)


def test_gcnet_imagenet_is_the_grid_at_ratio_16_plus_ratio_4_and_the_baseline(monkeypatch):
    trials, configs = trials_and_configs("gcnet_ablation_imagenet.yaml", monkeypatch)
    cells = []
    for config in configs:
        model = config["model"]["init_args"]
        assert model["backbone"] == "resnet50"
        assert model["placement"] == {"stages": [2, 3, 4], "blocks": "all", "position": "after_last_conv"}
        assert multi_gpu(config, 8) and config["trainer"]["precision"] == "bf16-mixed"
        block = model["block"]
        cells.append("none" if block == "none" else tuple(block["init_args"][k]
                                                          for k in ("ratio", "pooling", "fusion", "layernorm")))
    grid16 = {(0.0625, p, f, ln) for p in ("att", "avg") for f in ("add", "mul") for ln in (True, False)}
    assert len(cells) == 10 and set(cells) == {"none", (0.25, "att", "add", True)} | grid16


def test_food_glore_is_resnet18_at_112_with_and_without_glore_after_res4_three_seeds(monkeypatch):
    trials, configs = trials_and_configs("food_glore_seeds.yaml", monkeypatch)
    seen = set()
    for config in configs:
        model = config["model"]["init_args"]
        assert (model["backbone"], config["data"]["init_args"]["image_size"]) == ("resnet18_112", 112)
        # res4 is layer3 (stage index 3): one unit after its last block, not in res5 too (the seed's leak)
        assert model["placement"] == {"stages": [3], "blocks": "last", "position": "after_add"}
        assert multi_gpu(config, 4)
        seen.add((model["block"], config["seed_everything"]))
    assert len(configs) == 6 and seen == {(b, s) for b in ("glore", "none") for s in (0, 1, 2)}


def test_cityscapes_heads_are_five_fcn_heads_on_dilated_resnet50_and_hrnetv2_w18(monkeypatch):
    trials, configs = trials_and_configs("cityscapes_heads.yaml", monkeypatch)
    models = [c["model"]["init_args"] for c in configs]
    assert all(multi_gpu(c, 4) for c in configs) and len(configs) == 6
    resnets = [m for m in models if m["backbone"] == "resnet50"]
    assert sorted(m["head_block"] for m in resnets) == sorted(["none", "gc", "nl", "glore", "spm"])
    for m in resnets:  # the ResNet config's own head and stride survive the per-trial values
        assert (m["backbone_options"], m["head_channels"], m["head_num_convs"], m["aux_weight"]) == (
            {"output_stride": 8}, 512, 2, 0.4)
    (hrnet,) = [m for m in models if m["backbone"] == "hrnet_w18"]
    # the ResNet's output_stride must not leak into HRNet's options (it would be rejected)
    assert hrnet["backbone_options"] == {"features": "concat"}
    assert (hrnet["head_block"], hrnet["head_channels"], hrnet["head_kernel_size"], hrnet["head_num_convs"],
            hrnet["aux_weight"]) == ("none", 270, 1, 1, 0.0)


def test_a_rejected_trial_config_is_one_sweep_error(monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep = sweep_cli.load_sweep(ROOT / "sweeps" / "food_glore_seeds.yaml")
    with pytest.raises(sweep_cli.SweepError, match="bogus"):
        sweep_cli.trial_config(sweep, {"model.init_args.block": "bogus"})


SBATCH = ROOT / "sweeps" / "slurm_agent.sbatch"


def test_slurm_script_is_valid_bash_and_refuses_bad_input(tmp_path):
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    no_id = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, cwd=tmp_path)
    assert no_id.returncode != 0 and "usage: sbatch" in no_id.stderr
    env = {**os.environ, "TRIAL_NODES": "2"}
    bad = subprocess.run(["bash", str(SBATCH), "e/p/s"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "TRIAL_NODES must be 1 (a trial per node) or all" in bad.stderr


def test_a_multi_node_copy_of_a_sweep_as_the_slurm_script_describes_validates(tmp_path, monkeypatch):
    """`srun` before `${env}` and trainer.num_nodes: still a valid sweep whose trials parse, and
    the agent's command line starts with srun."""
    monkeypatch.chdir(ROOT)
    sweep = sweep_cli.load_sweep(ROOT / "sweeps" / "gcnet_ablation_imagenet.yaml")
    sweep["command"] = ["srun", *sweep["command"]]
    sweep["parameters"]["trainer.num_nodes"] = {"value": 4}
    path = tmp_path / "multi_node.yaml"
    path.write_text(yaml.safe_dump(sweep))
    problems, parsed = sweep_cli.validate(path)
    assert problems == [] and parsed == 10
    params = sweep_cli.enumerate_trials(sweep)[0]
    assert sweep_cli.agent_command(sweep, params, "a.json")[:3] == ["srun", "/usr/bin/env", "python"]
    assert sweep_cli.trial_config(sweep, params)["trainer"]["num_nodes"] == 4
