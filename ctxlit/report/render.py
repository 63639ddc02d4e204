"""The report as Markdown (a table to paste into a README or a paper) or as one self-contained
HTML file (inline CSS, PNGs as data: URIs, no script: it opens with no network)."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone

from ctxlit.report import figures
from ctxlit.report.runs import shown_knobs
from ctxlit.report.study import Study


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the varying knobs (dotted keys), then result and cost per group."""
    metric = study.metric
    header = [*study.knobs, "n", f"{metric} mean ± std", f"best {metric}"]
    if study.baseline is not None:
        header.append("Δ vs baseline ± s.e.")
    header += ["params (M)", "GFLOPs", "images/s"]
    base_speed = study.baseline.cost("images_per_sec") if study.baseline is not None else None
    if base_speed:
        header.append("images/s × baseline")
    rows = []
    for group in study.groups:
        shown = shown_knobs(group.knobs)
        final = group.final(metric)
        cells = [str(shown.get(k, "")) for k in study.knobs]
        cells += [str(final.n), _num(final.mean) + ("" if final.std is None else f" ± {final.std:.4f}"),
                  _num(group.best(metric, study.goal))]
        if study.baseline is not None:
            delta = study.delta(group)
            cells.append("baseline" if group is study.baseline else
                         "" if delta is None else f"{delta.mean:+.4f}" + ("" if delta.se is None else f" ± {delta.se:.4f}"))
        params, flops, speed = group.cost("params"), group.cost("flops"), group.cost("images_per_sec")
        cells += [_num(params and params / 1e6, 3), _num(flops and flops / 1e9, 4), _num(speed, 0)]
        if base_speed:
            cells.append(_num(speed and speed / base_speed, 2))
        rows.append(cells)
    return header, rows


def notes(study: Study) -> list[str]:
    lines = [f"{study.task}: {len(study.groups)} groups of {sum(len(g.runs) for g in study.groups)} runs, "
             f"runs differing only in `seed_everything` grouped; {study.metric} is each run's last "
             f"validation ({study.goal}); std over seeds (n − 1)."]
    if study.baseline is not None:
        lines.append(f"Δ: group mean − baseline mean ({study.baseline.label}); s.e. = √(s²/n + s_b²/n_b).")
    if study.baseline_note:
        lines.append(study.baseline_note)
    for run, reason in study.incomplete:
        lines.append(f"incomplete, left out: {run.dir} ({reason})")
    return lines


def markdown(studies: list[Study]) -> str:
    out = []
    for study in studies:
        header, rows = table(study)
        out.append(f"### {study.task}: {study.metric}\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        out.append("")
        out += [f"- {line}" for line in notes(study)]
        out.append("")
    return "\n".join(out)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td { white-space: nowrap; } th { max-width: 14em; }
th { background: #f3f3f3; font-weight: 600; }
td.knob, th.knob { text-align: left; font-family: ui-monospace, monospace; }
tr.baseline td { background: #fff8e0; }
figure { margin: 1em 0; } figcaption { font-size: 13px; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
.notes { font-size: 13px; color: #444; } .incomplete { color: #a33; }
"""


def _img(data: bytes, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    return f'<figure><img src="{uri}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def html_report(studies: list[Study], attention: dict[str, list[tuple[bytes, str]]] | None = None,
                title: str = "ctxlit report", sources: list[str] | None = None) -> str:
    """``attention``: per task, (PNG, caption) figures of recorded attention maps."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>",
             f"<p class='notes'>{e(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}"
             + (f" · from {e(', '.join(sources))}" if sources else "") + "</p>"]
    for study in studies:
        header, rows = table(study)
        knob_count = len(study.knobs)
        parts.append(f"<h2>{e(study.task)}: {e(study.metric)}</h2><table><tr>")
        # dotted keys may wrap after a dot; numbers never wrap
        parts += [f"<th class='{'knob' if i < knob_count else ''}'>{e(h).replace('.', '.<wbr>')}</th>"
                  for i, h in enumerate(header)]
        parts.append("</tr>")
        for group, row in zip(study.groups, rows):
            css = " class='baseline'" if group is study.baseline else ""
            parts.append(f"<tr{css}>" + "".join(
                f"<td class='{'knob' if i < knob_count else ''}'>{e(c)}</td>" for i, c in enumerate(row)) + "</tr>")
        parts.append("</table><ul class='notes'>")
        parts += [f"<li class='{'incomplete' if line.startswith('incomplete') else ''}'>{e(line)}</li>"
                  for line in notes(study)]
        parts.append("</ul>")
        plots = [(figures.ablation_bars(study), f"{study.metric} per configuration (mean ± std over seeds)"),
                 (figures.metric_vs_cost(study, "flops"), f"{study.metric} against GFLOPs"),
                 (figures.metric_vs_cost(study, "images_per_sec"), f"{study.metric} against training images/s"),
                 (figures.learning_curves(study), "learning curves: mean over seeds, band ± std")]
        parts += [_img(data, caption) for data, caption in plots if data]
        for data, caption in (attention or {}).get(study.task, []):
            parts.append(_img(data, caption))
    parts.append("</body></html>")
    return "\n".join(parts)

