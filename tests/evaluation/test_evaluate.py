"""evaluate_folders end to end on tiny NIfTI folders, its input checks, and `advseg evaluate`."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest

from advseg.errors import InputError
from advseg.evaluation.evaluate import evaluate_folders, format_summary, read_class_names
from advseg.io import Volume, write_volume
from advseg.io.guard import MANIFEST
from advseg.metrics import compute_case_metrics

SPACING_XYZ = (0.8, 0.9, 3.0)
AFFINE = np.diag([*SPACING_XYZ, 1.0])
AFFINE[:3, 3] = (-10.0, 5.0, 30.0)
MSD_LABELS = {"0": "background", "1": "prostate", "2": "bladder"}


def _truth(i: int) -> np.ndarray:
    a = np.zeros((8, 16, 16), np.uint8)
    a[2:6, 3:8, 3 + i : 9 + i] = 1
    a[1:7, 9:14, 4:12] = 2
    return a


def _pred(i: int) -> np.ndarray:
    a = _truth(i)
    prostate = a == 1
    a[prostate] = 0
    a[np.roll(prostate, i, axis=2)] = 1  # worse with i
    if i == 2:
        a[a == 2] = 0  # bladder missed: distances undefined for this case
    return a


@pytest.fixture()
def folders(tmp_path):
    root = tmp_path / "data"
    (root / "labelsTs").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"name": "t", "labels": MSD_LABELS}))
    preds = tmp_path / "preds"
    for i in range(3):
        write_volume(root / "labelsTs" / f"case_{i:03d}.nii.gz", Volume(_truth(i), AFFINE))
        write_volume(preds / f"case_{i:03d}.nii.gz", Volume(_pred(i), AFFINE))
    write_volume(preds / "extra_999.nii.gz", Volume(_truth(0), AFFINE))
    return preds, root / "labelsTs", tmp_path / "eval"


def test_end_to_end(folders, caplog):
    preds, labels, out = folders
    with caplog.at_level(logging.WARNING):
        summary = evaluate_folders(preds, labels, out, progress=False)
    assert "extra_999" in caplog.text  # the extra prediction is noted and ignored

    # summary.json: {organ: {metric: {mean, std, n}}}, organ names from the dataset.json beside labelsTs
    data = json.loads((out / "summary.json").read_text())
    assert list(data) == ["prostate", "bladder"]
    assert list(data["prostate"]) == ["dsc", "iou", "sensitivity", "specificity", "precision", "rvd",
                                      "ahd", "ashd", "hd95", "nsd"]
    assert all(set(v) == {"mean", "std", "n"} for organ in data.values() for v in organ.values())
    spacing = (3.0, 0.9, 0.8)
    names = {1: "prostate", 2: "bladder"}
    ref = [compute_case_metrics(_pred(i), _truth(i), names, spacing) for i in range(3)]
    dsc = [r["prostate"]["dsc"] for r in ref]
    assert data["prostate"]["dsc"]["mean"] == pytest.approx(np.mean(dsc))
    assert data["prostate"]["dsc"]["std"] == pytest.approx(np.std(dsc, ddof=1))
    assert data["prostate"]["hd95"]["n"] == 3
    hd95 = [r["prostate"]["hd95"] for r in ref]
    assert data["prostate"]["hd95"]["mean"] == pytest.approx(np.mean(hd95)) and np.mean(hd95) > 0
    # bladder was missed in case 2: distances excluded (n=2), DSC 0 included (n=3)
    assert data["bladder"]["hd95"]["n"] == 2 and data["bladder"]["dsc"]["n"] == 3
    assert data["bladder"]["dsc"]["mean"] == pytest.approx(2 / 3)
    assert data["bladder"]["hd95"] == {"mean": 0.0, "std": 0.0, "n": 2}
    assert summary == data  # the returned dict is the file's content

    # per_case.csv: one row per case x organ, empty cells where undefined
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert len(rows) == 6
    assert [(r["case"], r["label"], r["organ"]) for r in rows[:2]] == [("case_000", "1", "prostate"),
                                                                       ("case_000", "2", "bladder")]
    missed = next(r for r in rows if r["case"] == "case_002" and r["organ"] == "bladder")
    assert missed["hd95"] == "" and missed["ahd"] == "" and float(missed["dsc"]) == 0.0
    assert float(missed["rvd"]) == -100.0
    assert float(rows[2]["dsc"]) == pytest.approx(ref[1]["prostate"]["dsc"])

    # summary.md: a Markdown table, organs x metrics, units in the header, mean ± std cells
    md = (out / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0].startswith("| Organ | DSC |") and "HD95 (mm)" in table[0] and "RVD (%)" in table[0]
    assert "NSD@2mm" in table[0]
    assert len(table) == 4 and table[2].startswith("| prostate |") and table[3].startswith("| bladder |")
    assert f"{np.mean(dsc):.3f} ± {np.std(dsc, ddof=1):.3f}" in table[2]
    assert "(n=2)" in table[3] and "(n=2)" not in table[2]
    assert "extra_999" in md
    # no temporary file of the atomic writer left behind; the one hidden file is the output manifest
    assert [p.name for p in out.glob(".*")] == [MANIFEST]

    text = format_summary(summary)
    assert "prostate" in text and "HD95 (mm)" in text and f"{np.mean(dsc):.3f}±" in text


def test_missing_prediction_writes_nothing(folders):
    preds, labels, out = folders
    (preds / "case_001.nii.gz").unlink()
    with pytest.raises(InputError) as exc:
        evaluate_folders(preds, labels, out, progress=False)
    assert exc.value.path == str(preds / "case_001.nii.gz")
    assert "missing prediction" in exc.value.one_line() and "\n" not in exc.value.one_line()
    assert not out.exists()


@pytest.mark.parametrize("problem", ["shape", "affine"])
def test_geometry_mismatch_names_the_file(folders, problem):
    preds, labels, out = folders
    if problem == "shape":
        vol = Volume(_pred(1)[:, :, :-1], AFFINE)
    else:
        shifted = AFFINE.copy()
        shifted[0, 3] += 1.5
        vol = Volume(_pred(1), shifted)
    write_volume(preds / "case_001.nii.gz", vol)
    with pytest.raises(InputError, match=problem) as exc:
        evaluate_folders(preds, labels, out, progress=False)
    assert exc.value.path == str(preds / "case_001.nii.gz")
    assert not out.exists()


def test_unknown_label_value_is_an_error(folders):
    preds, labels, out = folders
    bad = _pred(0)
    bad[0, 0, 0] = 5
    write_volume(preds / "case_000.nii.gz", Volume(bad, AFFINE))
    with pytest.raises(InputError, match=r"\[5\]"):
        evaluate_folders(preds, labels, out, progress=False)
    assert not out.exists()


def test_class_names_sources(folders, tmp_path):
    preds, labels, out = folders
    nnunet = tmp_path / "nnunet.json"
    nnunet.write_text(json.dumps({"labels": {"background": 0, "gland": 1, "vesica": 2}}))
    assert read_class_names(nnunet) == {0: "background", 1: "gland", 2: "vesica"}
    s = evaluate_folders(preds, labels, out, dataset_json=nnunet, progress=False, nsd_tolerance_mm=1.0)
    assert list(s) == ["gland", "vesica"]
    s = evaluate_folders(preds, labels, out, labels={1: "a", 2: "b"}, progress=False)
    assert list(s) == ["a", "b"]
    (labels.parent / "dataset.json").unlink()
    s = evaluate_folders(preds, labels, out, progress=False)
    assert list(s) == ["class_1", "class_2"]
    assert s["class_1"]["dsc"]["mean"] == pytest.approx(
        json.loads((out / "summary.json").read_text())["class_1"]["dsc"]["mean"])
    region = tmp_path / "region.json"
    region.write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2]}}))
    with pytest.raises(InputError, match="region-based"):
        read_class_names(region)


def test_json_nulls_for_undefined_values(tmp_path):
    labels, preds, out = tmp_path / "labels", tmp_path / "preds", tmp_path / "out"
    truth = _truth(0)
    pred = truth.copy()
    pred[pred == 2] = 0
    write_volume(labels / "only.nii.gz", Volume(truth, AFFINE))
    write_volume(preds / "only.nii.gz", Volume(pred, AFFINE))
    summary = evaluate_folders(preds, labels, out, labels={1: "prostate", 2: "bladder"}, progress=False)
    assert summary["bladder"]["hd95"] == {"mean": None, "std": None, "n": 0}
    assert summary["prostate"]["dsc"]["std"] is None  # one case: no sample std
    data = json.loads((out / "summary.json").read_text())
    assert data == summary
    assert data["bladder"]["hd95"] == {"mean": None, "std": None, "n": 0}
    assert data["prostate"]["dsc"] == {"mean": 1.0, "std": None, "n": 1}
    bladder_row = next(line for line in format_summary(summary).splitlines() if line.startswith("bladder"))
    assert "n/a (n=0)" in bladder_row and "0.000" in bladder_row  # DSC 0 is defined, distances are not


def test_cli_evaluate(folders):
    from typer.testing import CliRunner

    from advseg.cli.main import app

    preds, labels, out = folders
    result = CliRunner().invoke(app, ["evaluate", str(preds), str(labels), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "prostate" in result.output and "DSC" in result.output
    assert (out / "summary.json").is_file()
    (preds / "case_000.nii.gz").unlink()
    result = CliRunner().invoke(app, ["evaluate", str(preds), str(labels), "--out", str(out / "x")])
    assert result.exit_code == 2 and "missing prediction" in result.output


def test_without_class_names_only_values_present_become_classes(tmp_path):
    labels, preds, out = tmp_path / "labels", tmp_path / "preds", tmp_path / "out"
    truth = (_truth(0) == 1).astype(np.uint8) * 255  # a 0/255 mask
    write_volume(labels / "m.nii.gz", Volume(truth, AFFINE))
    write_volume(preds / "m.nii.gz", Volume(truth, AFFINE))
    summary = evaluate_folders(preds, labels, out, progress=False)
    assert list(summary) == ["class_255"] and summary["class_255"]["dsc"]["mean"] == 1.0
    assert "class_255" in (out / "summary.md").read_text()
