"""The demo pipeline end to end at tiny size (the real demo is ``make demo``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advseg.errors import InputError
from advseg.experiments.demo import run_demo

TINY = {"labeled": 4, "unlabeled": 2, "test": 1, "shape": (32, 64, 64)}


def test_demo_default_trains_the_supervised_s_net(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    summaries = run_demo(out, size="tiny", phantom=TINY, progress=False, iterations=2)
    assert list(summaries) == ["res_unet_aux"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summaries["res_unet_aux"]))
    assert len(list((out / "res_unet_aux" / "predictions").glob("*.nii.gz"))) == 1


def test_demo_compares_baseline_and_method(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    methods = ["res_unet", "res_unet_aux_adv_semi"]
    summaries = run_demo(out, method=methods, size="tiny", phantom=TINY, progress=False)
    assert list(summaries) == methods
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(summaries["res_unet_aux_adv_semi"]))
    assert set(summary) == {"prostate", "bladder", "rectum", "left_femur", "right_femur"}
    table = (out / "comparison.md").read_text()
    assert "DSC res_unet" in table and "DSC res_unet_aux_adv_semi" in table
    for method in summaries:
        assert (out / method / "checkpoint_best.pt").exists()
        assert len(list((out / method / "predictions").glob("*.nii.gz"))) == 1
    # A second run replaces its own previous demo folder.
    run_demo(out, method="res_unet", size="tiny", phantom=TINY, progress=False)
    assert not (out / "res_unet_aux_adv_semi").exists()


def test_demo_refuses_a_foreign_folder_and_unknown_method(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(InputError, match="not a previous demo"):
        run_demo(tmp_path / "mine", size="tiny", phantom=TINY, progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]
    with pytest.raises(InputError, match="unknown method"):
        run_demo(tmp_path / "other", method="nosuch", size="tiny", progress=False)
    assert not (tmp_path / "other").exists()
