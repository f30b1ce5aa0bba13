"""Case selection of a training run: fold split and labeled subset (advseg.training.api)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from advseg.config import Config, apply_overrides
from advseg.training.api import select_cases, splits_path


def _index(n: int) -> SimpleNamespace:
    return SimpleNamespace(name="toy", training=[SimpleNamespace(name=f"case_{i:03d}") for i in range(n)])


def _select(tmp_path: Path, *overrides: str) -> dict[str, list[str]]:
    cfg = apply_overrides(Config(), ["train.labeled_count=4", "train.folds=5", *overrides])
    index = _index(40)
    return select_cases(cfg, index, splits_path(tmp_path, index, cfg))


def test_split_seed_keeps_the_cases_while_seed_changes(tmp_path: Path) -> None:
    base = _select(tmp_path, "train.seed=0")
    other = _select(tmp_path, "train.seed=1")
    same_cases = _select(tmp_path, "train.seed=1", "train.split_seed=0")
    # another seed draws another labeled subset and validation fold ...
    assert (other["labeled"], other["val"]) != (base["labeled"], base["val"])
    # ... unless split_seed pins them: the run then differs only in initialisation and sampling
    assert (same_cases["labeled"], same_cases["val"]) == (base["labeled"], base["val"])
    assert len(base["labeled"]) == 4 and not set(base["labeled"]) & set(base["val"])


def test_split_seed_defaults_to_seed(tmp_path: Path) -> None:
    cfg = apply_overrides(Config(), ["train.seed=3"])
    assert cfg.train.split_seed is None and cfg.train.data_seed == 3
    assert apply_overrides(cfg, ["train.split_seed=0"]).train.data_seed == 0
