"""Aggregation of an experiment matrix (or of run folders): Table-II-style summaries and paired tests.

**Pooling**: an *arm* is one method at one labeled level (``res_unet@0.25``). Its summary pools the
per-case values of every test case of every fold and seed: one sample per ``(case, fold, seed)``
(not a mean of fold means), NaN (undefined: exactly one of prediction and truth empty) left out,
mean ± sample standard deviation (``ddof=1``) with ``n`` the samples used. With ``test: cv`` each
labeled case is one sample per seed; with a fixed test set, each test case counts once per fold and
seed.

**Paired tests**: two arms are compared with the Wilcoxon signed-rank test
(:func:`advseg.evaluation.stats.paired_wilcoxon`) on the samples both have, paired by
``(case, fold, seed)``. ``compare``: ``same_level`` (every two methods at the same labeled level),
``all`` (every two arms), or a list of ``[arm, arm]`` pairs.

**Best values**: bold in every table column (max for DSC and NSD, min for AHD, ASHD and HD95, min
``|RVD|``), comparing the numbers as shown.

Written into ``<matrix>/results/``: ``summary.md``, ``summary.csv`` (one row per arm x organ x
metric), ``summary.json``, ``wilcoxon.csv``, ``per_case.csv`` (every pooled sample).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advseg.data.dataset import load_dataset
from advseg.errors import InputError
from advseg.evaluation.stats import best_rows, describe, paired_wilcoxon
from advseg.experiments.figures import plot_metric_vs_labels, plot_paired_differences
from advseg.experiments.results import (
    DONE_FILE,
    MATRIX_FILE,
    is_results_folder,
    level_text,
    read_results,
    validation_records,
)
from advseg.io import strip_suffix
from advseg.io.atomic import atomic_write_text
from advseg.metrics.accumulate import METRIC_UNITS, METRICS

TABLE_METRICS: tuple[str, ...] = ("dsc", "ahd", "ashd", "rvd", "hd95", "nsd")
"""The pelvic study's Table II metrics, in its order."""
TEST_METRICS: tuple[str, ...] = ("dsc", "hd95")
"""Metrics whose Wilcoxon p-values the Markdown shows (the CSV has every table metric)."""
_TITLES = {"dsc": "DSC", "iou": "IoU", "sensitivity": "Sens.", "specificity": "Spec.", "precision": "Prec.",
           "rvd": "RVD", "ahd": "AHD", "ashd": "ASHD", "hd95": "HD95", "nsd": "NSD"}
_DECIMALS = {"": 3, "%": 1, "mm": 2}


def metric_title(metric: str, nsd_tolerance_mm: float | None = None) -> str:
    if metric == "nsd" and nsd_tolerance_mm is not None:
        return f"NSD@{nsd_tolerance_mm:g}mm"
    unit = METRIC_UNITS.get(metric, "")
    return f"{_TITLES.get(metric, metric)} ({unit})" if unit else _TITLES.get(metric, metric)


def decimals(metric: str) -> int:
    return _DECIMALS[METRIC_UNITS.get(metric, "")]


# ------------------------------------------------------------------------------------ finding results


#: a planned cell: (method, level label, seed, fold), as :class:`advseg.experiments.matrix.Cell` names it
PlannedCell = tuple[str, str, int, int]


@dataclass
class CellResult:
    """One evaluated run: which arm, fold and seed, and where its outputs are."""

    method: str
    level: str  # "0.25" (fraction) or "n12" (count)
    seed: int
    fold: int
    run_dir: Path
    evaluation: Path  # folder with per_case.csv
    predictions: Path | None = None
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"images": [..], "label": ..}
    per_case: list[dict[str, Any]] | None = None  # rows of a cell-result file (then no per_case.csv)
    # {"train": {...iterations, best_iteration}, "seconds": {...}, "validation": the validation record at
    # the evaluated checkpoint (D diagnostics)}, where the cell's record tells them
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def arm(self) -> str:
        return f"{self.method}@{self.level}"

    @property
    def key(self) -> PlannedCell:
        """The cell's place in an experiment's plan."""
        return (self.method, self.level, self.seed, self.fold)

    def confidence_file(self, case: str) -> Path | None:
        """D's confidence map of ``case`` (``predictions/confidence/<case>.nii.gz``), if written."""
        if self.predictions is None:
            return None
        from advseg.inference.api import confidence_path  # torch: here, so --aggregate runs without it

        path = confidence_path(self.predictions / f"{case}.nii.gz")
        return path if path.is_file() else None


@dataclass
class Collection:
    """What a results folder holds: a matrix, a folder of run folders, or one run folder."""

    kind: str  # "matrix" | "runs" | "run"
    root: Path
    name: str
    cells: list[CellResult]
    total_cells: int
    arms: list[str]  # in table order
    compare: str | list[list[str]] = "same_level"
    report: dict[str, Any] = field(default_factory=dict)
    nsd_tolerance_mm: float = 2.0
    run_dirs: list[Path] = field(default_factory=list)  # every run folder, finished or not
    training_cases: int | None = None  # the fold's training-set size where the cells tell it


def level_label(fraction: float | None, count: int | None) -> str:
    return f"n{count}" if count else f"{fraction if fraction is not None else 1.0:g}"


