"""k-fold / hold-out splits, splits.json reuse, nested labeled subsets."""

from __future__ import annotations

import json

import pytest

from advseg.data.splits import (
    labeled_subset,
    load_or_create_splits,
    make_kfold,
    seeded_order,
    unlabeled_complement,
)
from advseg.errors import InputError

NAMES = [f"case_{i:03d}" for i in range(23)]


@pytest.mark.parametrize("folds", [2, 5, 23])
def test_kfold_partitions_cases(folds):
    splits = make_kfold(NAMES, folds, seed=0)
    assert len(splits) == folds
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == NAMES  # each case validated exactly once
    sizes = [len(s["val"]) for s in splits]
    assert max(sizes) - min(sizes) <= 1
    for s in splits:
        assert sorted(s["train"] + s["val"]) == NAMES and not set(s["train"]) & set(s["val"])
        assert s["train"] == sorted(s["train"]) and s["val"] == sorted(s["val"])


def test_kfold_deterministic_and_seeded():
    a = make_kfold(NAMES, 5, seed=3)
    assert make_kfold(list(reversed(NAMES)), 5, seed=3) == a  # input order does not matter
    assert make_kfold(NAMES, 5, seed=4) != a
    # not just consecutive blocks of the sorted names
    assert make_kfold(NAMES, 5, seed=3)[0]["val"] != NAMES[:5]


def test_seeded_order_is_stable_when_cases_are_added():
    small = seeded_order(NAMES[:10], seed=1)
    big = seeded_order(NAMES, seed=1)
    assert [c for c in big if c in small] == small


def test_holdout_when_folds_is_one():
    (split,) = make_kfold(NAMES, 1, seed=0)
    assert len(split["val"]) == 5  # round(0.2 * 23)
    assert sorted(split["train"] + split["val"]) == NAMES
    (tiny,) = make_kfold(["a", "b"], 1, seed=0)
    assert len(tiny["val"]) == 1 and len(tiny["train"]) == 1


@pytest.mark.parametrize(
    ("names", "folds", "match"),
    [(NAMES, 0, "positive integer"), (NAMES[:3], 4, "cannot be split"), (["a"], 1, "cannot be split"),
     (["a", "b", "a"], 2, "duplicate case names: a")],
)
def test_kfold_errors(names, folds, match):
    with pytest.raises(InputError, match=match):
        make_kfold(names, folds, seed=0)


def test_splits_json_written_once_then_reused(tmp_path):
    path = tmp_path / "run" / "splits.json"
    first = load_or_create_splits(path, NAMES, 5, seed=0)
    assert json.loads(path.read_text()) == first
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temporary file left
    # A hand-edited file is reused as is, even with another seed.
    edited = [{"train": NAMES[1:], "val": NAMES[:1]}] + first[1:]
    path.write_text(json.dumps(edited))
    assert load_or_create_splits(path, list(reversed(NAMES)), 5, seed=99) == edited


@pytest.mark.parametrize(
    ("names", "folds", "match"),
    [(NAMES[:-1], 5, r"missing 0 case\(s\) \[\], unknown 1 \['case_022'\]"),
     (NAMES + ["new"], 5, r"missing 1 case\(s\) \['new'\]"),
     (NAMES, 3, "has 5 fold"),
     ],
)
def test_splits_json_mismatch_is_error(tmp_path, names, folds, match):
    path = tmp_path / "splits.json"
    load_or_create_splits(path, NAMES, 5, seed=0)
    before = path.read_text()
    with pytest.raises(InputError, match=match) as err:
        load_or_create_splits(path, names, folds, seed=0)
    assert str(err.value).startswith(str(path)) and "delete it" in str(err.value)
    assert path.read_text() == before


def test_splits_json_malformed(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text('{"train": []}')
    with pytest.raises(InputError, match="expected a list"):
        load_or_create_splits(path, NAMES, 5, seed=0)
    path.write_text(json.dumps([{"train": NAMES, "val": NAMES[:2]}]))
    with pytest.raises(InputError, match="twice or in both"):
        load_or_create_splits(path, NAMES, 1, seed=0)


def test_labeled_subsets_are_nested():
    train = make_kfold(NAMES, 5, seed=0)[0]["train"]
    subsets = [labeled_subset(train, fraction=f, seed=7) for f in (0.05, 0.1, 0.25, 0.5, 1.0)]
    sizes = [len(s) for s in subsets]
    assert sizes == [1, 2, 5, 9, 18]  # round half up of f * 18, at least 1
    for small, big in zip(subsets, subsets[1:], strict=False):
        assert set(small) < set(big)
    counts = [labeled_subset(train, count=k, seed=7) for k in (1, 3, 18)]
    assert set(counts[0]) < set(counts[1]) < set(counts[2]) == set(train)
    assert labeled_subset(train, count=2, seed=7) == subsets[1]
    assert labeled_subset(train, seed=7) == sorted(train)


def test_labeled_subset_deterministic_and_seeded():
    assert labeled_subset(NAMES, 0.25, seed=1) == labeled_subset(list(reversed(NAMES)), 0.25, seed=1)
    assert labeled_subset(NAMES, 0.25, seed=1) != labeled_subset(NAMES, 0.25, seed=2)
    assert labeled_subset(NAMES[:3], fraction=0.01) and len(labeled_subset(NAMES[:3], fraction=0.01)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"fraction": 0.0}, r"\(0, 1\]"), ({"fraction": 1.5}, r"\(0, 1\]"), ({"count": 0}, "between 1 and 23"),
     ({"count": 24}, "between 1 and 23"), ({"fraction": 0.5, "count": 3}, "not both")],
)
def test_labeled_subset_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        labeled_subset(NAMES, **kwargs)


def test_unlabeled_complement():
    subset = labeled_subset(NAMES, fraction=0.25, seed=0)
    rest = unlabeled_complement(NAMES, subset)
    assert sorted(subset + rest) == NAMES and not set(subset) & set(rest)
    with pytest.raises(InputError, match="not training cases"):
        unlabeled_complement(NAMES[:5], ["elsewhere"])
