"""No command overwrites or deletes an input: every writing command, with output = / inside / around
its input, fails with one line, exit 2, and leaves every existing file byte-identical."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advseg.cli.main import app

runner = CliRunner()


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def data(tiny_phantom: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny phantom set: a failing guard must not spoil the shared fixture."""
    return Path(shutil.copytree(tiny_phantom, tmp_path / "data"))


def _refused(args: list[str], root: Path, *expected: str) -> str:
    before = _hashes(root)
    res = runner.invoke(app, args)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    for e in expected:
        assert e in lines[0], lines[0]
    assert _hashes(root) == before  # nothing changed, nothing added
    return lines[0]


def test_predict_into_its_own_input_folder_is_refused(tiny_run: Path, data: Path, tmp_path: Path) -> None:
    images = str(data / "imagesTs")
    _refused(["predict", str(tiny_run), images, images], tmp_path, "output is the input")
    _refused(["predict", str(tiny_run), images, images + "/pred"], tmp_path, "lies inside the input")
    _refused(["predict", str(tiny_run), images, str(data)], tmp_path, "contains the input")
    one = str(data / "imagesTs" / "phantom_t000.nii.gz")
    _refused(["predict", str(tiny_run), one, one], tmp_path, "output is the input")
    _refused(["predict", str(tiny_run), one, images], tmp_path, "contains the input")
    link = tmp_path / "link"
    link.symlink_to(data / "imagesTs", target_is_directory=True)
    _refused(["predict", str(tiny_run), images, str(link)], tmp_path, "output is the input")
    _refused(["predict", str(tiny_run), images, str(tiny_run)], tiny_run, "output is the input folder")


def test_predict_into_a_folder_of_other_files_needs_overwrite(
    tiny_run: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "phantom_t000.nii.gz").write_bytes(b"a user's own file of that name")
    _refused(["predict", str(tiny_run), str(data / "imagesTs"), str(out)], tmp_path,
             "did not write", "--overwrite")
    # a folder of earlier predictions is advseg's own: predicting again into it needs no flag
    own = tmp_path / "own"
    for _ in range(2):
        res = runner.invoke(app, ["predict", str(tiny_run), str(data / "imagesTs"), str(own)])
        assert res.exit_code == 0, res.output
    # --overwrite writes into the folder anyway
    res = runner.invoke(app, ["predict", str(tiny_run), str(data / "imagesTs"), str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / "phantom_t000.nii.gz").read_bytes()[:2] == b"\x1f\x8b"  # replaced by a label map
    # a single output file that exists is replaced only with --overwrite
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"keep me")
    one = str(data / "imagesTs" / "phantom_t000.nii.gz")
    _refused(["predict", str(tiny_run), one, str(target)], tmp_path, "output file exists")


def test_evaluate_never_writes_into_its_inputs(data: Path, tmp_path: Path) -> None:
    labels = str(data / "labelsTs")
    _refused(["evaluate", labels, labels, "--out", labels], tmp_path, "output is the input")
    _refused(["evaluate", labels, labels, "--out", labels + "/eval"], tmp_path, "lies inside the input")
    _refused(["evaluate", labels, labels, "--out", str(data)], tmp_path, "contains the input")
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "summary.md").write_text("a user's notes")
    _refused(["evaluate", labels, labels, "--out", str(foreign)], tmp_path, "did not write (summary.md)")
    res = runner.invoke(app, ["evaluate", labels, labels, "--out", str(foreign), "--overwrite",
                              "--dataset-json", str(data / "dataset.json")])
    assert res.exit_code == 0, res.output


def test_train_run_folder_may_not_overlap_the_data(data: Path, tmp_path: Path) -> None:
    _refused(["train", "--data", str(data), "--out", str(data), "--preset", "res_unet+tiny"], tmp_path,
             "output is the input")
    _refused(["train", "--data", str(data), "--out", str(data / "run"), "--preset", "res_unet+tiny"],
             tmp_path, "lies inside the input")
    _refused(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "res_unet+tiny",
              "--unlabeled", str(tmp_path / "run" / "pool")], tmp_path, "contains the input")


def test_phantom_never_writes_into_an_existing_dataset(data: Path, tmp_path: Path) -> None:
    _refused(["phantom", str(data), "--labeled", "1", "--unlabeled", "0", "--test", "0",
              "--shape", "16", "16", "16"], tmp_path, str(data))


def test_experiment_folder_may_not_hold_the_data(data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"name: t\ndata: {data}\nmethods: [res_unet]\nsize: tiny\nfolds: 2\nfractions: [1.0]\n")
    _refused(["experiment", str(cfg), "--out", str(data)], tmp_path, "output is the input")
    _refused(["experiment", str(cfg), "--out", str(tmp_path)], tmp_path, "contains the input")


def test_report_replaces_only_its_own_html(tiny_run: Path, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<html>a user's page</html>")
    _refused(["report", str(tiny_run), "--out", str(page)], tmp_path, "is not an advseg report")
    out = tmp_path / "report.html"
    for _ in range(2):  # its own report it replaces
        res = runner.invoke(app, ["report", str(tiny_run), "--out", str(out)])
        assert res.exit_code == 0, res.output


def test_demo_never_deletes_what_it_did_not_write(tmp_path: Path) -> None:
    from advseg.errors import InputError
    from advseg.experiments.demo import DEMO_MARKER, _prepare_out

    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    (out / "data" / "x.nii.gz").write_bytes(b"1")
    (out / "res_unet_aux").mkdir()
    (out / DEMO_MARKER).write_text('{"methods": ["res_unet_aux"]}')
    (out / "my_predictions").mkdir()
    (out / "my_predictions" / "p.nii.gz").write_bytes(b"mine")
    before = _hashes(out)
    with pytest.raises(InputError, match="not written by the demo"):
        _prepare_out(out)
    assert _hashes(out) == before
    shutil.rmtree(out / "my_predictions")
    _prepare_out(out)  # an earlier demo and nothing else: replaced
    assert list(out.iterdir()) == []
    (out / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a previous demo"):
        _prepare_out(out)
