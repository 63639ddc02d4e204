"""The answers (ctxlit.report.effects) on run folders with planted, known effects: each real
effect's interval holds the truth and excludes 0, the null knob's holds 0, noise far above the
effects makes every verdict "within noise"; Holm and P(better) against hand-computed values."""

from __future__ import annotations

import json
import shutil

import pytest

from ctxlit import runs
from ctxlit.report.__main__ import main
from ctxlit.report.effects import holm, p_improve_paired, p_improve_unpaired
from ctxlit.report.runs import find_runs
from ctxlit.report.study import build_studies
from tests.report.written_runs import BASE, BASELINE_GAP, TRUTH, block, config, planted_study, write_run


def answers(folder, **kwargs):
    (study,) = build_studies(find_runs([str(folder)]), **kwargs)
    return study, {e.knob.rsplit(".", 1)[-1] if e.kind == "main" else e.knob: e for e in study.answers.effects}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_study(tmp_path_factory.mktemp("planted"))


def test_each_real_effect_is_found_with_an_interval_holding_the_truth(planted):
    study, effects = answers(planted)
    assert study.answers.design.startswith("factorial: fusion × layernorm × pooling (8 groups)")
    for knob in ("layernorm", "fusion", "fusion × layernorm"):
        effect = effects[knob]
        assert effect.ci_low < TRUTH[knob] < effect.ci_high, (knob, effect)
        assert effect.ci_low > 0, (knob, effect)
        assert effect.paired and effect.p_adj < 0.05
    assert effects["layernorm"].levels == ("false", "true") and effects["layernorm"].verdict == "helps"
    assert effects["fusion"].levels == ("mul", "add") and effects["fusion"].verdict == "helps"
    assert effects["fusion × layernorm"].verdict.startswith("interacts")
    # a main effect's arms hold 4 groups x 5 seeds each; its units are the 20 matched pairs
    assert effects["layernorm"].n == (20, 20) and len(effects["layernorm"].units) == 20


def test_a_knob_without_effect_is_within_noise(planted):
    _, effects = answers(planted)
    for knob in ("pooling", "fusion × pooling", "layernorm × pooling"):
        effect = effects[knob]
        assert effect.ci_low < 0 < effect.ci_high, (knob, effect)
        assert effect.verdict.startswith("within noise: the interval includes 0"), effect.verdict
        assert effect.seeds_needed is None or effect.seeds_needed > 5


def test_the_grid_against_the_baseline_uses_the_baseline_alone(planted):
    study, effects = answers(planted)
    grid = next(e for e in study.answers.effects if e.kind == "vs baseline")
    truth = -BASELINE_GAP + 0.05 * 0.5 + 0.04 * 0.25  # the cells' mean effect over the no-block runs
    assert grid.ci_low < truth < grid.ci_high and grid.levels[0] == "none" and grid.n == (5, 40)
    assert study.answers.noise_floor == pytest.approx(study.baselines[id(study.groups[0])].final(study.metric).std)


def test_noise_far_above_the_effects_makes_every_verdict_within_noise(tmp_path):
    _, effects = answers(planted_study(tmp_path, noise=1.0, seed_spread=0.0))
    assert effects and all(e.verdict.startswith("within noise") for e in effects.values()), \
        {k: e.verdict for k, e in effects.items()}


def test_seeds_that_do_not_pair_give_an_unpaired_comparison(tmp_path):
    planted_study(tmp_path)
    shutil.rmtree(tmp_path / "att-add-ln-seed4")  # one group ran 4 seeds: no matched sets
    _, effects = answers(tmp_path)
    effect = effects["layernorm"]
    assert not effect.paired and effect.test == "Welch t of the contrast" and effect.n == (20, 19)


