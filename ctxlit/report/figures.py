"""The report's plots, drawn with matplotlib (Agg) and returned as PNG bytes."""

from __future__ import annotations

import io
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ctxlit.report.study import Study  # noqa: E402

COST_AXES = {"flops": ("GFLOPs per image", 1e-9), "images_per_sec": ("training images/s", 1.0)}


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def metric_vs_cost(study: Study, cost: str) -> bytes | None:
    """The metric (mean ± std over seeds) against a cost: which design is worth what it costs."""
    axis, scale = COST_AXES[cost]
    points = [(g, g.cost(cost), g.final(study.metric)) for g in study.groups]
    points = [(g, c, s) for g, c, s in points if c is not None and s.mean is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (group, c, s), color in zip(points, _colors(len(points))):
        ax.errorbar(c * scale, s.mean, yerr=s.std or 0.0, fmt="o", color=color, capsize=3, label=group.label)
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
        ax.plot(epochs, means, color=color, label=label, marker=".")
        ax.fill_between(epochs, lows, highs, color=color, alpha=0.15, linewidth=0)


def learning_curves(study: Study, train_metric: str = "train/loss") -> bytes | None:
    """Validation metric and training loss by epoch, per group: mean line, ± std band over seeds."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for group, color in zip(study.groups, _colors(len(study.groups))):
        val = [r.per_epoch(study.metric) for r in group.runs]
        train = [r.per_epoch(train_metric) for r in group.runs]
        drawn |= any(val) or any(train)
        _band(left, [c for c in val if c], color, group.label)
        _band(right, [c for c in train if c], color, group.label)
    if not drawn:
        plt.close(fig)
        return None
    left.set(xlabel="epoch", ylabel=study.metric, title=f"{study.metric} by epoch")
    right.set(xlabel="epoch", ylabel=train_metric, title=f"{train_metric} (epoch mean) by epoch")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    handles, labels = right.get_legend_handles_labels()
    if not handles:  # too short a run to log a training loss
        handles, labels = left.get_legend_handles_labels()
    if handles:
        right.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return png(fig)


def ablation_bars(study: Study) -> bytes | None:
    """One bar per group (mean, std over seeds), the baseline's mean as a dashed line."""
    stats = [(g, g.final(study.metric)) for g in study.groups]
    stats = [(g, s) for g, s in stats if s.mean is not None]
    if not stats:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(stats) + 1.2))
    labels = [g.label for g, _ in stats]
    ax.barh(range(len(stats)), [s.mean for _, s in stats], xerr=[s.std or 0.0 for _, s in stats],
            color=_colors(len(stats)), capsize=3)
    ax.set_yticks(range(len(stats)), labels, fontsize=8)
    ax.invert_yaxis()
    if study.baseline is not None:
        ax.axvline(study.baseline.final(study.metric).mean, color="black", linestyle="--", linewidth=1,
                   label=f"baseline ({study.baseline.label})")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(f"{study.metric} (mean ± std over seeds)")
    ax.grid(axis="x", alpha=0.3)
    return png(fig)
