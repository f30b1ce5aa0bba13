"""Statistics over pooled per-case metric values: mean ± std, paired Wilcoxon tests, best values.

* :func:`describe`: mean, sample standard deviation (``ddof=1``) and count of the finite values
  (NaN = undefined metric, left out, as :class:`advseg.metrics.MetricAccumulator` does).
* :func:`paired_wilcoxon`: the Wilcoxon signed-rank test of two methods on the *same* cases. The
  values are given as mappings ``key -> value`` (the key identifies a test case, e.g.
  ``(case, fold, seed)``); only keys present in both with a finite value in both are paired.
  ``scipy.stats.wilcoxon`` with its defaults (two-sided, ``zero_method="wilcox"``: zero differences
  are dropped; exact distribution for small samples without ties, normal approximation otherwise).
  RVD is compared as ``|RVD|`` (its quality is the distance from 0, a signed test would reward
  over- and under-segmentation alike).
* :func:`paired_difference_ci`: the mean paired difference with a percentile bootstrap confidence
  interval that resamples whole test cases (a case's pairs from several seeds move together: they
  are not independent samples).
* :func:`best_rows`: which rows of a column hold the best value: the largest for DSC, NSD, IoU,
  sensitivity, specificity and precision; the smallest for the distances (AHD, ASHD, HD95); the
  smallest ``|mean|`` for the signed RVD.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Metrics where a larger value is better; every other metric is better when smaller.
HIGHER_IS_BETTER: frozenset[str] = frozenset({"dsc", "iou", "nsd", "sensitivity", "specificity", "precision"})
#: Signed metrics whose quality is their distance from 0.
SIGNED: frozenset[str] = frozenset({"rvd"})


def describe(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """``{"mean", "std", "n"}`` of the finite values (NaN skipped); ``std`` is the sample standard
    deviation (``ddof=1``), NaN when ``n < 2``; ``mean`` is NaN when ``n == 0``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    return {
        "mean": float(v.mean()) if n else math.nan,
        "std": float(v.std(ddof=1)) if n >= 2 else math.nan,
        "n": n,
    }


def quality(metric: str, value: float) -> float:
    """``value`` on a scale where larger is better for every metric (used for ranking)."""
    if metric in SIGNED:
        return -abs(value)
    return value if metric in HIGHER_IS_BETTER else -value


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_wilcoxon` of method A against method B.

    ``n``: pairs with a finite value in both; ``mean_diff``: mean of ``A - B`` over them (of ``|RVD|``
    for RVD); ``statistic``/``p``: scipy's; NaN when there is no pair.
    """

    n: int
    statistic: float
    p: float
    mean_diff: float


def paired_values(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], metric: str = ""
) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """The keys both mappings hold with finite values (in ``a``'s order) and the two value arrays."""
    keys = [k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    x = np.array([a[k] for k in keys], dtype=np.float64)
    y = np.array([b[k] for k in keys], dtype=np.float64)
    if metric in SIGNED:
        x, y = np.abs(x), np.abs(y)
    return keys, x, y


def paired_wilcoxon(a: Mapping[Hashable, float], b: Mapping[Hashable, float], metric: str = "") -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of ``a`` vs ``b`` on their common keys (see module doc).

    Edge cases: no pair gives NaN; when every difference is zero the methods agree on every case and
    ``p = 1`` (scipy would warn and return NaN, because ``zero_method="wilcox"`` drops all pairs).
    """
    from scipy.stats import wilcoxon

    _, x, y = paired_values(a, b, metric)
    n = int(x.size)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan)
    diff = x - y
    if not np.any(diff != 0):
        return PairedTest(n, 0.0, 1.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "sample size too small for normal approximation"
        res = wilcoxon(x, y)
    return PairedTest(n, float(res.statistic), float(res.pvalue), float(diff.mean()))


@dataclass(frozen=True)
class PairedDifference:
    """:func:`paired_difference_ci` of A against B: ``mean`` of ``A - B`` over ``n`` pairs from
    ``clusters`` test cases, and the bootstrap interval ``[low, high]`` (NaN without two clusters)."""

    n: int
    clusters: int
    mean: float
    low: float
    high: float


def paired_difference_ci(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], metric: str = "",
    cluster: Callable[[Hashable], Hashable] = lambda key: key[0], level: float = 0.95,
    resamples: int = 4000, seed: int = 0,
) -> PairedDifference:
    """Mean of ``A - B`` over the pairs :func:`paired_values` forms, with a percentile bootstrap
    interval at ``level`` that draws whole clusters (``cluster(key)``; by default the key's first
    item, the case of a ``(case, fold, seed)`` key) with replacement, ``resamples`` times from a
    generator seeded with ``seed`` (the same inputs give the same interval)."""
    keys, x, y = paired_values(a, b, metric)
    if not keys:
        return PairedDifference(0, 0, math.nan, math.nan, math.nan)
    diff = x - y
    groups: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(cluster(k), []).append(i)
    sums = np.array([diff[idx].sum() for idx in groups.values()])
    counts = np.array([len(idx) for idx in groups.values()], dtype=np.float64)
    mean = float(diff.mean())
    if len(groups) < 2:
        return PairedDifference(len(keys), len(groups), mean, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(groups), size=(resamples, len(groups)))
    boot = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return PairedDifference(len(keys), len(groups), mean, float(low), float(high))


def best_rows(metric: str, means: Sequence[float | None], decimals: int | None = None) -> list[bool]:
    """Which entries of one table column are the best (ties all marked; NaN/None never; nothing
    when fewer than two values can be compared, e.g. a one-method demo table).

    With ``decimals``, values are compared as shown (rounded), so two cells that read the same are
    both marked.
    """
    scores = []
    for m in means:
        if m is None or not math.isfinite(m):
            scores.append(-math.inf)
            continue
        v = round(m, decimals) if decimals is not None else m
        scores.append(quality(metric, v))
    if sum(s != -math.inf for s in scores) < 2:
        return [False] * len(scores)
    top = max(scores)
    return [s == top and s != -math.inf for s in scores]
