"""benchmarks/run_spread.py: paired comparison of two committed cell results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from advseg.experiments.results import RESULT_FORMAT

_spec = importlib.util.spec_from_file_location(
    "run_spread", Path(__file__).parents[2] / "benchmarks" / "run_spread.py")
run_spread = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_spread)


def _result(path: Path, seed: int, dsc: list[float], split_seed: int | None = None) -> Path:
    per_case = [{"case": f"c{i}", "organ": "Anterior", "dsc": v, "hd95": 2.0 - v} for i, v in enumerate(dsc)]
    doc = {"format": RESULT_FORMAT, "per_case": per_case,
           "cell": {"method": "res_unet_aux", "level": {"label": "n16"}, "seed": seed, "fold": 0},
           "config": {"train": {"seed": seed, "split_seed": split_seed}}}
    path.write_text(json.dumps(doc))
    return path


def test_pairs_print_the_mean_difference_and_name_the_pinned_cases(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    base = _result(tmp_path / "a.json", 0, [0.80, 0.82, 0.84, 0.86, 0.88, 0.90])
    rerun = _result(tmp_path / "b.json", 1, [0.81, 0.83, 0.85, 0.87, 0.89, 0.91], split_seed=0)
    assert run_spread.main([str(base), str(rerun)]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if "| DSC |" in r]
    assert len(rows) == 1
    assert "seed 1, cases of seed 0" in rows[0] and "| +0.010 [+0.010, +0.010] |" in rows[0]


def test_odd_count_and_foreign_file_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = _result(tmp_path / "a.json", 0, [0.8, 0.9])
    assert run_spread.main([str(base)]) == 2
    other = tmp_path / "other.json"
    other.write_text("{}")
    assert run_spread.main([str(base), str(other)]) == 2
    assert f"{other}: not a cell result file" in capsys.readouterr().err
