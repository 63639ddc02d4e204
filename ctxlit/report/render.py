"""The report as Markdown (tables to paste into a README or a paper), as JSON (a record for
programs) or as one self-contained HTML file (inline CSS, PNGs as data: URIs, no script: it opens
with no network). Each opens with the answers (:mod:`ctxlit.report.effects`), then the groups,
the runs that are not results and why, and where each group's runs came from (provenance)."""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone

from ctxlit.report import figures
from ctxlit.report.runs import cell
from ctxlit.report.study import Study

PROVENANCE_KEYS = ("ctxlit", "git_commit", "torch", "torchvision", "pytorch_lightning", "device")
UNKNOWN = "unknown"


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.2g}"


def test_metric(study: Study) -> str | None:
    """The test-set counterpart of the study's metric (val/acc1 -> test/acc1) when a run has it."""
    if not study.metric or "/" not in study.metric:
        return None
    name = "test/" + study.metric.split("/", 1)[1]
    return name if any(g.test(name).n for g in study.groups) else None


# --------------------------------------------------------------------------- tables


def answers_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Question -> effect, 95% interval, P(better), p_adj, n, verdict (and cost ratio when measured)."""
    answers = study.answers
    if answers is None or not answers.effects:
        return [], []
    costs = any(e.cost_ratio is not None for e in answers.effects)
    header = ["question", f"effect on {study.metric}", "95% CI", "P(better)", "p_adj", "n", "verdict"]
    header += ["train step × reference"] if costs else []
    rows = []
    for e in answers.effects:
        interval = "" if e.ci_low is None else f"[{e.ci_low:+.4f}, {e.ci_high:+.4f}]"
        row = [e.question, f"{e.delta:+.4f}", interval, _num(e.p_improve, 2), _p(e.p_adj), f"{e.n[0]} vs {e.n[1]}",
               e.verdict]
        rows.append(row + ([_num(e.cost_ratio, 2)] if costs else []))
    return header, rows


def answer_notes(study: Study) -> list[str]:
    answers = study.answers
    if answers is None:
        return []
    lines = [f"Design: {answers.design}. Effect = mean at the tested level − mean at the reference, averaged "
             f"over the other knobs; 95% bootstrap interval (BCa); P(better) and p from "
             + ", ".join(sorted({e.test for e in answers.effects})) + "; p_adj: Holm over the "
             f"{len(answers.effects)} contrast(s) of this study."]
    if answers.noise_floor is not None:
        lines.append(f"Noise floor: the baseline's {study.metric} varies by {answers.noise_floor:.4f} (std over "
                     f"{answers.noise_n} seeds); a paired answer compares runs of one seed, so the part of that spread "
                     f"every group shares cancels.")
    lines += [f"Left out of the answers: {line}" for line in answers.left_out]
    return lines


def table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the varying knobs (dotted keys), then result and cost per group."""
    metric = study.metric
    tested = test_metric(study)
    header = [*study.knobs, "n", f"{metric} mean ± std", f"best {metric}"]
    header += [f"{tested} mean ± std"] if tested else []
    if study.baselines:
        header.append("Δ vs baseline ± s.e.")
    header += ["params (M)", "GFLOPs"]
    measured = bool(study.costs)
    if measured:
        header += ["train step × baseline", "inference × baseline", "activations × baseline"]
    header.append("images/s as trained (load-dependent)")
    rows = []
    for group in study.groups:
        final = group.final(metric)
        cells = [cell(group.knobs, k) for k in study.knobs]
        cells += [str(final.n), _num(final.mean) + ("" if final.std is None else f" ± {final.std:.4f}"),
                  _num(group.best(metric, study.goal))]
        if tested:
            t = group.test(tested)
            cells.append(_num(t.mean) + ("" if t.std is None else f" ± {t.std:.4f}") + (f" (n={t.n})" if t.n else ""))
        if study.baselines:
            delta = study.delta(group)
            cells.append("baseline" if study.is_baseline(group) else
                         "" if delta is None else f"{delta.mean:+.4f}" + ("" if delta.se is None else f" ± {delta.se:.4f}"))
        cost = study.costs.get(id(group), {})
        params = cost.get("params", group.cost("params"))  # measured here (--cost), else the run's summary
        flops = cost["gflops"] * 1e9 if "gflops" in cost else group.cost("flops")
        cells += [_num(params and params / 1e6, 3), _num(flops and flops / 1e9, 4)]
        if measured:
            cells += [_num(cost.get(k), 2) for k in ("train_ratio", "inference_ratio", "memory_ratio")]
        cells.append(_num(group.cost("images_per_sec"), 0))
        rows.append(cells)
    return header, rows


def notes(study: Study) -> list[str]:
    runs = sum(len(g.runs) for g in study.groups)
    lines = [f"{study.task}: {len(study.groups)} groups of {runs} finished runs, runs differing only in "
             f"`seed_everything` grouped; {study.metric} is each run's result (its summary, else its last "
             f"validation; {study.goal}); std over seeds (n − 1)."]
    if study.baselines:
        lines.append("Δ: group mean − the mean of its baseline, the no-block group that differs from it in the "
                     "block alone (same budget, same data); s.e. = √(s²/n + s_b²/n_b).")
    if study.costs:
        lines.append(f"Cost measured side by side: {next(iter(study.costs.values())).get('how', '')}")
    lines += study.notes
    return lines