def find_results(path: str | Path) -> Collection:
    """Index a matrix folder (``matrix.json``), one run folder (``config.yaml``), or a folder of run
    folders (the demo's). Raises :class:`InputError` if it is none of those."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(root, "folder not found")
    if is_results_folder(root):
        return _results_collection(root)
    if (root / MATRIX_FILE).is_file():
        manifest = json.loads((root / MATRIX_FILE).read_text())
        cells, arms, run_dirs = [], [], []
        for c in manifest["cells"]:
            arm = f"{c['method']}@{c['level']['label']}"
            if arm not in arms:
                arms.append(arm)
            folder = root / c["folder"]
            run_dirs.append(folder)
            marker = folder / DONE_FILE
            if not marker.is_file():
                continue
            record = json.loads(marker.read_text())
            cells.append(CellResult(
                method=c["method"], level=c["level"]["label"], seed=c["seed"], fold=c["fold"], run_dir=folder,
                evaluation=folder / "evaluation", predictions=folder / "predictions",
                cases={t["name"]: t for t in record.get("test_cases", [])},
                info=_cell_info(record, validation_records(
                    folder, record.get("train", {}).get("best_iteration"))[1]),
            ))
        return Collection("matrix", root, manifest.get("name", root.name), cells, len(manifest["cells"]),
                          arms, manifest.get("compare", "same_level"), manifest.get("report") or {},
                          manifest.get("nsd_tolerance_mm", 2.0), run_dirs)
    if (root / "config.yaml").is_file():
        cell = _run_folder_cell(root)
        return Collection("run", root, root.name, [cell] if cell else [], 1, [cell.arm] if cell else [],
                          run_dirs=[root])
    runs = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.yaml").is_file()]
    if not runs:
        raise InputError(root, "not a results folder: no matrix.json, no config.yaml, no run folders inside")
    order = _demo_order(root)
    runs.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    cells = [c for c in (_run_folder_cell(p) for p in runs) if c is not None]
    return Collection("runs", root, root.name, cells, len(runs), [c.arm for c in cells], "all", run_dirs=runs)


def _cell_info(record: Mapping[str, Any], validation: Mapping[str, Any] | None) -> dict[str, Any]:
    val = dict(validation or {})
    adv = (record.get("config") or record.get("requested_config") or {}).get("adversarial") or {}
    if adv.get("enabled") and adv.get("semi"):
        # the semi-supervised mask the cell trained with: its passing share and accuracy
        source = adv.get("mask_source", "d")
        for key in ("pass_fraction", "pass_accuracy"):
            if f"{source}_{key}" in val:
                val[f"mask_{key}"] = val[f"{source}_{key}"]
    cfg = record.get("config") or record.get("requested_config") or {}
    supervised = (not adv.get("enabled")) and not (cfg.get("mean_teacher") or {}).get("enabled")
    return {"train": dict(record.get("train") or {}), "seconds": dict(record.get("seconds") or {}),
            "validation": val, "supervised": bool(cfg) and supervised, "inputs": record.get("inputs"),
            "cpu": (record.get("hardware") or {}).get("cpu")}


def input_notes(cells: Sequence[CellResult]) -> list[str]:
    """Warnings where cells that should have seen the same volumes did not, by the input digests
    their records carry (:func:`advseg.io.digest.folder_digest`; cells without them are not
    compared): more than one dataset among all cells, or more than one unlabeled pool (e.g. a GAN
    trained again on another machine) among one method's cells."""
    notes = []

    def short(digest: Mapping[str, Any]) -> str:
        return f"{str(digest.get('sha256', ''))[:8]} ({digest.get('files')} files)"

    with_inputs = [c for c in cells if isinstance(c.info.get("inputs"), Mapping)]
    datasets = {short(c.info["inputs"]["data"]) for c in with_inputs if c.info["inputs"].get("data")}
    if len(datasets) > 1:
        notes.append(f"the cells trained on {len(datasets)} different datasets: "
                     + ", ".join(sorted(datasets)))
    for method in dict.fromkeys(c.method for c in with_inputs):
        pools = {tuple(short(d) for d in c.info["inputs"].get("unlabeled") or [])
                 for c in with_inputs if c.method == method}
        if len(pools) > 1:
            notes.append(f"{method}: its cells used {len(pools)} different unlabeled pools: "
                         + "; ".join(", ".join(p) or "none" for p in sorted(pools)))
    return notes


def hardware_notes(cells: Sequence[CellResult]) -> list[str]:
    """A warning where the cells' train seconds come from more than one kind of CPU (by the model
    name their result files record; older files without it count as "not recorded"): the cost
    columns then compare machines as well as methods."""
    kinds = Counter(c.info.get("cpu") or "not recorded" for c in cells)
    if len(kinds) < 2:
        return []
    return [f"train seconds come from {len(kinds)} kinds of CPU ("
            + ", ".join(f"{k}: {n} cell{'s' if n > 1 else ''}" for k, n in sorted(kinds.items()))
            + "): compare costs between cells of one kind"]


def _level_order(label: str) -> tuple[int, float]:
    """Counts (``n4``) before fractions, each ascending: the labeled-data axis of the tables."""
    return (0, float(label[1:])) if label.startswith("n") else (1, float(label))


def _results_collection(root: Path) -> Collection:
    """A folder of committed cell-result files (:mod:`advseg.experiments.results`)."""
    docs = read_results(root)
    cells = []
    for d in docs:
        c = d["cell"]
        path = Path(d["_path"])
        cells.append(CellResult(method=c["method"], level=c["level"]["label"], seed=int(c["seed"]),
                                fold=int(c["fold"]), run_dir=path.parent, evaluation=path.parent,
                                per_case=d["per_case"], info=_cell_info(d, d.get("best_validation"))))
    methods = list(dict.fromkeys(c.method for c in cells))
    levels = sorted({c.level for c in cells}, key=_level_order)
    arms = [f"{m}@{lv}" for m in methods for lv in levels if any(c.arm == f"{m}@{lv}" for c in cells)]
    # labeled + withheld = the fold's training set (withheld is only recorded by semi-supervised cells;
    # a fraction-1 cell has them all labeled)
    sizes = [d.get("cases", {}).get("labeled", 0) + d.get("cases", {}).get("unlabeled_withheld", 0)
             for d in docs]
    return Collection("results", root, root.name, cells, len(cells), arms, "same_level",
                      training_cases=max(sizes) if sizes and max(sizes) > 0 else None)


