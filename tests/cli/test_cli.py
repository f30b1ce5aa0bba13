"""The ``advseg`` command end to end on a tiny phantom set, and its bad-input behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from advseg.cli.main import app

runner = CliRunner()


def _listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_phantom_and_validate(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    res = runner.invoke(app, ["phantom", str(out), "--labeled", "2", "--unlabeled", "1", "--test", "1",
                              "--shape", "16", "32", "32", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert (out / "dataset.json").exists()
    res = runner.invoke(app, ["validate", str(out)])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output and "2 labeled" in res.output


def test_validate_bad_dataset_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    runner.invoke(app, ["phantom", str(out), "--labeled", "2", "--unlabeled", "0", "--test", "0",
                        "--shape", "16", "32", "32"])
    label = out / "labelsTr" / "phantom_001.nii.gz"
    img = nib.load(label)
    bad = np.asarray(img.dataobj).copy()
    bad[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(bad, img.affine), label)
    before = _listing(out)
    res = runner.invoke(app, ["validate", str(out)])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "phantom_001" in lines[0] and "9" in lines[0]
    assert "Traceback" not in res.output
    assert _listing(out) == before


def test_train_refuses_missing_dataset(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"),
                              "--preset", "res_unet+tiny"])
    assert res.exit_code == 2
    assert "nope" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_unknown_preset_is_one_line(tmp_path: Path, tiny_phantom: Path) -> None:
    res = runner.invoke(app, ["train", "--data", str(tiny_phantom), "--out", str(tmp_path / "run"),
                              "--preset", "nosuch"])
    assert res.exit_code == 2 and "unknown preset 'nosuch'" in res.output
    assert not (tmp_path / "run").exists()


def test_predict_and_evaluate_end_to_end(tiny_run: Path, tiny_phantom: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    res = runner.invoke(app, ["predict", str(tiny_run), str(tiny_phantom / "imagesTs"), str(pred),
                              "--save-confidence"])
    assert res.exit_code == 0, res.output
    for case in ("phantom_t000", "phantom_t001"):
        out = nib.load(pred / f"{case}.nii.gz")
        src = nib.load(tiny_phantom / "imagesTs" / f"{case}.nii.gz")
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine)
        conf = np.asarray(nib.load(pred / "confidence" / f"{case}.nii.gz").dataobj)
        assert conf.shape == src.shape and conf.min() >= 0 and conf.max() <= 1
    # the confidence maps sit in a subfolder, so the predictions folder evaluates as it is
    ev = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", str(pred), str(tiny_phantom / "labelsTs"), "--out", str(ev),
                              "--dataset-json", str(tiny_phantom / "dataset.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((ev / "summary.json").read_text())
    assert set(summary) == {"prostate", "bladder", "rectum", "left_femur", "right_femur"}
    for organ in summary.values():
        assert 0.0 <= organ["dsc"]["mean"] <= 1.0
    assert (ev / "per_case.csv").exists() and (ev / "summary.md").exists()


def test_predict_bad_input_writes_nothing(tiny_run: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.nii.gz").write_bytes(b"not a nifti file")
    res = runner.invoke(app, ["predict", str(tiny_run), str(src), str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "broken.nii.gz" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
