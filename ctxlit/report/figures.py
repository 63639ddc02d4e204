"""The report's plots, drawn with matplotlib (Agg) and returned as PNG bytes.

Text from runs (labels made of config values) is drawn as plain text: ``text.parse_math`` is off
for every figure here, so a ``$...$`` in a value is never read as mathtext (which could fail to
parse and end the report)."""

from __future__ import annotations

import functools
import io
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ctxlit.report.study import Study  # noqa: E402

COST_AXES = {"flops": ("GFLOPs per image", 1e-9)}
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}
MARKERS = "osD^vP*Xh<>p"


def plain_text(draw):
    """Draw a figure with every text element taken literally (no mathtext, no TeX)."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plt.rc_context(PLAIN_TEXT):
            return draw(*args, **kwargs)
    return wrapper


def png(fig) -> bytes:
    buffer = io.BytesIO()
    with plt.rc_context(PLAIN_TEXT):
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _legend_label(text: str) -> str:
    return " " + text if text.startswith("_") else text  # matplotlib hides labels starting with '_'


@plain_text
def metric_vs_cost(study: Study, cost: str) -> bytes | None:
    """The metric (mean ± std over seeds) against a cost: which design is worth what it costs.
    Groups of one cost (a block's options that add no FLOPs) sit on one spot: each gets its own
    marker shape, hollow and a size smaller than the one before, so every point stays visible."""
    axis, scale = COST_AXES[cost]
    points = [(g, g.cost(cost), g.final(study.metric)) for g in study.groups]
    points = [(g, c, s) for g, c, s in points if c is not None and s.mean is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, ((group, c, s), color) in enumerate(zip(points, _colors(len(points)))):
        ax.errorbar(c * scale, s.mean, yerr=s.std or 0.0, fmt=MARKERS[i % len(MARKERS)], color=color, capsize=3,
                    markersize=18.0 - 13.0 * i / max(1, len(points) - 1), markerfacecolor="none", markeredgewidth=1.5,
                    label=_legend_label(group.label))
    ax.set_xlabel(axis)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.set_ylabel(f"{study.metric} (mean ± std over seeds)")
    ax.set_title(f"{study.metric} against {axis}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return png(fig)


def _band(ax, curves: list[dict[int, float]], color, label: str) -> None:
    epochs = sorted(set().union(*curves)) if curves else []
    means, lows, highs = [], [], []
    for e in epochs:
        values = [c[e] for c in curves if e in c]
        m = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        means.append(m), lows.append(m - sd), highs.append(m + sd)
    if epochs:
        ax.plot(epochs, means, color=color, label=_legend_label(label), marker=".")
        ax.fill_between(epochs, lows, highs, color=color, alpha=0.15, linewidth=0)


@plain_text
def learning_curves(study: Study, train_metric: str = "train/loss") -> bytes | None:
    """Validation metric and training loss by epoch, per group: mean line, ± std band over seeds.
    A panel with nothing to draw (runs too short to log a training loss) is left out."""
    colors = _colors(len(study.groups))
    val = [[c for c in (r.per_epoch(study.metric) for r in g.runs) if c] for g in study.groups]
    train = [[c for c in (r.per_epoch(train_metric) for r in g.runs) if c] for g in study.groups]
    panels = [(name, curves) for name, curves in ((study.metric, val), (train_metric, train)) if any(curves)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels):
        for group, group_curves, color in zip(study.groups, curves, colors):
            _band(ax, group_curves, color, group.label)
        what = "(epoch mean) " if name == train_metric else ""
        ax.set(xlabel="epoch", ylabel=name, title=f"{name} {what}by epoch")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return png(fig)


@plain_text
def ablation_bars(study: Study) -> bytes | None:
    """One bar per group (mean, std over seeds), each seed's result a dot on it, the baseline's
    mean as a dashed line."""
    stats = [(g, g.final(study.metric)) for g in study.groups]
    stats = [(g, s) for g, s in stats if s.mean is not None]
    if not stats:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(stats) + 1.2))
    labels = [g.label for g, _ in stats]
    ax.barh(range(len(stats)), [s.mean for _, s in stats], xerr=[s.std or 0.0 for _, s in stats],
            color=_colors(len(stats)), alpha=0.6, capsize=3)
    for i, (group, _) in enumerate(stats):
        values = [r.final(study.metric) for r in group.runs]
        spread = [i + 0.25 * (k / max(1, len(values) - 1) - 0.5) for k in range(len(values))]  # apart, not on top
        ax.scatter(values, spread, s=14, color="black", zorder=3, label="one seed" if i == 0 else None)
    ax.set_yticks(range(len(stats)), labels, fontsize=8)
    ax.invert_yaxis()
    baseline = study.baseline
    if baseline is not None:
        ax.axvline(baseline.final(study.metric).mean, color="black", linestyle="--", linewidth=1,
                   label=_legend_label(f"baseline ({baseline.label})"))
    ax.legend(fontsize=8, loc="lower right")
    low = min(min(r.final(study.metric) for r in g.runs) for g, _ in stats)
    high = max(max(r.final(study.metric) for r in g.runs) for g, _ in stats)
    margin = (high - low) * 0.15 or abs(high) * 0.05 or 0.05
    ax.set_xlim(low - margin if low - margin > 0 or low < 0 else 0, high + margin)
    ax.set_xlabel(f"{study.metric} (bar: mean ± std over seeds; dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    return png(fig)


@plain_text
def effects_plot(study: Study) -> bytes | None:
    """Each answer: its effect and 95% interval, the contrast of each matched set as dots."""
    effects = study.answers.effects if study.answers else []
    if not effects:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(effects) + 1.3))
    for i, effect in enumerate(effects):
        color = {"helps": "tab:green", "hurts": "tab:red", "interacts": "tab:blue"}.get(effect.verdict.split(":")[0], "tab:gray")
        if effect.units:
            spread = [i + 0.3 * (k / max(1, len(effect.units) - 1) - 0.5) for k in range(len(effect.units))]
            ax.scatter(effect.units, spread, s=8, color=color, alpha=0.45, zorder=2)
        if effect.ci_low is not None:
            ax.plot([effect.ci_low, effect.ci_high], [i, i], color=color, linewidth=3, zorder=3)
        ax.plot([effect.delta], [i], "o", color="black", zorder=4)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(range(len(effects)), [e.question for e in effects], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"effect on {study.metric} (tested − reference)")
    ax.grid(axis="x", alpha=0.3)
    return png(fig)