def _demo_order(root: Path) -> list[str]:
    marker = root / "demo.json"
    if marker.is_file():
        try:
            return list(json.loads(marker.read_text()).get("methods", []))
        except (json.JSONDecodeError, AttributeError):
            return []
    return []


def _run_folder_cell(run: Path) -> CellResult | None:
    """A run folder with ``evaluation/per_case.csv`` (the demo's layout); test cases found through
    the dataset recorded in ``dataset_info.json``."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    train = cfg.get("train", {})
    level = level_label(train.get("labeled_fraction"), train.get("labeled_count"))
    evaluation = run / "evaluation"
    cell = CellResult(run.name, level, int(train.get("seed", 0)), int(train.get("fold", 0)), run, evaluation,
                      predictions=run / "predictions" if (run / "predictions").is_dir() else None)
    marker = run / "cell.json"  # a matrix cell (or benchmark) folder knows its method and test cases
    if marker.is_file():
        record = json.loads(marker.read_text())
        cell.method = record.get("cell", {}).get("method", cell.method)
        cell.cases = {t["name"]: t for t in record.get("test_cases", [])}
    elif cell.predictions is not None:
        cell.cases = _cases_from_dataset(run, cell.predictions)
    return cell


def _cases_from_dataset(run: Path, predictions: Path) -> dict[str, dict[str, Any]]:
    info_path = run / "dataset_info.json"
    if not info_path.is_file():
        return {}
    try:
        index = load_dataset(json.loads(info_path.read_text())["dataset"])
    except (InputError, KeyError, json.JSONDecodeError):
        return {}
    out = {}
    for p in sorted(predictions.glob("*.nii*")):
        name = strip_suffix(p)
        try:
            case = index.case(name)
        except KeyError:
            continue
        if case.label is not None:
            out[name] = {"name": name, "images": [str(i) for i in case.images], "label": str(case.label)}
    return out


# -------------------------------------------------------------------------------------- aggregation


@dataclass
class Aggregate:
    name: str
    arms: list[str]
    arm_info: dict[str, dict[str, Any]]  # arm -> {"method", "level", "cells"}
    organs: list[str]
    metrics: list[str]
    summary: dict[str, dict[str, dict[str, dict[str, float | int]]]]  # arm -> organ -> metric -> stats
    tests: list[dict[str, Any]]  # {"a", "b", "organ", "metric", "n", "statistic", "p", "mean_diff"}
    rows: list[dict[str, Any]]  # pooled samples
    finished_cells: int
    total_cells: int
    nsd_tolerance_mm: float = 2.0
    notes: list[str] = field(default_factory=list)
    training_cases: int | None = None  # the fold's training-set size, when known (places fractions)
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> cost_summary(...)
    baseline: str | None = None  # the method every other is set against, level by level
    cells: list[dict[str, Any]] = field(default_factory=list)  # cell_records(...): one per finished cell

    def values(self, arm: str, organ: str, metric: str) -> dict[tuple, float]:
        """``(case, fold, seed) -> value`` of one arm, organ and metric: what the paired tests pair."""
        return _keyed(self.rows, arm, organ, metric)

    def samples(self, arm: str) -> int:
        return len({(r["case"], r["fold"], r["seed"]) for r in self.rows if r["arm"] == arm})


def read_per_case(cells: Iterable[CellResult]) -> list[dict[str, Any]]:
    """Every ``(cell, case, organ)`` row of the cells' ``per_case.csv``, metric values as floats."""
    rows = []
    for cell in cells:
        path = cell.evaluation / "per_case.csv"
        if cell.per_case is None and not path.is_file():
            continue
        with ExitStack() as stack:
            if cell.per_case is not None:
                source: Iterable[Mapping[str, Any]] = cell.per_case
            else:
                source = csv.DictReader(stack.enter_context(path.open(newline="")))
            for r in source:
                row: dict[str, Any] = {"arm": cell.arm, "method": cell.method, "level": cell.level,
                                       "seed": cell.seed, "fold": cell.fold, "case": r["case"],
                                       "organ": r["organ"]}
                for m in METRICS:
                    if m in r:
                        row[m] = float(r[m]) if r[m] not in ("", None) else math.nan
                rows.append(row)
    return rows


