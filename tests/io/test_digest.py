"""Content digests of input folders (:mod:`advseg.io.digest`)."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest

from advseg.errors import InputError
from advseg.io.digest import folder_digest


def _gz(path: Path, data: bytes, mtime: float) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as fh:
        fh.write(data)


def test_same_volumes_written_at_another_time_give_the_same_digest(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, mtime in ((a, 1.0), (b, time.time())):
        (folder / "images").mkdir(parents=True)
        _gz(folder / "images" / "x.nii.gz", b"volume-x", mtime)
        (folder / "dataset.json").write_text("{}")
    assert (a / "images" / "x.nii.gz").read_bytes() != (b / "images" / "x.nii.gz").read_bytes()
    assert folder_digest(a) == folder_digest(b)
    assert folder_digest(a)["files"] == 2
    (b / ".lock").write_text("")  # hidden files (locks) are not inputs
    assert folder_digest(a) == folder_digest(b)
    _gz(b / "images" / "x.nii.gz", b"volume-y", 1.0)  # other content
    assert folder_digest(a) != folder_digest(b)
    _gz(b / "images" / "x.nii.gz", b"volume-x", 1.0)
    (b / "images" / "x.nii.gz").rename(b / "images" / "z.nii.gz")  # same content, another name
    assert folder_digest(a) != folder_digest(b)


def test_a_broken_gzip_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="bad.nii.gz"):
        folder_digest(tmp_path)
