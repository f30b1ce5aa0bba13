"""advseg.evaluation.stats: pooled mean/std, paired Wilcoxon (against scipy and known values), best rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from advseg.evaluation.stats import best_rows, describe, paired_difference_ci, paired_wilcoxon, quality


def test_describe_known_numbers_and_nan() -> None:
    d = describe([1.0, 2.0, 3.0, 4.0, math.nan])
    assert d["n"] == 4
    assert d["mean"] == pytest.approx(2.5)
    assert d["std"] == pytest.approx(math.sqrt(5 / 3))  # sample std, ddof=1
    one = describe([0.7])
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.7) and math.isnan(one["std"])
    none = describe([math.nan])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["std"])


def test_wilcoxon_exact_known_value() -> None:
    # Five positive differences: the exact two-sided p of the signed-rank test is 2 / 2^5.
    a = {f"c{i}": float(i + 1) for i in range(5)}
    b = {f"c{i}": 0.0 for i in range(5)}
    t = paired_wilcoxon(a, b)
    assert t.n == 5
    assert t.p == pytest.approx(0.0625)
    assert t.statistic == 0.0
    assert t.mean_diff == pytest.approx(3.0)


def test_wilcoxon_matches_scipy_and_pairs_by_key() -> None:
    rng = np.random.default_rng(3)
    keys = [(f"case{i}", i % 3, 0) for i in range(20)]
    x = rng.normal(0.80, 0.05, 20)
    y = x - rng.normal(0.02, 0.03, 20)
    a = dict(zip(keys, x, strict=True))
    # b in another order, with an extra key and a NaN: neither may be paired
    b = dict(reversed(list(zip(keys, y, strict=True))))
    b[("other", 0, 0)] = 0.5
    b[keys[7]] = math.nan
    keep = [i for i in range(20) if i != 7]
    t = paired_wilcoxon(a, b)
    ref = wilcoxon(x[keep], y[keep])
    assert t.n == 19
    assert t.p == pytest.approx(ref.pvalue)
    assert t.statistic == pytest.approx(ref.statistic)
    assert t.mean_diff == pytest.approx(float(np.mean(x[keep] - y[keep])))


def test_wilcoxon_rvd_uses_absolute_value_and_edge_cases() -> None:
    a = {"a": -10.0, "b": 20.0, "c": -30.0, "d": 5.0, "e": -1.0}
    b = {"a": 10.0, "b": -20.0, "c": 30.0, "d": -5.0, "e": 1.0}
    # |RVD| is equal in every pair: no difference at all
    assert paired_wilcoxon(a, b, "rvd").p == 1.0
    # signed values differ, and the signed test (another metric name) sees it
    signed = wilcoxon(list(a.values()), list(b.values())).pvalue
    assert paired_wilcoxon(a, b, "dsc").p == pytest.approx(signed)
    empty = paired_wilcoxon({"a": 1.0}, {"b": 1.0})
    assert empty.n == 0 and math.isnan(empty.p)


def test_best_rows_direction_ties_and_nan() -> None:
    assert best_rows("dsc", [0.8, 0.9, None, math.nan]) == [False, True, False, False]
    assert best_rows("nsd", [0.5, 0.5]) == [True, True]
    assert best_rows("hd95", [4.0, 3.0, 5.0]) == [False, True, False]
    assert best_rows("rvd", [-2.0, 5.0, 3.0]) == [True, False, False]  # smallest |RVD|
    # compared as shown: 0.9124 and 0.9121 both read 0.912
    assert best_rows("dsc", [0.9124, 0.9121, 0.8], decimals=3) == [True, True, False]
    assert best_rows("dsc", [0.9124, 0.9121, 0.8]) == [True, False, False]
    assert best_rows("ahd", [None, math.nan]) == [False, False]
    assert best_rows("dsc", [0.8]) == [False] and best_rows("dsc", [0.8, None]) == [False, False]
    assert quality("ashd", 2.0) < quality("ashd", 1.0)


def test_paired_difference_ci_resamples_whole_cases() -> None:
    rng = np.random.default_rng(1)
    case_effect = rng.normal(0.0, 0.02, size=20)
    # two seeds per case with the same per-case difference: 40 pairs, but only 20 independent cases
    a = {(f"c{i}", 0, s): 0.8 + case_effect[i] + 0.01 for i in range(20) for s in (0, 1)}
    b = {(f"c{i}", 0, s): 0.8 for i in range(20) for s in (0, 1)}
    a[("c0", 0, 1)] = math.nan  # an undefined value: that pair is left out
    res = paired_difference_ci(a, b, "dsc")
    assert (res.n, res.clusters) == (39, 20)
    diffs = [a[k] - b[k] for k in a if math.isfinite(a[k])]
    assert res.mean == pytest.approx(np.mean(diffs))
    assert res.low < res.mean < res.high
    assert paired_difference_ci(a, b, "dsc") == res  # seeded: the same interval again
    per_pair = paired_difference_ci(a, b, "dsc", cluster=lambda key: key)
    assert (res.high - res.low) > 1.25 * (per_pair.high - per_pair.low)  # ~sqrt(2) wider
    same = paired_difference_ci({("x", 0, 0): 0.9, ("y", 0, 0): 0.9}, {("x", 0, 0): 0.8, ("y", 0, 0): 0.8})
    assert same.low == pytest.approx(0.1) and same.high == pytest.approx(0.1)
    one = paired_difference_ci({("x", 0, 0): 0.9}, {("x", 0, 0): 0.8})
    assert one.clusters == 1 and math.isnan(one.low)
    assert paired_difference_ci({}, {}).n == 0