def plan_notes(cells: Sequence[CellResult], planned: Sequence[PlannedCell]) -> list[str]:
    """What an experiment's plan still lacks: the planned cells not finished (grouped by method and
    level, with their seeds) and an estimate of their training time (each missing cell counted at the
    mean train seconds of its method's finished cells at its level, else at any level)."""
    done = {c.key for c in cells}
    missing = [p for p in planned if p not in done]
    if not missing:
        return [f"all {len(planned)} planned cells finished"]
    groups: dict[tuple[str, str], list[int]] = {}
    for method, level, seed, _ in missing:
        groups.setdefault((method, level), [])
        if seed not in groups[(method, level)]:
            groups[(method, level)].append(seed)
    order = sorted(groups, key=lambda k: (_level_order(k[1]), k[0]))
    listing = "; ".join(f"{m} at {level_text(lv)} (seed{'s' if len(groups[(m, lv)]) > 1 else ''} "
                        f"{', '.join(map(str, groups[(m, lv)]))})" for m, lv in order)

    def seconds(c: CellResult) -> float:
        return float(c.info.get("seconds", {}).get("train", math.nan))

    left, unknown = 0.0, 0
    for method, level, _, _ in missing:
        same = [seconds(c) for c in cells if c.method == method and c.level == level]
        anyl = [seconds(c) for c in cells if c.method == method]
        known = [v for v in (same or anyl) if math.isfinite(v)]
        if known:
            left += sum(known) / len(known)
        else:
            unknown += 1
    estimate = f"about {left / 3600:.1f} h of training left at the finished cells' pace"
    if unknown:
        estimate += f", plus {unknown} cell{'s' if unknown > 1 else ''} of methods with no finished cell"
    return [f"{len(planned) - len(missing)} of {len(planned)} planned cells finished; {estimate}. "
            f"Missing: {listing}"]


def aggregate(
    collection: Collection,
    metrics: Sequence[str] = TABLE_METRICS,
    compare: str | list[list[str]] | None = None,
    planned: Sequence[PlannedCell] | None = None,
) -> Aggregate:
    """Pool the per-case rows of ``collection`` per arm, organ and metric, and run the paired tests.
    ``planned``: every cell of the experiment's plan (then the notes say which are missing)."""
    rows = read_per_case(collection.cells)
    if not rows:
        raise InputError(collection.root, "no evaluated cells yet (no evaluation/per_case.csv)")
    arms = [a for a in collection.arms if any(r["arm"] == a for r in rows)]
    organs = list(dict.fromkeys(r["organ"] for r in rows))
    present = [m for m in metrics if any(m in r for r in rows)]
    summary: dict[str, Any] = {}
    for arm in arms:
        summary[arm] = {}
        for organ in organs:
            sel = [r for r in rows if r["arm"] == arm and r["organ"] == organ]
            summary[arm][organ] = {m: describe([r.get(m, math.nan) for r in sel]) for m in present}
    arm_info = {}
    for arm in arms:
        cells = [c for c in collection.cells if c.arm == arm]
        arm_info[arm] = {"method": cells[0].method, "level": cells[0].level, "cells": len(cells)}
    pairs = comparison_pairs(arms, arm_info, compare if compare is not None else collection.compare,
                             collection.root)
    tests = []
    for a, b in pairs:
        for organ in organs:
            for m in present:
                va = _keyed(rows, a, organ, m)
                vb = _keyed(rows, b, organ, m)
                t = paired_wilcoxon(va, vb, m)
                tests.append({"a": a, "b": b, "organ": organ, "metric": m, "n": t.n, "statistic": t.statistic,
                              "p": t.p, "mean_diff": t.mean_diff})
    costs = {arm: cost_summary([c for c in collection.cells if c.arm == arm]) for arm in arms}
    baseline = baseline_method(collection, [arm_info[a]["method"] for a in arms])
    cells = cell_records(collection.cells, rows, organs, baseline)
    notes = input_notes(collection.cells) + hardware_notes(collection.cells)
    finished, total = len(collection.cells), collection.total_cells
    if planned is not None:
        plan = set(planned)
        extra = [c for c in collection.cells if c.key not in plan]
        finished, total = len(collection.cells) - len(extra), len(planned)
        notes += plan_notes(collection.cells, planned)
        if extra:
            notes.append(f"{len(extra)} finished cell{'s' if len(extra) > 1 else ''} outside the plan "
                         f"(in the tables too): {', '.join(sorted({c.arm for c in extra}))}")
    elif len(collection.cells) < collection.total_cells:
        notes.append(f"{len(collection.cells)} of {collection.total_cells} cells finished; the tables cover "
                     "only those")
    return Aggregate(collection.name, arms, arm_info, organs, present, summary, tests, rows,
                     finished, total, collection.nsd_tolerance_mm, notes,
                     training_cases=collection.training_cases, costs=costs, baseline=baseline,
                     cells=cells)


def cell_records(cells: Sequence[CellResult], rows: Sequence[Mapping[str, Any]],
                 organs: Sequence[str], baseline: str | None = None) -> list[dict[str, Any]]:
    """One record per cell, ordered by level, method (``baseline`` first) and seed: its cost
    (iterations run, the evaluated checkpoint's iteration, train seconds), its test mean DSC and HD95
    per organ, and D's and the max-softmax's AUC for S's right vs wrong voxels at the evaluated
    checkpoint (None where not logged). What a reader needs to see how much the seeds differ."""
    out = []
    for c in cells:
        sel = [r for r in rows if (r["arm"], r["seed"], r["fold"]) == (c.arm, c.seed, c.fold)]
        rec: dict[str, Any] = {"method": c.method, "level": c.level, "seed": c.seed, "fold": c.fold,
                               "iterations": c.info.get("train", {}).get("iterations"),
                               "best_iteration": c.info.get("train", {}).get("best_iteration"),
                               "train_seconds": c.info.get("seconds", {}).get("train")}
        for organ in organs:
            for m in ("dsc", "hd95"):
                values = [r.get(m, math.nan) for r in sel if r["organ"] == organ]
                rec[f"{m}_{organ}"] = describe(values)["mean"]
        val = c.info.get("validation", {})
        for key in ("conf_auc_correct", "softmax_auc_correct", "product_auc_correct"):
            rec[key] = val.get(key) if isinstance(val.get(key), int | float) else None
        out.append(rec)
    order = list(dict.fromkeys(c.method for c in cells))
    out.sort(key=lambda r: (_level_order(r["level"]), r["method"] != baseline, order.index(r["method"]),
                            r["seed"], r["fold"]))
    return out


