"""A report of runs among which one is damaged: HTML, Markdown and JSON list that run as damaged
(the file and the reason) and still show the others; never a traceback. Run text is inert in
Markdown; figure labels are plain text (no mathtext); an -o that cannot be written is one error."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess

import pytest
from PIL import Image

from ctxlit import runs
from ctxlit.report import figures
from ctxlit.report.__main__ import main
from ctxlit.report.runs import find_runs
from ctxlit.report.study import build_studies
from tests.report.written_runs import block, config, write_run


@pytest.fixture
def two_groups(tmp_path):
    """none and GC, 3 seeds each: the runs that must stay shown."""
    for seed in range(3):
        write_run(tmp_path / "study" / f"none-seed{seed}", config("none", seed), 0.40 + 0.01 * seed)
        write_run(tmp_path / "study" / f"gc-seed{seed}", config(block("att", "add", True), seed), 0.50 + 0.01 * seed)
    return tmp_path / "study"


DAMAGE = [
    ("summary-list", runs.SUMMARY, b"[1, 2]", "holds a list, not a mapping"),
    ("summary-string", runs.SUMMARY, b'"finished"', "holds a str, not a mapping"),
    ("monitor-list", runs.SUMMARY, b'{"status": "finished", "monitor": ["val/acc1"], "metrics": {"val/acc1": 0.9}}',
     "monitor is a list"),
    ("config-list", runs.CONFIG, b"- a\n- b\n", "holds a list, not a mapping"),
    ("metrics-not-utf8", runs.METRICS, b"epoch,val/acc1\n0,\xff\xfe\n", "not UTF-8"),
    ("config-not-utf8", runs.CONFIG, b"seed_everything: \xff\n", "not UTF-8"),
    ("epoch-abc", runs.METRICS, b"epoch,val/acc1\nabc,0.5\n", "epoch 'abc' is not a number"),
]


@pytest.mark.parametrize("form", ["md", "json", "html"])
@pytest.mark.parametrize("name, file, content, reason", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_run_is_listed_as_damaged_and_the_others_still_shown(two_groups, tmp_path, capsys, form,
                                                                       name, file, content, reason):
    damaged = write_run(two_groups / "damaged", config(block("avg", "mul", False), 0), 0.99)
    (damaged / file).write_bytes(content)
    out = tmp_path / f"report.{form}"
    assert main([str(two_groups), "--format", form, "-o", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    text = out.read_text()
    if form == "json":
        (study,) = json.loads(text)["studies"]
        assert sorted((g["label"], g["n"]) for g in study["groups"]) == [("GlobalContext", 3), ("none", 3)]
        (listed,) = study["not_results"]
        assert listed["run"] == str(damaged) and listed["status"] == "damaged"
        assert listed["why"].startswith(f"damaged: {file}: ") and reason in listed["why"]
        assert 0.99 not in [v for g in study["groups"] for v in g["values"]]
    else:
        assert str(damaged) in text and f"damaged: {file}: " in text and reason.replace("'", "&#x27;" if form == "html" else "'") in text
        assert "0.99" not in text.split("Not results")[0]
        assert text.count("GlobalContext") >= 1 and "none" in text


def test_a_run_folder_without_config_or_reached_through_a_link_is_listed(two_groups, tmp_path, capsys):
    elsewhere = write_run(tmp_path / "elsewhere" / "gc-seed3", config(block("att", "add", True), 3), 0.53)
    (two_groups / "linked").symlink_to(elsewhere)
    no_config = write_run(two_groups / "no-config", config("none", 7), 0.3)
    (no_config / runs.CONFIG).unlink()
    assert main([str(two_groups), "--format", "json"]) == 0
    (study,) = json.loads(capsys.readouterr().out)["studies"]
    gc = next(g for g in study["groups"] if g["label"] == "GlobalContext")
    assert gc["n"] == 4 and str(two_groups / "linked") in gc["runs"]  # the linked run is a result
    assert {"run": str(no_config), "status": "damaged",
            "why": "damaged: config.yaml: missing (every run writes it when it starts)"} in study["not_results"]


def test_run_text_is_inert_in_markdown(two_groups, capsys):
    note = "<script>alert(1)</script> a|b\r\nc\rd\ne"
    for seed in range(2):
        write_run(two_groups / f"odd-seed{seed}", config("none", seed, note=note), 0.45)
    assert main([str(two_groups), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt; a\\|b c d e" in out
    assert "\r" not in out
    header = next(line for line in out.splitlines() if line.startswith("| model.init_args.block |"))
    body = next(line for line in out.splitlines() if "&lt;script&gt;" in line and line.startswith("| none |"))
    assert body.count(" | ") == header.count(" | ")  # the | inside the value did not add a column


def test_a_dollar_sign_in_a_value_is_drawn_as_text_not_mathtext(two_groups, tmp_path):
    for seed in range(2):
        write_run(two_groups / f"math-seed{seed}", config("none", seed, note="$\\frac{a$ and $x^{$"), 0.45)
    report = tmp_path / "report.html"
    assert main([str(two_groups), "-o", str(report)]) == 0
    assert "$\\frac{a$ and $x^{$" in report.read_text()


def test_an_empty_loss_panel_is_not_drawn(tmp_path):
    def width(study_dir) -> int:
        (study,) = build_studies(find_runs([str(study_dir)]), effects=False)
        return Image.open(io.BytesIO(figures.learning_curves(study))).width

    for seed in range(2):
        write_run(tmp_path / "with" / f"r{seed}", config("none", seed), 0.4)
        folder = write_run(tmp_path / "without" / f"r{seed}", config("none", seed), 0.4)
        (folder / runs.METRICS).write_text("epoch,step,val/acc1\n0,9,0.3\n1,19,0.4\n")
    assert width(tmp_path / "without") < 0.7 * width(tmp_path / "with")


def test_groups_on_one_spot_of_the_cost_scatter_all_stay_visible(tmp_path):
    for name, b in (("none", "none"), ("gc", block("att", "add", True)), ("gc2", block("avg", "add", True))):
        for seed in range(2):
            write_run(tmp_path / f"{name}-{seed}", config(b, seed), 0.5)  # one FLOPs, one mean: one spot
    (study,) = build_studies(find_runs([str(tmp_path)]), effects=False)
    image = Image.open(io.BytesIO(figures.metric_vs_cost(study, "flops"))).convert("RGB")
    plot = image.crop((0, 0, int(image.width * 0.6), image.height))  # the axes, not the legend
    colors = figures._colors(3)
    pixels = list(plot.get_flattened_data()) if hasattr(plot, "get_flattened_data") else list(plot.getdata())
    for color in colors:
        rgb = tuple(int(255 * c) for c in color[:3])
        near = sum(1 for p in pixels if sum(abs(a - b) for a, b in zip(p, rgb)) < 40)
        assert near > 10, (rgb, near)


def test_an_output_that_is_a_folder_is_one_error_before_anything_is_written(two_groups, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main([str(two_groups), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -o {tmp_path / 'out'}: is a folder") and len(err.strip().splitlines()) == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_an_output_on_a_read_only_filesystem_is_one_error(two_groups, tmp_path, capsys):
    target = tmp_path / "ro"
    target.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)], capture_output=True).returncode == 0
    if not mounted:  # not allowed to mount here: /proc takes no new files anywhere
        target = os.path.join("/proc", "ctxlit-report")
    try:
        output = os.path.join(str(target), "sub", "report.html")
        assert main([str(two_groups), "-o", output]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: -o {output}: ") and "is not writable (" in err and len(err.splitlines()) == 1, err
        if mounted:
            assert "Read-only file system" in err
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], check=True)
    shutil.rmtree(tmp_path / "ro", ignore_errors=True)


def test_a_nested_option_one_group_sets_is_a_column_so_rows_differ(tmp_path, capsys):
    for seed in range(2):
        write_run(tmp_path / f"default-{seed}", config("none", seed), 0.40)
        cfg = config("none", seed)
        cfg["model"]["init_args"]["backbone_options"]["norm_layer"] = "groupnorm"  # the default run sets none
        write_run(tmp_path / f"groupnorm-{seed}", cfg, 0.42)
    assert main([str(tmp_path), "--format", "md"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| model.init_args.backbone_options.norm_layer |"))
    rows = [line for line in out.splitlines() if line.startswith(("| (unset) |", "| groupnorm |"))]
    assert header and len(rows) == 2, out
    # two no-block groups that differ in more than a block: neither is the other's baseline
    assert "Δ vs baseline" not in header and "no Δ" not in out


def test_test_metrics_and_provenance_are_shown_beside_the_results(tmp_path, capsys):
    record = {"ctxlit": "0.4.0", "git_commit": "abc1234", "torch": "2.5.1", "torchvision": "0.20.1",
              "pytorch_lightning": "2.4.0", "device": "cpu"}
    for seed in range(2):
        folder = write_run(tmp_path / f"gc-{seed}", config(block("att", "add", True), seed), 0.5, provenance=record)
        runs.write_test_metrics(folder, {"checkpoint": str(folder / "checkpoints" / "best.ckpt"),
                                         "metrics": {"test/acc1": 0.40 + 0.02 * seed}})
        write_run(tmp_path / f"none-{seed}", config("none", seed), 0.4)  # made before provenance existed
    assert main([str(tmp_path), "--format", "md"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| model.init_args.block |"))
    gc = next(line for line in out.splitlines() if line.startswith("| GlobalContext |"))
    assert "test/acc1 mean ± std" in header and "| 0.4100 ± 0.0141 (n=2) |" in gc
    # one row per distinct record, naming the runs it covers
    assert "| GlobalContext: 2 runs, seeds 0, 1 | 0.4.0 | abc1234 | 2.5.1 | 0.20.1 | 2.4.0 | cpu |" in out
    assert "| none: 2 runs, seeds 0, 1 | unknown | unknown | unknown | unknown | unknown | unknown |" in out
