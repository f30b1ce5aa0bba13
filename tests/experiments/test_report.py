"""`advseg report` on a single run folder and a folder of runs: tables, embedded PNGs, confidence maps."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advseg.cli.main import app
from advseg.errors import InputError
from advseg.experiments.report import pick_slices, write_report

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r"src='data:image/png;base64,([^']+)'", page)]


@pytest.fixture(scope="module")
def evaluated_run(tiny_run: Path, tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained semi-adversarial tiny run with test predictions (+ D's confidence) and
    their evaluation, in the layout ``advseg demo`` writes."""
    from advseg.evaluation.evaluate import evaluate_folders
    from advseg.inference.api import predict_path

    run = tmp_path_factory.mktemp("report") / "runs" / "semi"
    shutil.copytree(tiny_run, run)
    predict_path(run, tiny_phantom / "imagesTs", run / "predictions", save_confidence=True, progress=False)
    evaluate_folders(run / "predictions", tiny_phantom / "labelsTs", run / "evaluation", progress=False)
    return run


def test_report_of_a_run_folder(evaluated_run: Path) -> None:
    res = runner.invoke(app, ["report", str(evaluated_run)])
    assert res.exit_code == 0, res.output
    page = (evaluated_run / "report.html").read_text()
    # the result tables
    assert page.count("<table>") >= 3
    for organ in ("prostate", "bladder", "rectum", "left_femur", "right_femur"):
        assert organ in page
    assert "DSC" in page and "HD95" in page
    # the figures: learning curves and one overlay figure per test case (2), all real PNGs
    images = _images(page)
    assert len(images) >= 1 + 2
    assert all(img[:8] == PNG for img in images)
    assert "confidence" in page  # the predictions carry D's confidence maps
    # D diagnostics of the semi-adversarial run: the table (D's AUCs beside the max-softmax one) and
    # one reliability / pool-histogram figure
    assert "<h2>D diagnostics</h2>" in page
    for header in ("AUC D real vs fake", "AUC D conf. right vs wrong", "AUC max-softmax right vs wrong",
                   "AUC D x softmax right vs wrong"):
        assert header in page
    assert "alt='D diagnostics " in page
    assert len(images) >= 1 + 1 + 2
    assert "<script" not in page and "<link" not in page and "http" not in page.split("</style>")[0]


def test_report_of_a_folder_of_runs_and_custom_out(evaluated_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "page.html"
    path = write_report(evaluated_run.parent, out)
    assert path == out
    page = out.read_text()
    assert "folder of training runs" in page and "semi" in page
    assert all(img[:8] == PNG for img in _images(page))


def test_report_refuses_a_folder_without_results(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="not a results folder"):
        write_report(tmp_path / "x")
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "error:" in res.output
    assert not (tmp_path / "x" / "report.html").exists()


def test_pick_slices_spread_over_the_foreground() -> None:
    import numpy as np

    truth = np.zeros((20, 4, 4), np.uint8)
    truth[5:15, 1:3, 1:3] = 1
    zs = pick_slices(truth, 3)
    assert len(zs) == 3 and all(5 <= z < 15 for z in zs) and zs == sorted(zs)
    assert pick_slices(np.zeros((8, 2, 2), np.uint8), 3) == [4]