def baseline_method(collection: Collection, methods: Sequence[str]) -> str | None:
    """The method the others are set against: the matrix's ``report.baseline`` where it names one of
    ``methods``, else the first method whose every cell trained supervised (no adversarial term, no
    Mean Teacher; known from the cells' configs), else None."""
    named = (collection.report or {}).get("baseline")
    if named in methods:
        return str(named)
    for method in dict.fromkeys(methods):
        cells = [c for c in collection.cells if c.method == method]
        if cells and all(c.info.get("supervised") for c in cells):
            return method
    return None


def _keyed(rows: list[dict[str, Any]], arm: str, organ: str, metric: str) -> dict[tuple, float]:
    return {(r["case"], r["fold"], r["seed"]): r.get(metric, math.nan)
            for r in rows if r["arm"] == arm and r["organ"] == organ}


def comparison_pairs(
    arms: list[str], arm_info: Mapping[str, Mapping[str, Any]], compare: str | list[list[str]],
    where: Path | None = None,
) -> list[tuple[str, str]]:
    """The arm pairs to test (see the module docstring); an arm may be named by its method alone
    when that method has a single level."""
    if compare == "all":
        return [(a, b) for i, a in enumerate(arms) for b in arms[i + 1:]]
    if compare == "same_level":
        return [(a, b) for i, a in enumerate(arms) for b in arms[i + 1:]
                if arm_info[a]["level"] == arm_info[b]["level"]]
    out = []
    for pair in compare:
        resolved = []
        for name in pair:
            matches = [a for a in arms if a == name or arm_info[a]["method"] == name]
            if len(matches) != 1:
                raise InputError(where, f"compare: {name!r} names {len(matches)} arms "
                                        f"(known: {', '.join(arms)})")
            resolved.append(matches[0])
        out.append((resolved[0], resolved[1]))
    return out


# ----------------------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A rendered table: header and rows of ``(text, bold)`` cells; Markdown and HTML draw it."""

    title: str
    header: list[str]
    rows: list[list[tuple[str, bool]]]
    align: list[str]  # "l" or "r" per column


def format_stats(metric: str, stats: Mapping[str, Any], n_full: int | None = None,
                 digits: int | None = None, missing: str = "n/a") -> str:
    """``mean ± std`` (``mean`` alone without a finite std) with the metric's decimals or ``digits``;
    ``missing`` without samples; `` (n=N)`` when fewer than ``n_full`` samples."""
    mean, std, n = stats.get("mean"), stats.get("std"), int(stats.get("n") or 0)
    d = decimals(metric) if digits is None else digits
    if n == 0 or mean is None or not math.isfinite(mean):
        return missing
    text = f"{mean:.{d}f}" if std is None or not math.isfinite(std) else f"{mean:.{d}f} ± {std:.{d}f}"
    return f"{text} (n={n})" if n_full is not None and n < n_full else text


def _bold_column(metric: str, stats: list[Mapping[str, Any]]) -> list[bool]:
    means = [s.get("mean") if int(s.get("n") or 0) else None for s in stats]
    return best_rows(metric, means, decimals(metric))


def overview_table(agg: Aggregate, metric: str = "dsc") -> Table:
    """Rows arms, columns organs: ``metric`` mean ± std, best per column bold."""
    header = ["Method", "Labeled", *agg.organs]
    cols = [[agg.summary[a][o].get(metric, {}) for a in agg.arms] for o in agg.organs]
    bold = [_bold_column(metric, c) for c in cols]
    rows = []
    for i, arm in enumerate(agg.arms):
        info = agg.arm_info[arm]
        n_full = agg.samples(arm)
        rows.append([(info["method"], False), (level_text(info["level"]), False)]
                    + [(format_stats(metric, cols[j][i], n_full), bold[j][i])
                       for j in range(len(agg.organs))])
    return Table(f"{metric_title(metric, agg.nsd_tolerance_mm)} per organ", header, rows,
                 ["l", "l", *["r"] * len(agg.organs)])


def organ_table(agg: Aggregate, organ: str) -> Table:
    """Rows arms, columns metrics (Table II of the pelvic study for one organ)."""
    header = ["Method", "Labeled", *[metric_title(m, agg.nsd_tolerance_mm) for m in agg.metrics], "n"]
    cols = [[agg.summary[a][organ].get(m, {}) for a in agg.arms] for m in agg.metrics]
    bold = [_bold_column(m, c) for m, c in zip(agg.metrics, cols, strict=True)]
    rows = []
    for i, arm in enumerate(agg.arms):
        info = agg.arm_info[arm]
        n_full = agg.samples(arm)
        rows.append([(info["method"], False), (level_text(info["level"]), False)]
                    + [(format_stats(m, cols[j][i], n_full), bold[j][i]) for j, m in enumerate(agg.metrics)]
                    + [(str(n_full), False)])
    return Table(organ, header, rows, ["l", "l", *["r"] * (len(agg.metrics) + 1)])


