"""compute_case_metrics over a label map, and MetricAccumulator's mean / sample std / n."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from advseg.metrics import (
    METRICS,
    MetricAccumulator,
    compute_case_metrics,
    dice,
    distance_metrics,
    relative_volume_difference,
)

LABELS = {0: "background", 1: "prostate", 2: "bladder", 3: "rectum"}


def _label_maps() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((12, 20, 20), np.uint8)
    truth[2:8, 3:9, 3:9] = 1
    truth[4:10, 10:17, 10:16] = 2
    pred = np.zeros_like(truth)
    pred[3:8, 3:9, 4:10] = 1
    pred[4:10, 11:18, 10:16] = 2
    pred[0, 0, :3] = 3  # rectum only in the prediction
    return pred, truth


def test_case_metrics_match_the_per_class_functions():
    pred, truth = _label_maps()
    spacing = (3.0, 0.8, 0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = compute_case_metrics(pred, truth, LABELS, spacing, nsd_tolerance_mm=1.5)
    assert list(got) == ["prostate", "bladder", "rectum"]  # background excluded, label order
    assert all(list(v) == list(METRICS) for v in got.values())
    for index, organ in [(1, "prostate"), (2, "bladder")]:
        p, t = pred == index, truth == index
        assert got[organ]["dsc"] == pytest.approx(dice(p, t))
        assert got[organ]["rvd"] == pytest.approx(relative_volume_difference(p, t))
        ref = distance_metrics(p, t, spacing, nsd_tolerance_mm=1.5)
        assert {k: got[organ][k] for k in ref} == pytest.approx(ref)
    assert got["prostate"]["rvd"] == pytest.approx((5 * 6 * 6 - 6 * 6 * 6) / (6 * 6 * 6) * 100)
    rectum = got["rectum"]  # truth empty, prediction not
    assert rectum["dsc"] == 0.0 and rectum["nsd"] == 0.0 and rectum["precision"] == 0.0
    assert all(math.isnan(rectum[m]) for m in ("sensitivity", "rvd", "ahd", "ashd", "hd95"))


def test_class_absent_from_both_scores_perfect_and_subset_of_metrics():
    pred, truth = _label_maps()
    got = compute_case_metrics(pred, truth, {1: "prostate", 4: "urethra"}, (1, 1, 1), metrics=["hd95", "dsc"])
    assert list(got["urethra"]) == ["dsc", "hd95"]  # canonical order
    assert got["urethra"] == {"dsc": 1.0, "hd95": 0.0}
    with pytest.raises(ValueError, match="unknown metric"):
        compute_case_metrics(pred, truth, LABELS, (1, 1, 1), metrics=["dice"])


def test_label_map_types():
    pred, truth = _label_maps()
    ref = compute_case_metrics(pred, truth, LABELS, (1, 1, 1), metrics=["dsc", "ahd"])
    as_float = compute_case_metrics(pred.astype(np.float32), truth.astype(np.int64), LABELS, (1, 1, 1),
                                    metrics=["dsc", "ahd"])
    assert as_float == ref
    with pytest.raises(ValueError, match="non-integer"):
        compute_case_metrics(pred + 0.5, truth, LABELS, (1, 1, 1))
    with pytest.raises(ValueError, match="same shape|one shape"):
        compute_case_metrics(pred[:-1], truth, LABELS, (1, 1, 1))


def test_pelvis_sized_volume_all_metrics():
    """64 x 128 x 128 voxels, 5 organs, all metrics (speed: benchmarks/metrics_speed.py)."""
    zz, yy, xx = np.indices((64, 128, 128), dtype=np.float32)
    truth = np.zeros((64, 128, 128), np.uint8)
    pred = np.zeros_like(truth)
    organs = [((32, 64, 64), (10, 20, 25)), ((20, 40, 64), (6, 12, 12)), ((44, 92, 64), (8, 14, 10)),
              ((30, 64, 24), (20, 25, 10)), ((30, 64, 104), (20, 25, 10))]
    def ellipsoid(c, r):
        return ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1

    for i, (c, r) in enumerate(organs, 1):
        truth[ellipsoid(c, r)] = i
        pred[ellipsoid((c[0] + 1, c[1] - 2, c[2] + 1), (r[0], r[1], r[2] * 1.1))] = i
    labels = {i: f"organ_{i}" for i in range(1, 6)}
    got = compute_case_metrics(pred, truth, labels, (3.0, 0.8, 0.8))
    assert all(0.5 < v["dsc"] < 1 and v["hd95"] > 0 for v in got.values())


# ---------------------------------------------------------------------------------------- accumulator


def _fill(acc: MetricAccumulator, dsc: list[float], hd95: list[float]) -> None:
    for i, (d, h) in enumerate(zip(dsc, hd95, strict=True)):
        acc.add(f"case_{i}", {"prostate": {"dsc": d, "hd95": h}, "bladder": {"dsc": 1 - d, "hd95": 2 * h}})


def test_summary_mean_std_n_against_numpy():
    dsc = [0.8, 0.85, 0.9, 0.7, 0.95]
    hd95 = [3.0, math.nan, 5.0, 4.5, 2.0]
    acc = MetricAccumulator({0: "background", 1: "prostate", 2: "bladder"})
    _fill(acc, dsc, hd95)
    s = acc.summary()
    assert list(s) == ["prostate", "bladder"] and list(s["prostate"]) == ["dsc", "hd95"]
    assert s["prostate"]["dsc"]["mean"] == pytest.approx(np.mean(dsc))
    assert s["prostate"]["dsc"]["std"] == pytest.approx(np.std(dsc, ddof=1))
    assert s["prostate"]["dsc"]["n"] == 5
    finite = [h for h in hd95 if not math.isnan(h)]
    want = {"mean": np.mean(finite), "std": np.std(finite, ddof=1), "n": 4}
    assert s["prostate"]["hd95"] == pytest.approx(want)
    assert s["bladder"]["hd95"]["mean"] == pytest.approx(2 * np.mean(finite))
    assert s["bladder"]["dsc"]["mean"] == pytest.approx(1 - np.mean(dsc))


def test_summary_with_one_or_no_values():
    acc = MetricAccumulator(["prostate"])
    acc.add("a", {"prostate": {"dsc": 0.9, "hd95": math.nan}})
    s = acc.summary()["prostate"]
    assert s["dsc"]["mean"] == 0.9 and s["dsc"]["n"] == 1 and math.isnan(s["dsc"]["std"])
    assert s["hd95"]["n"] == 0 and math.isnan(s["hd95"]["mean"])


def test_per_case_rows_and_errors():
    acc = MetricAccumulator({1: "prostate", 2: "bladder"})
    _fill(acc, [0.8, 0.9], [1.0, 2.0])
    rows = acc.per_case_rows()
    assert len(rows) == 4 and len(acc) == 2
    assert rows[1] == {"case": "case_0", "organ": "bladder", "dsc": pytest.approx(0.2), "hd95": 2.0}
    assert acc.values("prostate", "dsc").tolist() == [0.8, 0.9]
    with pytest.raises(ValueError, match="twice"):
        acc.add("case_0", {"prostate": {"dsc": 1.0}})
    with pytest.raises(ValueError, match="unknown organ"):
        acc.add("case_9", {"liver": {"dsc": 1.0}})
    acc.add("case_2", {"prostate": {"dsc": 0.5}})  # bladder missing: NaN, excluded
    assert acc.summary()["bladder"]["dsc"]["n"] == 2 and acc.summary()["prostate"]["dsc"]["n"] == 3
