"""Figures of an aggregated experiment: a metric against the amount of labeled data, per method."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from advseg.io.atomic import atomic_path


def level_axis(level: str, total: int | None = None) -> float | None:
    """The x position of a level label: ``n8`` -> 8 cases; a fraction -> ``fraction * total`` cases when
    the training-set size ``total`` is known, else the fraction itself (then every level must be one)."""
    if level.startswith("n"):
        return float(level[1:])
    value = float(level)
    return value * total if total else value


def plot_metric_vs_labels(
    agg: Any, path: str | Path, metric: str = "dsc", total_cases: int | None = None
) -> Path | None:
    """Mean ± std of ``metric`` (pooled per-case samples, as in the tables) against labeled training
    cases, one line per method and one panel per organ; x on a log scale. ``agg``:
    :class:`advseg.experiments.aggregate.Aggregate`. ``total_cases`` places fraction levels on the
    case axis (e.g. 144 for the Hippocampus fold). Returns None when fewer than two levels can be
    placed on one axis (nothing to draw a line through)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = {a: agg.arm_info[a]["level"] for a in agg.arms}
    kinds = {lv.startswith("n") for lv in levels.values()}
    if len(kinds) > 1 and not total_cases:
        return None  # counts and fractions cannot share an axis without the training-set size
    xs = {a: level_axis(lv, total_cases) for a, lv in levels.items()}
    if len(set(xs.values())) < 2:
        return None
    methods = list(dict.fromkeys(agg.arm_info[a]["method"] for a in agg.arms))
    organs = list(agg.organs)
    fig, axes = plt.subplots(1, len(organs), figsize=(4.2 * len(organs), 3.6), squeeze=False)
    ticks = sorted(set(xs.values()))
    for ax, organ in zip(axes[0], organs, strict=True):
        for k, method in enumerate(methods):
            arms = sorted((a for a in agg.arms if agg.arm_info[a]["method"] == method), key=lambda a: xs[a])
            pts = [(xs[a], agg.summary[a][organ][metric]) for a in arms]
            pts = [(x, s) for x, s in pts if s["mean"] is not None and not math.isnan(s["mean"])]
            if not pts:
                continue
            mean = [s["mean"] for _, s in pts]
            std = [0.0 if s["std"] is None or math.isnan(s["std"]) else s["std"] for _, s in pts]
            # a small multiplicative offset per method (x is logarithmic) keeps the error bars of
            # methods at the same level apart
            shift = 1.0 + 0.025 * (k - (len(methods) - 1) / 2)
            ax.errorbar([x * shift for x, _ in pts], mean, yerr=std, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labeled training cases" if total_cases or kinds == {True} else "labeled fraction")
        ax.set_ylabel(metric.upper())
        ax.set_title(organ)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