def test_table(agg: Aggregate, metric: str) -> Table | None:
    """Rows arm pairs, columns organs: the mean paired difference A - B in the metric's unit (|RVD| for
    RVD), the two-sided p and the pairs n; ``*`` marks p < 0.05. A p-value alone says nothing of which
    arm is better, so the signed difference stands first."""
    tests = [t for t in agg.tests if t["metric"] == metric]
    if not tests:
        return None
    pairs = list(dict.fromkeys((t["a"], t["b"]) for t in tests))
    rows = []
    for a, b in pairs:
        cells = [(a, False), (b, False)]
        for organ in agg.organs:
            t = next((t for t in tests if (t["a"], t["b"], t["organ"]) == (a, b, organ)), None)
            if t is None or not math.isfinite(t["p"]):
                cells.append(("n/a", False))
            else:
                diff = t.get("mean_diff", math.nan)
                shown = f"{diff:+.{decimals(metric)}f}" if math.isfinite(diff) else "n/a"
                cells.append((f"{shown} (p {t['p']:.3g}{'*' if t['p'] < 0.05 else ''}, n={t['n']})",
                              t["p"] < 0.05))
        rows.append(cells)
    what = "|RVD|" if metric == "rvd" else _TITLES.get(metric, metric)
    return Table(f"Wilcoxon signed-rank, {what}: mean difference A - B (p, pairs)", ["A", "B", *agg.organs],
                 rows, ["l", "l", *["r"] * len(agg.organs)])


def baseline_table(agg: Aggregate, metric: str) -> Table | None:
    """Rows the arms level by level (the baseline first), columns organs: ``metric`` mean ± std and,
    for every other method, its mean paired difference from the baseline at the same level and the
    two-sided Wilcoxon p (uncorrected; ``*`` p < 0.05) over the n (case, fold, seed) pairs both arms
    have: where the baseline ran more seeds than the method, the difference is against the baseline's
    cells of the method's seeds, not against the mean ± std shown in its row. The README's form of the
    results: each method read against supervised training with the same labels. None without a
    baseline."""
    if agg.baseline is None or metric not in agg.metrics:
        return None
    levels = sorted({agg.arm_info[a]["level"] for a in agg.arms}, key=_level_order)
    rows = []
    for level in levels:
        arms = [a for a in agg.arms if agg.arm_info[a]["level"] == level]
        base = next((a for a in arms if agg.arm_info[a]["method"] == agg.baseline), None)
        arms.sort(key=lambda a: a != base)
        for arm in arms:
            info = agg.arm_info[arm]
            cells = [(info["method"], False), (level_text(level), False), (str(info["cells"]), False)]
            for organ in agg.organs:
                text = format_stats(metric, agg.summary[arm][organ].get(metric, {}), agg.samples(arm))
                if base is not None and arm != base:
                    t = paired_wilcoxon(agg.values(arm, organ, metric), agg.values(base, organ, metric),
                                        metric)
                    if t.n and math.isfinite(t.p):
                        text += (f" ({t.mean_diff:+.{decimals(metric)}f}, "
                                 f"p {t.p:.2g}{'*' if t.p < 0.05 else ''}, n={t.n})")
                cells.append((text, False))
            rows.append(cells)
    what = _TITLES.get(metric, metric)
    return Table(f"{what} against {agg.baseline} with the same labels: mean ± std (paired difference, "
                 "Wilcoxon p, pairs)",
                 ["Method", "Labeled", "cells", *agg.organs], rows, ["l", "l", "r", *["r"] * len(agg.organs)])


# D diagnostics of a validation record (advseg.training.diagnostics) shown per arm, in this order
DIAGNOSTICS: tuple[tuple[str, str], ...] = (
    ("d_auc_real_fake", "D AUC real/fake"),
    ("conf_auc_correct", "D AUC right/wrong"),
    ("softmax_auc_correct", "softmax AUC right/wrong"),
    ("product_auc_correct", "D x softmax AUC"),
    ("t_semi", "T_semi"),
    ("mask_pass_fraction", "mask pass fraction"),
    ("mask_pass_accuracy", "mask pass accuracy"),
    ("region_accuracy", "region accuracy"),
)


def cost_summary(cells: Sequence[CellResult]) -> dict[str, Any]:
    """Per arm: train seconds and iterations run (early stopping) / of the evaluated checkpoint, as
    ``describe`` stats over the cells, and the mean of each D diagnostic over the cells that logged it
    (from the validation at the evaluated checkpoint)."""
    out: dict[str, Any] = {
        "train_seconds": describe([c.info.get("seconds", {}).get("train", math.nan) for c in cells]),
        "iterations": describe([c.info.get("train", {}).get("iterations", math.nan) for c in cells]),
        "best_iteration": describe([c.info.get("train", {}).get("best_iteration", math.nan) for c in cells]),
    }
    for key, _ in DIAGNOSTICS:
        vals = [c.info.get("validation", {}).get(key) for c in cells]
        out[key] = describe([v if isinstance(v, int | float) else math.nan for v in vals])
    return out


def _plain(stats: Mapping[str, Any], digits: int) -> str:
    """A cost or diagnostic cell: :func:`format_stats` with fixed decimals, ``-`` where no cell logged it."""
    return format_stats("", stats, digits=digits, missing="-")


def cost_table(agg: Aggregate) -> Table | None:
    """Rows arms: cells, train seconds, iterations run and at the evaluated checkpoint, and the D
    diagnostics that any arm logged (mean ± std over its cells)."""
    if not agg.costs or not any(int(c["train_seconds"]["n"]) for c in agg.costs.values()):
        return None
    diag = [(k, t) for k, t in DIAGNOSTICS if any(int(c[k]["n"]) for c in agg.costs.values())]
    header = ["Method", "Labeled", "cells", "train s", "iterations", "best at", *[t for _, t in diag]]
    rows = []
    for arm in agg.arms:
        c, info = agg.costs[arm], agg.arm_info[arm]
        rows.append([(info["method"], False), (level_text(info["level"]), False), (str(info["cells"]), False),
                     (_plain(c["train_seconds"], 0), False), (_plain(c["iterations"], 0), False),
                     (_plain(c["best_iteration"], 0), False), *[(_plain(c[k], 3), False) for k, _ in diag]])
    return Table("Cost and D diagnostics (validation at the evaluated checkpoint)", header, rows,
                 ["l", "l", *["r"] * (len(header) - 2)])


