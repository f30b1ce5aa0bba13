"""Figures of an aggregated experiment: a metric against the amount of labeled data, per method, and
each method's paired difference from the baseline at the same level."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from advseg.evaluation.stats import paired_difference_ci
from advseg.experiments.results import level_text
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
    return _save(fig, path)


def plot_paired_differences(agg: Any, path: str | Path, metric: str = "dsc") -> Path | None:
    """Each method's mean paired difference in ``metric`` from the baseline method (``agg.baseline``)
    at the same labeled level, one panel per organ, one row per (level, method), with a 95 %
    bootstrap interval that resamples whole test cases
    (:func:`advseg.evaluation.stats.paired_difference_ci`; the seeds of one case are not independent).
    The differences are those of the tables' brackets; the interval says how far the test set lets
    them move. Returns None when no method has a baseline cell at its level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if agg.baseline is None:
        return None
    base = {agg.arm_info[a]["level"]: a for a in agg.arms if agg.arm_info[a]["method"] == agg.baseline}
    arms = [a for a in agg.arms
            if agg.arm_info[a]["method"] != agg.baseline and agg.arm_info[a]["level"] in base]
    if not arms:
        return None
    order = {lv: i for i, lv in enumerate(dict.fromkeys(agg.arm_info[a]["level"] for a in agg.arms))}
    arms.sort(key=lambda a: (order[agg.arm_info[a]["level"]], agg.arms.index(a)))

    organs = list(agg.organs)
    height = max(2.2, 1.0 + 0.32 * len(arms))
    # one x scale for every organ: a difference reads the same size in each panel
    fig, axes = plt.subplots(1, len(organs), figsize=(3.4 * len(organs), height), squeeze=False,
                             sharey=True, sharex=True)
    ys = list(range(len(arms)))[::-1]
    for ax, organ in zip(axes[0], organs, strict=True):
        for y, arm in zip(ys, arms, strict=True):
            reference = base[agg.arm_info[arm]["level"]]
            d = paired_difference_ci(agg.values(arm, organ, metric), agg.values(reference, organ, metric),
                                     metric)
            if d.n == 0:
                continue
            err = None if math.isnan(d.low) else [[d.mean - d.low], [d.high - d.mean]]
            ax.errorbar([d.mean], [y], xerr=err, fmt="o", capsize=3, color=f"C{agg.arms.index(arm) % 10}")
        ax.axvline(0.0, color="0.3", lw=0.8)
        ax.set_title(organ)
        ax.set_xlabel(f"{metric.upper()} - {agg.baseline}")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(ys, [f"{agg.arm_info[a]['method']} @ {level_text(agg.arm_info[a]['level'])}"
                               for a in arms], fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