def not_results_rows(study: Study) -> list[list[str]]:
    return [[str(run.dir), run.folder.status.value if not run.folder.damaged else "damaged", why]
            for run, why in study.not_results]


def provenance_rows(study: Study) -> list[list[str]]:
    """One row per distinct provenance record ('unknown' for runs made before it was recorded),
    naming the runs it covers: their groups (all of them, or each by label) and seeds."""
    by_record: dict[str, tuple[dict, list]] = {}
    for group in study.groups:
        for run in group.runs:
            key = json.dumps(run.provenance, sort_keys=True, default=str)
            by_record.setdefault(key, (run.provenance or {}, []))[1].append((group, run))
    rows = []
    for record, members in by_record.values():
        groups = list(dict.fromkeys(id(group) for group, _ in members))
        names = ("all groups" if len(groups) == len(study.groups) else
                 "; ".join(dict.fromkeys(group.label for group, _ in members)))
        seeds = ", ".join(dict.fromkeys(str(run.seed) for _, run in sorted(members, key=lambda m: str(m[1].seed))))
        who = f"{names}: {len(members)} run{'s' * (len(members) != 1)}, seeds {seeds}"
        rows.append([who, *[str(record.get(k) or UNKNOWN) for k in PROVENANCE_KEYS]])
    return rows


PROVENANCE_HEADER = ["runs", "ctxlit", "git commit", "torch", "torchvision", "Lightning", "device"]
NOT_RESULTS_HEADER = ["run", "status", "why it is not a result"]


# --------------------------------------------------------------------------- Markdown


def md(text: str) -> str:
    """Run text as inert Markdown table text: HTML escaped (a ``<script>`` in a config value shows
    as text), ``|`` escaped, line breaks (CR, LF) as spaces."""
    text = html.escape(str(text), quote=False)
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(md(c) for c in row) + " |" for row in rows] + [""]


def answers_markdown(study: Study) -> str:
    """The answers table and its notes as Markdown ('' when the study has none)."""
    header, rows = answers_table(study)
    if not rows:
        return ""
    return "\n".join(["**Answers**\n", *_md_table(header, rows), *[f"- {md(line)}" for line in answer_notes(study)], ""])


def markdown(studies: list[Study]) -> str:
    out = []
    for study in studies:
        out.append(f"### {md(study.task)}: {md(study.metric or '(no metric)')}\n")
        answers = answers_markdown(study)
        if answers:
            out.append(answers)
        if study.groups:
            out += _md_table(*table(study))
            out += [f"- {md(line)}" for line in notes(study)] + [""]
        if study.not_results:
            out.append("**Not results** (listed, never compared)\n")
            out += _md_table(NOT_RESULTS_HEADER, not_results_rows(study))
        if study.groups:
            out.append("**Provenance**\n")
            out += _md_table(PROVENANCE_HEADER, provenance_rows(study))
    return "\n".join(out)


# --------------------------------------------------------------------------- JSON


def _finite_or_none(value):
    return value if isinstance(value, (int, float)) and value == value and abs(value) != float("inf") else None


def record(studies: list[Study]) -> dict:
    """The machine-readable report (the README's "JSON report" section documents it)."""
    out = []
    for study in studies:
        effects = []
        for e in (study.answers.effects if study.answers else []):
            effects.append({"knob": e.knob, "kind": e.kind, "question": e.question, "levels": list(e.levels),
                            "delta": e.delta, "ci_low": e.ci_low, "ci_high": e.ci_high, "p_improve": e.p_improve,
                            "p": e.p, "p_adj": e.p_adj, "n": list(e.n), "paired": e.paired, "test": e.test,
                            "verdict": e.verdict, "seeds_needed": e.seeds_needed, "cost_ratio": e.cost_ratio})
        tested = test_metric(study)
        groups = []
        for group in study.groups:
            final, baseline, delta = group.final(study.metric), study.baseline_of(group), study.delta(group)
            groups.append({
                "label": group.label, "knobs": {k: cell(group.knobs, k) for k in study.knobs},
                "config": group.knobs, "baseline": study.is_baseline(group),
                "seeds": group.seeds, "values": [r.final(study.metric) for r in group.runs], "runs": [str(r.dir) for r in group.runs],
                "n": final.n, "mean": final.mean, "std": final.std, "best": group.best(study.metric, study.goal),
                "test": None if not tested else {"metric": tested, "mean": group.test(tested).mean,
                                                 "std": group.test(tested).std, "n": group.test(tested).n},
                "delta": None if delta is None else {"vs": baseline.label, "mean": delta.mean, "se": delta.se},
                "params": group.cost("params"), "flops": group.cost("flops"),
                "images_per_sec_as_trained": group.cost("images_per_sec"),
                "cost": study.costs.get(id(group)),
                "provenance": group.provenance,
            })
        answers = study.answers
        out.append({"task": study.task, "metric": study.metric, "goal": study.goal,
                    "design": answers.design if answers else None,
                    "noise_floor": answers.noise_floor if answers else None,
                    "effects": effects, "groups": groups, "notes": notes(study) if study.groups else study.notes,
                    "left_out_of_effects": answers.left_out if answers else [],
                    "not_results": [{"run": run, "status": status, "why": why}
                                    for run, status, why in not_results_rows(study)]})
    return {"studies": out}