def cells_table(agg: Aggregate) -> Table | None:
    """Rows the finished cells (:func:`cell_records`), columns their cost, test DSC and HD95 per organ
    and D's / the max-softmax's AUC right vs wrong."""
    if not agg.cells:
        return None

    def num(v: Any, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    header = ["Labeled", "Method", "seed", "fold", "iterations", "best at", "train s",
              *[f"DSC {o}" for o in agg.organs], *[f"HD95 {o}" for o in agg.organs], "D / softmax AUC"]
    rows = []
    for r in agg.cells:
        auc = "-" if r["conf_auc_correct"] is None else (
            f"{r['conf_auc_correct']:.3f} / {num(r['softmax_auc_correct'], '.3f')}")
        rows.append([(level_text(r["level"]), False), (r["method"], False), (str(r["seed"]), False),
                     (str(r["fold"]), False), (num(r["iterations"], "d"), False),
                     (num(r["best_iteration"], "d"), False), (num(r["train_seconds"], ".0f"), False),
                     *[(num(r[f"dsc_{o}"], ".3f"), False) for o in agg.organs],
                     *[(num(r[f"hd95_{o}"], ".2f"), False) for o in agg.organs], (auc, False)])
    return Table("Cells (test means per cell; seconds: train)", header, rows,
                 ["l", "l", *["r"] * (len(header) - 2)])


def seeds_table(agg: Aggregate, metric: str = "dsc") -> Table | None:
    """Rows the arms of every level where some arm ran more than one cell, the baseline's arm first;
    columns organs. The baseline's row lists its test mean ``metric`` per cell (seed, fold) and their
    std; every other arm's row its difference from the baseline's cell of the same seed and fold,
    cell by cell, then their mean and std. What a pooled paired test hides: whether a method's gain
    holds seed by seed, and how far the baseline itself moves from one training seed to the next.
    None where no arm ran more than one cell."""
    if metric not in agg.metrics or not agg.cells:
        return None
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in agg.cells:
        by_arm.setdefault(f"{r['method']}@{r['level']}", []).append(r)
    many = {recs[0]["level"] for recs in by_arm.values() if len(recs) > 1}
    if not many:
        return None
    spec = f".{decimals(metric)}f"
    rows = []
    for arm, recs in by_arm.items():
        info = agg.arm_info.get(arm, {"method": recs[0]["method"], "level": recs[0]["level"]})
        base = f"{agg.baseline}@{info['level']}" if agg.baseline is not None else None
        base_recs = {(r["seed"], r["fold"]): r for r in by_arm.get(base, [])} if base else {}
        if info["level"] not in many:
            continue
        cells = [(info["method"], False), (level_text(info["level"]), False),
                 (", ".join(str(r["seed"]) if len(set(x["fold"] for x in recs)) == 1
                            else f"{r['seed']}/{r['fold']}" for r in recs), False)]
        for organ in agg.organs:
            key = f"{metric}_{organ}"
            if arm == base or base is None:
                vals = [r[key] for r in recs]
            else:
                vals = [r[key] - base_recs[(r["seed"], r["fold"])][key]
                        if (r["seed"], r["fold"]) in base_recs else math.nan for r in recs]
            sign = "" if arm == base or base is None else "+"
            each = " / ".join("-" if not math.isfinite(v) else format(v, sign + spec) for v in vals)
            st = describe(vals)
            tail = (f" (sd {st['std']:{spec}})" if arm == base or base is None else
                    f" (mean {st['mean']:+{spec}}, sd {st['std']:{spec}})")
            cells.append((each + (tail if int(st["n"]) > 1 else ""), False))
        rows.append(cells)
    what = _TITLES.get(metric, metric)
    against = (f"; every other method: its difference from {agg.baseline} with the same seed and labels"
               if agg.baseline else "")
    return Table(f"{what} per seed (test mean per cell{against})",
                 ["Method", "Labeled", "seeds", *agg.organs], rows, ["l", "l", "l", *["r"] * len(agg.organs)])


def tables(agg: Aggregate) -> list[Table]:
    out = [t for m in TEST_METRICS if (t := baseline_table(agg, m)) is not None]
    if (seeds := seeds_table(agg, "dsc")) is not None:
        out.append(seeds)
    out.append(overview_table(agg, "dsc"))
    if "hd95" in agg.metrics:
        out.append(overview_table(agg, "hd95"))
    if (cost := cost_table(agg)) is not None:
        out.append(cost)
    out += [organ_table(agg, o) for o in agg.organs]
    out += [t for m in TEST_METRICS if m in agg.metrics and (t := test_table(agg, m)) is not None]
    if (cells := cells_table(agg)) is not None:
        out.append(cells)
    return out


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in table.align) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(f"**{t}**" if b else t for t, b in row) + " |")
    return "\n".join(lines)


POOLING_NOTE = (
    "Cells: mean ± sample standard deviation (ddof=1) over every test case of every fold and seed "
    "(pooled per-case values, one sample per (case, fold, seed)); `(n=k)`: only k samples had a "
    "defined value. Bold: best per column (max DSC/NSD, min AHD/ASHD/HD95, min |RVD|). Wilcoxon: "
    "two-sided signed-rank test (scipy) on the samples both arms have, paired by (case, fold, seed); "
    "RVD compared as |RVD|; * p < 0.05, not corrected for multiple comparisons."
)


