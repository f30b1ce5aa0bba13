"""advseg.io.guard: outputs that overlap inputs are refused; output folders hold only advseg's own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advseg.errors import InputError
from advseg.io.guard import (
    MANIFEST,
    check_output_dir,
    check_output_file,
    forget_outputs,
    owned_files,
    record_outputs,
    refuse_overlap,
)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    (d / "ct.nii.gz").write_bytes(b"x")
    return d


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("images", "output is the input"),
        ("images/pred", "lies inside the input"),
        (".", "contains the input"),
        ("images/../images", "output is the input"),
        ("images/ct.nii.gz", "lies inside the input"),
    ],
)
def test_overlapping_output_is_refused(images: Path, output: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem) as exc:
        refuse_overlap([images.parent / output], [images])
    assert exc.value.path == str(images.parent / output)  # the message names the output path given


def test_a_single_input_file_is_protected_too(images: Path) -> None:
    with pytest.raises(InputError, match="output is the input"):
        refuse_overlap([images / "ct.nii.gz"], [images / "ct.nii.gz"])
    with pytest.raises(InputError, match="contains the input"):
        refuse_overlap([images], [images / "ct.nii.gz"])  # would write images/ct.nii.gz over it
    refuse_overlap([images.parent / "pred"], [images / "ct.nii.gz"])  # a sibling folder is fine


def test_symlinks_are_resolved(images: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(images, target_is_directory=True)
    with pytest.raises(InputError, match="output is the input"):
        refuse_overlap([link], [images])
    with pytest.raises(InputError, match="lies inside"):
        refuse_overlap([link / "pred"], [images])


def test_hosts_may_hold_outputs_but_not_be_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    refuse_overlap([run / "predictions"], [], hosts=[run])
    with pytest.raises(InputError, match="output is the input folder"):
        refuse_overlap([run], [], hosts=[run])
    with pytest.raises(InputError, match="contains the input"):
        refuse_overlap([tmp_path], [], hosts=[run])


def test_none_entries_are_skipped(images: Path) -> None:
    refuse_overlap([None, images.parent / "out"], [None, images], hosts=[None])


def test_output_dir_new_empty_own_and_foreign(tmp_path: Path) -> None:
    out = tmp_path / "out"
    check_output_dir(out, "predict")  # new
    out.mkdir()
    check_output_dir(out, "predict")  # empty
    (out / ".DS_Store").write_bytes(b"")
    check_output_dir(out, "predict")  # hidden files do not count
    record_outputs(out, "predict", [out / "a.nii.gz", out / "confidence" / "a.nii.gz"])
    (out / "a.nii.gz").write_bytes(b"1")
    (out / "confidence").mkdir()
    (out / "confidence" / "a.nii.gz").write_bytes(b"1")
    check_output_dir(out, "predict")  # only its own earlier outputs
    assert owned_files(out, "predict") == {"a.nii.gz", "confidence/a.nii.gz"}
    with pytest.raises(InputError, match="advseg evaluate did not write"):
        check_output_dir(out, "evaluate")  # another command's folder
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"did not write \(notes.txt\)"):
        check_output_dir(out, "predict")
    check_output_dir(out, "predict", overwrite=True)


def test_nested_output_folder_with_its_own_manifest_is_not_foreign(tmp_path: Path) -> None:
    out = tmp_path / "report"
    record_outputs(out / "samples", "synthesize sample", [out / "samples" / "synth_0.nii.gz"])
    (out / "samples" / "synth_0.nii.gz").write_bytes(b"1")
    check_output_dir(out, "synthesize report")


def test_manifest_accumulates_and_forgets(tmp_path: Path) -> None:
    out = tmp_path / "o"
    record_outputs(out, "x", [out / "a"])
    record_outputs(out, "x", [out / "b"])
    assert owned_files(out, "x") == {"a", "b"}
    forget_outputs(out, "x", [out / "a"])
    assert json.loads((out / MANIFEST).read_text()) == {"command": "x", "files": ["b"]}
    (out / MANIFEST).write_text("{not json")
    assert owned_files(out, "x") == set()  # an unreadable manifest owns nothing: the folder is foreign


def test_output_file_checks(tmp_path: Path) -> None:
    f = tmp_path / "seg.nii.gz"
    check_output_file(f)
    f.write_bytes(b"1")
    with pytest.raises(InputError, match="output file exists"):
        check_output_file(f)
    check_output_file(f, overwrite=True)
    with pytest.raises(InputError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        check_output_dir(f, "predict")
