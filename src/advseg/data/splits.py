"""Cross-validation splits and nested labeled subsets.

The seeded order of cases is a sort by ``blake2b(f"{seed}:{name}")``, not a NumPy permutation, so
it is identical on every platform and NumPy version, and a case's position does not depend on
which other cases exist (adding cases never reshuffles the others' relative order).

* :func:`make_kfold`: ``folds >= 2`` is k-fold cross-validation (the seeded order cut into ``folds``
  near-equal validation chunks); ``folds == 1`` means no cross-validation, one seeded hold-out split
  with ``round(0.2 * n)`` validation cases (at least 1).
* :func:`load_or_create_splits`: ``splits.json`` is written once (same format as nnU-Net's
  ``splits_final.json``: a list of ``{"train": [...], "val": [...]}``) and reused afterwards.
* :func:`labeled_subset`: a prefix of the seeded order, so for one seed the subsets are nested
  (10 % lies inside 25 %). :func:`unlabeled_complement` is the rest of the training cases, which a
  semi-supervised trainer may use as images only, never reading their labels.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from advseg.errors import InputError
from advseg.io.atomic import atomic_write_text

HOLDOUT_FRACTION = 0.2


def seeded_order(names: list[str], seed: int) -> list[str]:
    """``names`` in a pseudo-random order fixed by ``seed`` (platform- and version-independent)."""

    def key(name: str) -> tuple[bytes, str]:
        return hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=16).digest(), name

    return sorted(names, key=key)


def _round_half_up(x: float) -> int:
    # The epsilon keeps 0.15 * 10 = 1.4999999999999998 at 2, as a person would round it.
    return math.floor(x + 0.5 + 1e-9)


def _check_names(case_names: list[str]) -> list[str]:
    names = [str(n) for n in case_names]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(None, f"duplicate case names: {', '.join(dup[:5])}")
    return names


def make_kfold(case_names: list[str], folds: int, seed: int) -> list[dict[str, list[str]]]:
    """``folds`` splits ``[{"train": [...], "val": [...]}, ...]``; lists are sorted by name.

    Every case is in exactly one ``val``; fold sizes differ by at most one. ``folds == 1``: a single
    hold-out split, ``round(0.2 n)`` (>= 1) cases for validation.
    """
    names = _check_names(case_names)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise InputError(None, f"folds must be a positive integer, got {folds!r}")
    n = len(names)
    if n < 2 or (folds > 1 and n < folds):
        raise InputError(None, f"{n} case(s) cannot be split into {'train/val' if folds == 1 else folds} "
                               f"{'parts' if folds == 1 else 'folds'} (need at least {max(2, folds)})")
    order = seeded_order(names, seed)
    if folds == 1:
        n_val = min(n - 1, max(1, _round_half_up(HOLDOUT_FRACTION * n)))
        chunks = [order[:n_val]]
    else:
        bounds = [round(i * n / folds) for i in range(folds + 1)]
        chunks = [order[bounds[i]: bounds[i + 1]] for i in range(folds)]
    splits = []
    for val in chunks:
        held = set(val)
        splits.append({"train": sorted(c for c in names if c not in held), "val": sorted(val)})
    return splits


def load_or_create_splits(path: Path | str, case_names: list[str], folds: int, seed: int) -> list[dict]:
    """Reuse ``path`` (splits.json) if it exists and matches ``case_names``; else write it atomically.

    An existing file made for other cases or another number of folds is an :class:`InputError`
    (delete it to make new splits); a hand-made or nnU-Net ``splits_final.json`` is accepted if it
    partitions the cases in every fold.
    """
    path = Path(path)
    names = _check_names(case_names)
    if path.exists():
        return _read_splits(path, names, folds)
    splits = make_kfold(names, folds, seed)
    atomic_write_text(path, json.dumps(splits, indent=1))
    return splits


def _read_splits(path: Path, names: list[str], folds: int) -> list[dict]:
    delete = "; delete it to make new splits"
    try:
        splits = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a valid splits file ({exc}){delete}") from None
    ok = isinstance(splits, list) and all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list)
        for s in splits
    )
    if not ok or not splits:
        raise InputError(path, f"expected a list of {{'train': [...], 'val': [...]}}{delete}")
    if len(splits) != folds:
        raise InputError(path, f"has {len(splits)} fold(s) but {folds} were asked for{delete}")
    want = set(names)
    for i, split in enumerate(splits):
        train, val = [str(c) for c in split["train"]], [str(c) for c in split["val"]]
        have = set(train) | set(val)
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            raise InputError(path, f"fold {i} does not match the dataset (missing {len(missing)} case(s) "
                                   f"{missing[:3]}, unknown {len(extra)} {extra[:3]}){delete}")
        if set(train) & set(val) or len(train) + len(val) != len(want):
            raise InputError(path, f"fold {i} lists a case twice or in both train and val{delete}")
        splits[i] = {"train": train, "val": val}
    return splits


def labeled_subset(
    train_cases: list[str], fraction: float | None = None, count: int | None = None, seed: int = 0
) -> list[str]:
    """The cases whose labels training may use: a fixed prefix of the seeded order (sorted by name).

    Give ``fraction`` (``round(fraction * n)``, halves up, at least 1) or ``count``; neither gives
    every case. For one ``train_cases`` and ``seed`` a smaller subset always lies inside a larger one.
    """
    names = _check_names(train_cases)
    n = len(names)
    if n == 0:
        raise InputError(None, "no training cases to take a labeled subset from")
    if fraction is not None and count is not None:
        raise InputError(None, "give a labeled fraction or a labeled count, not both")
    if count is None and fraction is None:
        k = n
    elif count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= n:
            raise InputError(None, f"labeled count must be between 1 and {n} (training cases), got {count!r}")
        k = count
    else:
        if not 0 < fraction <= 1:
            raise InputError(None, f"labeled fraction must be in (0, 1], got {fraction!r}")
        k = min(n, max(1, _round_half_up(fraction * n)))
    return sorted(seeded_order(names, seed)[:k])


def unlabeled_complement(train_cases: list[str], subset: list[str]) -> list[str]:
    """Training cases outside ``subset`` (sorted): usable as unlabeled images, labels never read."""
    unknown = sorted(set(subset) - set(train_cases))
    if unknown:
        raise InputError(None, f"labeled subset has cases that are not training cases: {unknown[:5]}")
    chosen = set(subset)
    return sorted(c for c in train_cases if c not in chosen)