def summary_markdown(agg: Aggregate) -> str:
    lines = [f"# {agg.name}: results", "",
             f"- cells: {agg.finished_cells} of {agg.total_cells} finished",
             f"- arms (method @ labeled level): {', '.join(agg.arms)}",
             f"- NSD tolerance {agg.nsd_tolerance_mm:g} mm; AHD, ASHD, HD95 in mm; RVD in %", "",
             POOLING_NOTE, ""]
    for note in agg.notes:
        lines += [f"> {note}", ""]
    for t in tables(agg):
        lines += [f"## {t.title}", "", markdown_table(t), ""]
    return "\n".join(lines)


def comparison_table(summaries: Mapping[str, Mapping[str, Any]],
                     metrics: Sequence[str] = ("dsc", "hd95", "ashd")) -> str:
    """Markdown: one row per organ, one ``metric method`` column per metric and method (summaries as
    :func:`advseg.evaluation.evaluate_folders` returns them), mean ± std, the best method per organ
    and metric in bold. (The demo's side-by-side table.)"""
    methods = list(summaries)
    organs = list(next(iter(summaries.values()))) if summaries else []
    head = ["organ"] + [f"{_TITLES.get(m, m)} {meth}" for m in metrics for meth in methods]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for organ in organs:
        cells = [organ]
        for m in metrics:
            stats = [summaries[meth].get(organ, {}).get(m, {}) for meth in methods]
            bold = _bold_column(m, stats)
            cells += [f"**{format_stats(m, s)}**" if b else format_stats(m, s)
                      for s, b in zip(stats, bold, strict=True)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ writing


def _nan_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _num(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.10g}"


def write_aggregate(agg: Aggregate, out_dir: str | Path) -> dict[str, Path]:
    """``summary.md``, ``summary.csv``, ``summary.json``, ``wilcoxon.csv``, ``per_case.csv`` in
    ``out_dir`` (each written atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["arm", "method", "labeled", "organ", "metric", "mean", "std", "n", "best"])
    for organ in agg.organs:
        for m in agg.metrics:
            stats = [agg.summary[a][organ][m] for a in agg.arms]
            for arm, s, b in zip(agg.arms, stats, _bold_column(m, stats), strict=True):
                info = agg.arm_info[arm]
                w.writerow([arm, info["method"], info["level"], organ, m, _num(s["mean"]), _num(s["std"]),
                            s["n"], int(b)])
    summary_csv = buf.getvalue()

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "organ", "metric", "n", "statistic", "p", "mean_diff_a_minus_b"])
    for t in agg.tests:
        w.writerow([t["a"], t["b"], t["organ"], t["metric"], t["n"], _num(t["statistic"]), _num(t["p"]),
                    _num(t["mean_diff"])])
    tests_csv = buf.getvalue()

    buf = io.StringIO()
    metric_cols = [m for m in METRICS if any(m in r for r in agg.rows)]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["arm", "method", "labeled", "seed", "fold", "case", "organ", *metric_cols])
    for r in agg.rows:
        w.writerow([r["arm"], r["method"], r["level"], r["seed"], r["fold"], r["case"], r["organ"],
                    *(_num(r.get(m, math.nan)) for m in metric_cols)])
    per_case_csv = buf.getvalue()

    doc = {
        "name": agg.name,
        "pooling": POOLING_NOTE,
        "cells_finished": agg.finished_cells,
        "cells_total": agg.total_cells,
        "arms": [{"arm": a, **agg.arm_info[a], "samples": agg.samples(a)} for a in agg.arms],
        "baseline": agg.baseline,
        "cells": [{k: _nan_none(v) for k, v in r.items()} for r in agg.cells],
        "summary": {a: {o: {m: {k: _nan_none(v) for k, v in s.items()} for m, s in om.items()}
                        for o, om in agg.summary[a].items()} for a in agg.arms},
        "wilcoxon": [{k: _nan_none(v) for k, v in t.items()} for t in agg.tests],
        "costs": {a: {k: {kk: _nan_none(vv) for kk, vv in st.items()} for k, st in c.items()}
                  for a, c in agg.costs.items()},
        "notes": agg.notes,
    }
    paths = {
        "summary.md": summary_markdown(agg),
        "summary.csv": summary_csv,
        "summary.json": json.dumps(doc, indent=1, allow_nan=False) + "\n",
        "wilcoxon.csv": tests_csv,
        "per_case.csv": per_case_csv,
    }
    for name, text in paths.items():
        atomic_write_text(out / name, text)
    written = {name: out / name for name in paths}

    figure = plot_metric_vs_labels(agg, out / "dsc_vs_labels.png", "dsc", total_cases=agg.training_cases)
    if figure is not None:
        written["dsc_vs_labels.png"] = figure
    figure = plot_paired_differences(agg, out / "dsc_difference.png", "dsc")
    if figure is not None:
        written["dsc_difference.png"] = figure
    return written


def aggregate_folder(
    path: str | Path, out_dir: str | Path | None = None, planned: Sequence[PlannedCell] | None = None,
) -> tuple[Aggregate, dict[str, Path]]:
    """Find, aggregate and write the results of a matrix / run folder (default into ``<path>/results``;
    for a folder of cell-result files, ``<path>/tables``). ``planned``: see :func:`aggregate`."""
    collection = find_results(path)
    agg = aggregate(collection, planned=planned)
    default = Path(path) / ("tables" if collection.kind == "results" else "results")
    return agg, write_aggregate(agg, out_dir if out_dir is not None else default)
