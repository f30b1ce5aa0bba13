"""The one atomic writer every advseg output goes through."""

from __future__ import annotations

from pathlib import Path

import pytest

from advseg.io.atomic import atomic_path, atomic_write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out" / "summary.json"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]


def test_rename_on_success_with_suffix_and_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "fig.png"
    with atomic_path(target, suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".png") and tmp != target
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"
    assert target.stat().st_mode & 0o044  # readable by others as umask allows, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