def test_runs_with_another_budget_or_data_never_enter_an_effect(planted, tmp_path):
    shutil.copytree(planted, tmp_path / "study")
    for seed in range(5):  # a short re-run of one cell: another budget, and far off
        write_run(tmp_path / "study" / f"short-seed{seed}", config(block("att", "add", True), seed, max_epochs=2), 0.0)
    stopped = write_run(tmp_path / "study" / "stopped-seed9", config(block("att", "add", True), 9), 0.99)
    runs.write_trial(stopped, {"status": "stopped"})  # hyperband cut its budget: a result, not an effect's
    study, effects = answers(tmp_path / "study")
    assert any(stopped in [r.dir for r in g.runs] for g in study.groups)
    assert any(line.startswith("1 run(s) stopped early by hyperband") for line in study.answers.left_out)
    _, reference = answers(planted)
    assert {k: e.delta for k, e in effects.items()} == pytest.approx({k: e.delta for k, e in reference.items()})
    assert any("trainer.max_epochs: 2 vs 5" in line for line in study.answers.left_out)
    short = next(g for g in study.groups if g.knobs["trainer.max_epochs"] == 2)
    assert study.delta(short) is None  # nor a Δ: its only no-block group trained 5 epochs
    assert any(line.startswith(f"no Δ for {short.label}") and "trainer.max_epochs: 2 vs 5" in line
               for line in study.notes)


def test_a_run_in_progress_is_listed_never_a_row_with_a_delta(planted, tmp_path, capsys):
    shutil.copytree(planted, tmp_path / "study")
    running = tmp_path / "study" / "live-seed0"
    write_run(running, config(block("att", "add", True), 0, lr_scale=2), None, status="running",
              process=runs.process_token())
    (study,) = build_studies(find_runs([str(tmp_path / "study")]))
    assert all(r.dir != running for g in study.groups for r in g.runs)
    assert [(run.dir, why) for run, why in study.not_results] == [(running, "running")]
    assert main([str(tmp_path / "study"), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert f"| {running} | running | running |" in out and "lr_scale" not in out


def test_holm_matches_a_hand_computed_case():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_probability_of_improvement_matches_hand_computed_values():
    assert p_improve_paired([0.1, -0.2, 0.0, 0.3], "maximize") == pytest.approx(2.5 / 4)
    assert p_improve_paired([0.1, -0.2, 0.0, 0.3], "minimize") == pytest.approx(1.5 / 4)
    # tested 2 beats 1, ties 2 (1/2), loses to 3; 4 and 5 beat all three: 7.5 of 9 pairs
    assert p_improve_unpaired([1, 2, 3], [2, 4, 5], "maximize") == pytest.approx(7.5 / 9)
    assert p_improve_unpaired([1, 2, 3], [2, 4, 5], "minimize") == pytest.approx(1.5 / 9)


def test_json_carries_the_answers_in_the_documented_shape(planted, capsys):
    assert main([str(planted), "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    (study,) = record["studies"]
    assert {"task", "metric", "goal", "effects", "groups"} <= set(study)
    assert (study["task"], study["metric"], study["goal"]) == ("ClassificationTask", "val/acc1", "maximize")
    effect = next(e for e in study["effects"] if e["knob"].endswith(".layernorm"))
    assert {"knob", "levels", "delta", "ci_low", "ci_high", "p_improve", "p_adj", "n", "verdict"} <= set(effect)
    assert effect["levels"] == ["false", "true"] and effect["n"] == [20, 20] and effect["verdict"] == "helps"
    assert effect["ci_low"] < TRUTH["layernorm"] < effect["ci_high"]
    baseline = next(g for g in study["groups"] if g["baseline"])
    assert baseline["label"] == "none" and baseline["n"] == 5 and len(baseline["values"]) == 5
    assert baseline["mean"] == pytest.approx(BASE + BASELINE_GAP, abs=0.1)
    assert all(g["provenance"] == [None] for g in study["groups"])  # made before provenance was recorded


def test_markdown_and_html_open_with_the_answers_table(planted, tmp_path, capsys):
    assert main([str(planted), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out.index("| question | effect on val/acc1 | 95% CI | P(better) | p_adj | n | verdict |") \
        < out.index("| model.init_args.block |")
    assert "| layernorm: true vs false | +0.07" in out and "| 20 vs 20 | helps |" in out
    assert "Noise floor: the baseline's val/acc1 varies by" in out
    report = tmp_path / "report.html"
    assert main([str(planted), "-o", str(report)]) == 0
    text = report.read_text()
    assert text.index("<table class='answers'>") < text.index("<table class='groups'>")