def json_report(studies: list[Study]) -> str:
    def clean(value):
        if isinstance(value, float):
            return _finite_or_none(value)
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value if isinstance(value, (str, int, bool, type(None))) else str(value)

    return json.dumps(clean(record(studies)), indent=1) + "\n"


# --------------------------------------------------------------------------- HTML


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td { white-space: nowrap; } th { max-width: 14em; }
th { background: #f3f3f3; font-weight: 600; }
td.knob, th.knob { text-align: left; font-family: ui-monospace, monospace; }
td.text { text-align: left; white-space: normal; }
tr.baseline td { background: #fff8e0; }
tr.helps td { background: #eaf7ea; } tr.hurts td { background: #fbeaea; }
figure { margin: 1em 0; } figcaption { font-size: 13px; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
.notes { font-size: 13px; color: #444; } .incomplete { color: #a33; }
"""


def _img(data: bytes, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    return f'<figure><img src="{uri}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _html_table(kind: str, header: list[str], rows: list[list[str]], left: int = 0, row_class=None,
                text_columns=()) -> str:
    """``kind``: the table's class (answers, groups, not-results, provenance); ``left``: how many
    leading columns are knobs (left aligned, monospace)."""
    e = html.escape
    parts = [f"<table class='{kind}'><tr>"]
    # dotted keys may wrap after a dot; numbers never wrap
    parts += [f"<th class='{'knob' if i < left else ''}'>{e(h).replace('.', '.<wbr>')}</th>" for i, h in enumerate(header)]
    parts.append("</tr>")
    for r, row in enumerate(rows):
        css = row_class(r) if row_class else ""
        parts.append(f"<tr class='{css}'>" + "".join(
            f"<td class='{'knob' if i < left else 'text' if i in text_columns else ''}'>{e(c)}</td>"
            for i, c in enumerate(row)) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def html_report(studies: list[Study], attention: dict[str, list[tuple[bytes, str]]] | None = None,
                title: str = "ctxlit report", sources: list[str] | None = None) -> str:
    """``attention``: per task, (PNG, caption) figures of recorded attention maps."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>",
             f"<p class='notes'>{e(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}"
             + (f" · from {e(', '.join(sources))}" if sources else "") + "</p>"]
    for study in studies:
        parts.append(f"<h2>{e(study.task)}: {e(study.metric or '(no metric)')}</h2>")
        header, rows = answers_table(study)
        if rows:
            verdicts = [effect.verdict.split(":")[0] for effect in study.answers.effects]
            parts.append("<h3>Answers</h3>")
            parts.append(_html_table('answers', header, rows, left=1, text_columns=(6,), row_class=lambda r: verdicts[r]))
            parts.append("<ul class='notes'>" + "".join(f"<li>{e(line)}</li>" for line in answer_notes(study)) + "</ul>")
        if study.groups:
            header, rows = table(study)
            baseline_rows = {i for i, g in enumerate(study.groups) if study.is_baseline(g)}
            parts.append("<h3>Groups</h3>")
            parts.append(_html_table('groups', header, rows, left=len(study.knobs),
                                     row_class=lambda r: "baseline" if r in baseline_rows else ""))
            parts.append("<ul class='notes'>" + "".join(f"<li>{e(line)}</li>" for line in notes(study)) + "</ul>")
        if study.not_results:
            parts.append("<h3 class='incomplete'>Not results (listed, never compared)</h3>")
            parts.append(_html_table('not-results', NOT_RESULTS_HEADER, not_results_rows(study), left=1, text_columns=(2,)))
        if study.groups:
            plots = [(figures.effects_plot(study), "each answer: the effect (dot), its 95% interval (bar), the "
                                                   "contrast in each matched set of runs (small dots)"),
                     (figures.ablation_bars(study), f"{study.metric} per configuration: mean ± std over seeds, "
                                                    f"each seed a dot"),
                     (figures.metric_vs_cost(study, "flops"), f"{study.metric} against GFLOPs"),
                     (figures.learning_curves(study), "learning curves: mean over seeds, band ± std")]
            parts += [_img(data, caption) for data, caption in plots if data]
            for data, caption in (attention or {}).get(study.task, []):
                parts.append(_img(data, caption))
            parts.append("<h3>Provenance</h3>")
            parts.append(_html_table('provenance', PROVENANCE_HEADER, provenance_rows(study), left=1))
    parts.append("</body></html>")
    return "\n".join(parts)
