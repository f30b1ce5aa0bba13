"""The training log: rewind on resume, and the learning-curve figure (with the D diagnostics panel)."""

from __future__ import annotations

import struct
from pathlib import Path

from advseg.training.log import TrainingLog


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _log(path: Path, diagnostics: bool) -> TrainingLog:
    log = TrainingLog(path)
    for it in (1, 2, 3, 4):
        log.append({"kind": "train", "iteration": it, "loss_s": 1.0 / it, "loss_d": 1.3})
        if it % 2 == 0:
            row = {"kind": "val", "iteration": it, "dsc_mean": 0.1 * it, "dsc_organ": 0.1 * it}
            if diagnostics:
                row.update(d_auc_real_fake=0.5, conf_auc_correct=0.55, softmax_auc_correct=0.8,
                           d_pass_fraction=1.0, softmax_pass_fraction=0.9, t_semi=0.2)
            log.append(row)
    return log


def test_learning_curves_get_a_diagnostics_panel(tmp_path: Path) -> None:
    _log(tmp_path / "plain.jsonl", False).plot(tmp_path / "plain.png")
    _log(tmp_path / "diag.jsonl", True).plot(tmp_path / "diag.png")
    (w_plain, h_plain), (w_diag, h_diag) = _png_size(tmp_path / "plain.png"), _png_size(tmp_path / "diag.png")
    assert h_plain == h_diag and w_diag == w_plain * 3 // 2  # three panels instead of two


def test_truncate_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    _log(tmp_path / "log.jsonl", True)
    log = TrainingLog(tmp_path / "log.jsonl")
    log.truncate(2)
    assert [r["iteration"] for r in TrainingLog(tmp_path / "log.jsonl").rows] == [1, 2, 2]
