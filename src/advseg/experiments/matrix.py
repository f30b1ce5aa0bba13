"""``advseg experiment``: a matrix of training runs (methods x labeled fractions x seeds x folds).

An experiment config is a YAML file (examples in ``advseg/configs/experiments/``)::

    name: my_study                     # default matrix folder: runs/<name>
    data: path/to/dataset              # MSD / nnU-Net folder (relative paths: from the working folder)
    # or: data: {phantom: {labeled: 15, unlabeled: 0, test: 6, shape: [64, 128, 128], seed: 0}}
    size: cpu                          # size preset added to every method preset ("res_unet+cpu")
    folds: 10                          # k-fold cross-validation of the labeled training cases
    run_folds: [0, 1]                  # which folds to run (default: all k)
    seeds: [0]                         # train.seed: fold split, labeled subset, initialisation
    fractions: [0.25, 1.0]             # labeled fractions of the fold's training cases ...
    counts: [5, 10]                    # ... and/or labeled case counts
    # a level may run fewer seeds: fractions: [0.25, {value: 1.0, seeds: [0]}]
    test: cv                           # cv | dataset | holdout | {images: DIR, labels: DIR}
    holdout: {count: 40, seed: 0}      # with test: holdout
    settings: {train: {iterations: 600}}   # config keys for every cell (as in a preset) ...
    overrides: ["train.val_every=150"]     # ... and section.key=value strings (applied after)
    checkpoint: auto                   # auto | best | last (auto: last for test: cv, else best)
    save_confidence: true              # write D's confidence maps of adversarial runs (for reports)
    nsd_tolerance_mm: 2.0
    compare: same_level                # Wilcoxon pairs: same_level | all | [[arm, arm], ...]
    report: {baseline: res_unet, method: res_unet_aux_adv_semi, level: 0.25, cases: 3, slices: 3}
    methods:
      - name: res_unet                 # folder-safe, unique
        preset: res_unet               # method preset (or "a+b"); the size preset is added
        settings: {...}                # optional, this method only
        overrides: [...]
        fractions: [0.6667]            # optional: this method's own levels instead of the matrix's
        seeds: [0]                     # optional: this method's own seeds instead of the matrix's
        unlabeled_dirs: [DIR, ...]     # extra unlabeled pools (semi-supervised presets)
        synthesize: {n: 12, preset: small, iterations_per_stage: 100, seed: 0}   # GAN volumes as pool

**Test cases of a cell** (``test``):

* ``cv`` (default): the fold's validation cases. Over all ``k`` folds every labeled case is tested
  exactly once per method, level and seed (the pelvic study's 10-fold protocol). The same cases
  drive checkpoint selection during training, so ``checkpoint: auto`` evaluates the *last*
  checkpoint: nothing is selected on the test cases.
* ``dataset``: the dataset's own labeled test cases (``imagesTs`` + ``labelsTs``); folds then only
  split the training cases into training and validation (``best`` checkpoint).
* ``holdout``: ``holdout.count`` labeled cases, chosen by a seeded hash order
  (:func:`advseg.data.splits.seeded_order`), are removed from training altogether. The cells train
  on a *view* of the dataset (a folder of symbolic links in the preprocessing cache,
  ``<cache>/views/``) whose ``imagesTs``/``labelsTs`` are the held-out cases and whose
  ``imagesUnlabeled`` is the source's unlabeled pool; a labeled test set the source already had is
  not used.
* ``{images: DIR, labels: DIR}``: any folder of images and labels (matched by case name).

**Folders**::

    MATRIX/matrix.json                       the cells, methods and settings (aggregation reads it)
    MATRIX/matrix.yaml                       copy of the experiment config
    MATRIX/shared/                           generated inputs: phantom data, synthesized pools
    MATRIX/cells/<method>/<level>/seed<S>_fold<K>/   an ordinary training run folder, plus
        predictions/ (D's maps in predictions/confidence/)  test_labels/ (links)  evaluation/
        cell.json                            the done-marker, written last (atomically)
    MATRIX/results/                          aggregated tables (see advseg.experiments.aggregate)

**Resuming**: a cell with ``cell.json`` is finished and skipped (its recorded config must equal
the current one, else an error names the folder); a cell folder with a checkpoint continues its
training (``train_run(resume=True)``) and then predicts and evaluates; a cell folder that never
saved a checkpoint is started again. Cells are independent, so ``--list-cells`` / ``--cell I``
spread a matrix over a batch system; shared inputs are prepared under a file lock by whichever
cell needs them first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advseg.config import Config, apply_overrides, load_config, load_preset, load_yaml_mapping
from advseg.data.dataset import load_dataset
from advseg.data.phantom import write_phantom_dataset
from advseg.data.splits import load_or_create_splits, seeded_order
from advseg.errors import InputError
from advseg.evaluation.evaluate import evaluate_folders
from advseg.experiments.results import (
    DONE_FILE,
    MATRIX_FILE,
    RESULT_FORMAT,
    export_cell_result,
    hardware_record,
    level_text,
    read_result,
    result_path,
)
from advseg.io.atomic import atomic_write_text
from advseg.io.digest import folder_digest
from advseg.io.guard import refuse_overlap
from advseg.io.lock import LOCK_NAME, check_unlocked

EXPERIMENT_DIR = Path(__file__).resolve().parents[1] / "configs" / "experiments"
TEST_MODES = ("cv", "dataset", "holdout")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NIFTI = (".nii.gz", ".nii")
_CHANNEL = re.compile(r"_(\d{4})$")
# Fields a `data: {phantom: {...}}` entry leaves out. Twice as many unlabeled as labeled cases: the
# semi-supervised setting these experiments are about (the demo, a supervised run, uses its own mix).
DEFAULT_PHANTOM: dict[str, Any] = {
    "labeled": 12, "unlabeled": 24, "test": 6, "shape": [64, 128, 128], "seed": 0,
}
# What train_run, prediction and evaluation put in a cell folder: a folder holding nothing else may
# be cleared when its run never reached a checkpoint.
_CELL_OUTPUTS = {
    "config.yaml", "dataset_info.json", "splits.json", "log.jsonl", "learning_curves.png", "figures",
    "checkpoint_best.pt", "checkpoint_last.pt", "predictions", "test_labels", "evaluation",
    DONE_FILE, LOCK_NAME,
}


# ---------------------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class Level:
    """How many labels a cell trains with: a fraction of the fold's training cases, or a count."""

    kind: str  # "fraction" | "count"
    value: float | int
    # the only seeds this level runs (None: every seed); not part of the level's identity
    seeds: tuple[int, ...] | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f"{self.value:g}" if self.kind == "fraction" else f"n{self.value}"

    @property
    def folder(self) -> str:
        return f"frac{self.value:g}" if self.kind == "fraction" else f"n{self.value}"

    @property
    def text(self) -> str:
        """For people: ``"25 %"`` or ``"4 cases"``."""
        return level_text(self.label)

    def overrides(self) -> list[str]:
        if self.kind == "fraction":
            return [f"train.labeled_fraction={self.value}", "train.labeled_count=null"]
        return [f"train.labeled_count={self.value}"]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "label": self.label}


@dataclass
class MethodSpec:
    name: str
    preset: str
    overrides: list[str] = field(default_factory=list)
    levels: list[Level] | None = None  # None: the matrix's levels
    seeds: list[int] | None = None  # None: the matrix's seeds
    unlabeled_dirs: list[Path] = field(default_factory=list)
    synthesize: dict[str, Any] | None = None


@dataclass
class MatrixConfig:
    """A parsed experiment config (see the module docstring for the YAML keys)."""

    name: str
    source: Path | None
    methods: list[MethodSpec]
    levels: list[Level]
    data: Path | None = None
    phantom: dict[str, Any] | None = None
    size: str | None = None
    folds: int = 5
    run_folds: list[int] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    test: str | dict[str, Path] = "cv"
    holdout: dict[str, int] | None = None
    overrides: list[str] = field(default_factory=list)
    checkpoint: str = "auto"
    save_confidence: bool = True
    nsd_tolerance_mm: float = 2.0
    compare: str | list[list[str]] = "same_level"
    report: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    text: str = ""  # the YAML as read

    def method(self, name: str) -> MethodSpec:
        for m in self.methods:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.methods)
        raise InputError(self.source, f"no method named '{name}' (known: {known})")

    def levels_of(self, method: MethodSpec) -> list[Level]:
        return method.levels if method.levels is not None else self.levels

    def seeds_of(self, method: MethodSpec, level: Level) -> list[int]:
        """The seeds a method runs at a level: the method's (default the matrix's), kept only where
        the level lists them too."""
        seeds = method.seeds if method.seeds is not None else self.seeds
        return [s for s in seeds if level.seeds is None or s in level.seeds]

    @property
    def folds_run(self) -> list[int]:
        return list(self.run_folds) if self.run_folds is not None else list(range(self.folds))


_TOP_KEYS = {
    "name", "data", "size", "folds", "run_folds", "seeds", "fractions", "counts", "test", "holdout",
    "settings", "overrides", "checkpoint", "save_confidence", "nsd_tolerance_mm", "compare", "report",
    "methods", "device",
}
_METHOD_KEYS = {
    "name", "preset", "settings", "overrides", "fractions", "counts", "seeds", "unlabeled_dirs", "synthesize",
}
_REPORT_KEYS = {"baseline", "method", "level", "cases", "slices"}
_SYNTH_KEYS = {"n", "preset", "iterations_per_stage", "seed"}
_PHANTOM_KEYS = {"labeled", "unlabeled", "test", "shape", "seed"}


def resolve_config_path(config: str | Path) -> Path:
    """A path to an experiment YAML, or the name of one shipped in ``advseg/configs/experiments``."""
    path = Path(config)
    if path.exists():
        return path
    packaged = EXPERIMENT_DIR / f"{config}.yaml"
    if not path.suffix and packaged.exists():
        return packaged
    known = ", ".join(sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml")))
    raise InputError(path, f"experiment config not found (packaged ones: {known})")


def load_matrix_config(config: str | Path, data: str | Path | None = None,
                       check_data: bool = True) -> MatrixConfig:
    """Read and check an experiment YAML (``data`` replaces its ``data:``). Raises :class:`InputError`
    naming the file and the key for every problem; nothing is written. ``check_data=False`` skips the
    dataset folder's check: the plan alone (which cells there are), e.g. to tabulate committed results
    on a machine without the data."""
    path = resolve_config_path(config)
    return parse_matrix_config(load_yaml_mapping(path), path, data=data, text=path.read_text(),
                               check_data=check_data)


def parse_matrix_config(
    raw: dict[str, Any], source: Path | None = None, data: str | Path | None = None, text: str = "",
    check_data: bool = True,
) -> MatrixConfig:
    """:func:`load_matrix_config` on an already-parsed mapping."""
    where = source

    def fail(problem: str) -> InputError:
        return InputError(where, problem)

    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {unknown} (known: {', '.join(sorted(_TOP_KEYS))})")
    name = raw.get("name") or (source.stem if source else "experiment")
    if not isinstance(name, str) or not _SAFE.match(name):
        raise fail(f"name must be a folder-safe word, got {name!r}")

    data_path, phantom = None, None
    if data is not None:
        data_path = Path(data)
    elif isinstance(raw.get("data"), dict):
        phantom = dict(raw["data"].get("phantom") or {})
        extra = sorted(set(raw["data"]) - {"phantom"}) + sorted(set(phantom) - _PHANTOM_KEYS)
        if extra or not raw["data"].get("phantom"):
            raise fail(f"data: expected a path or {{phantom: {{{', '.join(sorted(_PHANTOM_KEYS))}}}}}")
    elif isinstance(raw.get("data"), str):
        data_path = Path(raw["data"]).expanduser()
    else:
        raise fail("data: a dataset folder is needed (or data: {phantom: {...}}, or --data)")
    if check_data and data_path is not None and not (data_path / "dataset.json").is_file():
        raise InputError(data_path, "dataset folder not found (no dataset.json)")

    folds = _int(raw.get("folds", 5), "folds", where, minimum=1)
    run_folds = raw.get("run_folds")
    if run_folds is not None:
        run_folds = _int_list(run_folds, "run_folds", where, minimum=0)
        bad = [f for f in run_folds if f >= folds]
        if bad:
            raise fail(f"run_folds {bad} out of range for folds={folds}")
    seeds = _int_list(raw.get("seeds", [0]), "seeds", where, minimum=0)
    levels = _levels(raw, "", where) or [Level("fraction", 1.0)]

    test = raw.get("test", "cv")
    if isinstance(test, dict):
        if set(test) != {"images", "labels"}:
            raise fail("test: a folder pair must be {images: DIR, labels: DIR}")
        test = {k: Path(str(v)).expanduser() for k, v in test.items()}
        for k, p in test.items():
            if not p.is_dir():
                raise InputError(p, f"test {k} folder not found")
    elif test not in TEST_MODES:
        raise fail(f"test must be one of {', '.join(TEST_MODES)} or {{images: DIR, labels: DIR}}, "
                   f"got {test!r}")
    holdout = raw.get("holdout")
    if holdout is not None:
        if not isinstance(holdout, dict) or set(holdout) - {"count", "seed"} or "count" not in holdout:
            raise fail("holdout must be {count: N, seed: S}")
        holdout = {"count": _int(holdout["count"], "holdout.count", where, minimum=1),
                   "seed": _int(holdout.get("seed", 0), "holdout.seed", where, minimum=0)}
    if (test == "holdout") != (holdout is not None):
        raise fail("test: holdout and a holdout: {count: N} entry go together")

    size = raw.get("size")
    if size is not None and not isinstance(size, str):
        raise fail(f"size must be a size preset name (cpu, tiny, paper), got {size!r}")
    overrides = _settings(raw.get("settings"), "settings", where) + _str_list(raw.get("overrides", []),
                                                                             "overrides", where)
    checkpoint = raw.get("checkpoint", "auto")
    if checkpoint not in ("auto", "best", "last"):
        raise fail(f"checkpoint must be auto, best or last, got {checkpoint!r}")
    save_confidence = raw.get("save_confidence", True)
    if not isinstance(save_confidence, bool):
        raise fail("save_confidence must be true or false")
    nsd = raw.get("nsd_tolerance_mm", 2.0)
    if isinstance(nsd, bool) or not isinstance(nsd, int | float) or not math.isfinite(nsd) or nsd < 0:
        raise fail(f"nsd_tolerance_mm must be a number >= 0, got {nsd!r}")
    device = raw.get("device", "auto")
    if not isinstance(device, str):
        raise fail("device must be auto, cpu, cuda or cuda:N")

    methods_raw = raw.get("methods")
    if not isinstance(methods_raw, list) or not methods_raw:
        raise fail("methods: a non-empty list of {name, preset, ...} is needed")
    methods = [_method(m, i, where) for i, m in enumerate(methods_raw)]
    names = [m.name for m in methods]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise fail(f"method names must be unique, repeated: {dup}")
    if any(m.synthesize for m in methods) and test == "cv":
        raise fail("synthesize needs a fixed test split (test: dataset, holdout or a folder): in cross-"
                   "validation the GAN would learn from the test cases' images")

    compare = raw.get("compare", "same_level")
    if isinstance(compare, list):
        def is_pair(p: Any) -> bool:
            return isinstance(p, list) and len(p) == 2 and all(isinstance(a, str) for a in p)

        if not all(is_pair(p) for p in compare):
            raise fail("compare: a list of [arm, arm] pairs (arm = method or method@level)")
    elif compare not in ("same_level", "all"):
        raise fail(f"compare must be same_level, all or a list of pairs, got {compare!r}")
    report = raw.get("report") or {}
    if not isinstance(report, dict) or set(report) - _REPORT_KEYS:
        raise fail(f"report: a mapping with keys among {', '.join(sorted(_REPORT_KEYS))}")
    for key in ("baseline", "method"):
        if key in report and report[key] not in names:
            raise fail(f"report.{key}: no method named {report[key]!r}")

    cfg = MatrixConfig(
        name=name, source=source, methods=methods, levels=levels, data=data_path, phantom=phantom, size=size,
        folds=folds, run_folds=run_folds, seeds=seeds, test=test, holdout=holdout, overrides=overrides,
        checkpoint=checkpoint, save_confidence=save_confidence, nsd_tolerance_mm=float(nsd), compare=compare,
        report=report, device=device, text=text,
    )
    for m in methods:
        if not any(cfg.seeds_of(m, lv) for lv in cfg.levels_of(m)):
            raise fail(f"method {m.name!r} runs no cell: its seeds and its levels' seeds have none in common")
    for m in methods:  # every preset and override must load now, not in cell 17
        cell_config(cfg, m, cfg.levels_of(m)[0], cfg.folds_run[0], seeds[0])
    return cfg


def _int(value: Any, key: str, where: Path | None, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(where, f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _int_list(value: Any, key: str, where: Path | None, minimum: int = 0) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InputError(where, f"{key} must be a non-empty list of integers, got {value!r}")
    out = [_int(v, key, where, minimum) for v in value]
    if len(set(out)) != len(out):
        raise InputError(where, f"{key} lists a value twice: {out}")
    return out


def _str_list(value: Any, key: str, where: Path | None) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(where, f"{key} must be a list of strings, got {value!r}")
    return list(value)


def _settings(value: Any, key: str, where: Path | None) -> list[str]:
    """A preset-like mapping ``{section: {key: value}}`` as ``section.key=value`` override strings."""
    if value is None:
        return []
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InputError(where, f"{key} must map config sections to {{key: value}} mappings")
    return [f"{section}.{k}={json.dumps(v)}" for section, items in value.items() for k, v in items.items()]


def _levels(raw: dict[str, Any], where_key: str, where: Path | None) -> list[Level]:
    """``fractions`` and ``counts``: each entry a number or ``{value: number, seeds: [S, ...]}``."""
    def entry(v: Any, key: str) -> tuple[Any, tuple[int, ...] | None]:
        if not isinstance(v, dict):
            return v, None
        if set(v) - {"value", "seeds"} or "value" not in v:
            raise InputError(where, f"{key}: an entry must be a number or {{value: V, seeds: [S, ...]}}, "
                                    f"got {v!r}")
        seeds = v.get("seeds")
        return v["value"], None if seeds is None else tuple(_int_list(seeds, f"{key} seeds", where))

    levels: list[Level] = []
    for item in raw.get("fractions") or []:
        v, seeds = entry(item, f"{where_key}fractions")
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
            raise InputError(where, f"{where_key}fractions: each must be in (0, 1], got {v!r}")
        levels.append(Level("fraction", float(v), seeds))
    for item in raw.get("counts") or []:
        v, seeds = entry(item, f"{where_key}counts")
        levels.append(Level("count", _int(v, f"{where_key}counts", where, minimum=1), seeds))
    if len({lv.label for lv in levels}) != len(levels):
        raise InputError(where, f"{where_key}fractions/counts list a value twice")
    return levels


def _method(raw: Any, i: int, where: Path | None) -> MethodSpec:
    if isinstance(raw, str):
        raw = {"name": raw, "preset": raw}
    if not isinstance(raw, dict):
        raise InputError(where, f"methods[{i}] must be a mapping {{name, preset, ...}}")
    unknown = sorted(set(raw) - _METHOD_KEYS)
    if unknown:
        raise InputError(where, f"methods[{i}]: unknown key(s) {unknown} "
                                f"(known: {', '.join(sorted(_METHOD_KEYS))})")
    preset = raw.get("preset") or raw.get("name")
    name = raw.get("name") or preset
    if not isinstance(name, str) or not _SAFE.match(name):
        raise InputError(where, f"methods[{i}].name must be a folder-safe word, got {name!r}")
    if not isinstance(preset, str):
        raise InputError(where, f"methods[{i}].preset must be a preset name, got {preset!r}")
    levels = _levels(raw, f"methods[{i}].", where) or None
    dirs = [Path(p).expanduser()
            for p in _str_list(raw.get("unlabeled_dirs", []), f"methods[{i}].unlabeled_dirs", where)]
    for d in dirs:
        if not d.is_dir():
            raise InputError(d, f"unlabeled folder of method '{name}' not found")
    synth = raw.get("synthesize")
    if synth is not None:
        if not isinstance(synth, dict) or set(synth) - _SYNTH_KEYS or "n" not in synth:
            raise InputError(where, f"methods[{i}].synthesize must be "
                                    "{n, preset, iterations_per_stage, seed}")
        _int(synth["n"], f"methods[{i}].synthesize.n", where, minimum=1)
    overrides = _settings(raw.get("settings"), f"methods[{i}].settings", where)
    overrides += _str_list(raw.get("overrides", []), f"methods[{i}].overrides", where)
    seeds = None if raw.get("seeds") is None else _int_list(raw["seeds"], f"methods[{i}].seeds", where)
    return MethodSpec(name=name, preset=preset, overrides=overrides, levels=levels, seeds=seeds,
                      unlabeled_dirs=dirs, synthesize=synth)


# ------------------------------------------------------------------------------------------- the cells


@dataclass(frozen=True)
class Cell:
    """One training run of the matrix; ``index`` is its number in ``--list-cells``."""

    index: int
    method: str
    level: Level
    seed: int
    fold: int

    @property
    def folder(self) -> Path:
        return Path("cells") / self.method / self.level.folder / f"seed{self.seed}_fold{self.fold}"

    @property
    def title(self) -> str:
        return f"{self.method}, labeled {self.level.text}, seed {self.seed}, fold {self.fold}"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "method": self.method, "level": self.level.to_dict(), "seed": self.seed,
                "fold": self.fold, "folder": self.folder.as_posix()}


def expand_cells(cfg: MatrixConfig) -> list[Cell]:
    """Every cell, in the fixed order method -> level -> seed -> fold (``--cell I`` indexes it)."""
    cells = []
    for m in cfg.methods:
        for level in cfg.levels_of(m):
            for seed in cfg.seeds_of(m, level):
                for fold in cfg.folds_run:
                    cells.append(Cell(len(cells), m.name, level, seed, fold))
    return cells


def planned_cells(cfg: MatrixConfig) -> list[tuple[str, str, int, int]]:
    """Every cell of the plan as ``(method, level label, seed, fold)``: what a folder of committed cell
    results is counted against (:attr:`advseg.experiments.aggregate.CellResult.key`)."""
    return [(c.method, c.level.label, c.seed, c.fold) for c in expand_cells(cfg)]


def cell_config(cfg: MatrixConfig, method: MethodSpec, level: Level, fold: int, seed: int) -> Config:
    """The training config of one cell: method preset (+ size), the matrix's and the method's
    settings, then the cell's fold, seed and labeled level."""
    preset = method.preset if not cfg.size else f"{method.preset}+{cfg.size}"
    try:
        base = load_preset(preset, validate=False)  # validated with the overrides
        return apply_overrides(base, [
            *cfg.overrides, *method.overrides, f"train.folds={cfg.folds}", f"train.fold={fold}",
            f"train.seed={seed}", *level.overrides(),
        ])
    except InputError as exc:
        raise InputError(cfg.source, f"method '{method.name}': {exc.one_line()}") from None


@dataclass
class TestCase:
    name: str
    images: list[Path]
    label: Path

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "images": [str(p.resolve()) for p in self.images],
                "label": str(self.label.resolve())}


# ------------------------------------------------------------------------------------------ the runner


class ExperimentMatrix:
    """Runs the cells of a :class:`MatrixConfig` into the matrix folder ``out``."""

    def __init__(self, config: MatrixConfig, out: str | Path, device: str | None = None) -> None:
        self.config = config
        self.out = Path(out)
        self.device = device or config.device
        self.cells = expand_cells(config)
        self._data: Path | None = None

    # ---------------------------------------------------------------- folders and state
    def cell_folder(self, cell: Cell) -> Path:
        return self.out / cell.folder

    def requested_config(self, cell: Cell) -> Config:
        return cell_config(self.config, self.config.method(cell.method), cell.level, cell.fold, cell.seed)

    def done_record(self, cell: Cell, folder: Path | None = None) -> dict[str, Any] | None:
        """The cell's ``cell.json`` if it is finished with the current config; None if not finished.

        Raises :class:`InputError` when it was finished with another config.
        """
        folder = folder or self.cell_folder(cell)
        marker = folder / DONE_FILE
        if not marker.is_file():
            return None
        record = json.loads(marker.read_text())
        diff = _config_diff(record.get("requested_config", {}), self.requested_config(cell).to_dict())
        if diff:
            raise InputError(folder, f"finished with another config ({'; '.join(diff[:3])}); delete this "
                                     "cell folder to run it again, or use another --out")
        return record

    def committed_result(self, cell: Cell, results: str | Path) -> dict[str, Any] | None:
        """The cell's committed result file in ``results`` if there is one with the current config;
        None if there is none.

        This is what lets a matrix be computed over several days and machines: the run folders are
        scratch, the small result files are committed, and a cell whose file is there is not trained
        again. Keys the file's config lacks are not compared (options added since, at their defaults,
        which keep the earlier behaviour), nor a shorter early-stop patience when the run never stopped
        early (it trained every iteration, as it would have with the longer one). Raises
        :class:`InputError` when the file was computed with another config, or is not a cell result.
        """
        path = result_path(results, cell.to_dict())
        if not path.is_file():
            return None
        doc = read_result(path)
        if doc is None or "config" not in doc:
            raise InputError(path, f"not a cell result ({RESULT_FORMAT}); move it out of --results")
        requested = self.requested_config(cell).to_dict()
        diff = _config_diff(doc["config"], requested, missing_equal=True)
        if diff and _never_stopped_early(doc, requested):
            diff = [d for d in diff if not d.startswith("train.early_stop_patience:")]
        if diff:
            raise InputError(path, f"computed with another config ({'; '.join(diff[:3])}); delete this "
                                   "file to run the cell again, or use another --results")
        return doc

    def check_out(self) -> None:
        """The matrix folder must be new, empty, or a matrix folder already (never a stranger's), and
        may not be, contain or lie inside the config file, the dataset or a test folder."""
        c = self.config
        test_dirs = list(c.test.values()) if isinstance(c.test, dict) else []
        refuse_overlap([self.out], [c.source, c.data, *test_dirs])
        if self.out.exists() and not self.out.is_dir():
            raise InputError(self.out, "exists and is not a folder")
        if self.out.is_dir() and any(self.out.iterdir()) and not (self.out / MATRIX_FILE).exists():
            raise InputError(self.out, "folder exists, is not empty and is not an experiment matrix folder; "
                                       "choose another --out")

    def write_manifest(self) -> None:
        """``matrix.json`` (cells, methods, settings) and ``matrix.yaml`` (the config as given)."""
        self.check_out()
        self.out.mkdir(parents=True, exist_ok=True)
        c = self.config
        manifest = {
            "format": "advseg-matrix-1",
            "name": c.name,
            "config": str(c.source.resolve()) if c.source else None,
            "data": str(c.data.resolve()) if c.data else {"phantom": c.phantom},
            "test": c.test if isinstance(c.test, str) else {k: str(v) for k, v in c.test.items()},
            "holdout": c.holdout,
            "folds": c.folds,
            "run_folds": c.folds_run,
            "seeds": c.seeds,
            "methods": [m.name for m in c.methods],
            "levels": {m.name: [lv.to_dict() for lv in c.levels_of(m)] for m in c.methods},
            "compare": c.compare,
            "report": c.report,
            "nsd_tolerance_mm": c.nsd_tolerance_mm,
            "cells": [cell.to_dict() for cell in self.cells],
        }
        atomic_write_text(self.out / MATRIX_FILE, json.dumps(manifest, indent=1) + "\n")
        if c.text:
            atomic_write_text(self.out / "matrix.yaml", c.text)

    # ---------------------------------------------------------------- shared inputs
    @property
    def shared(self) -> Path:
        return self.out / "shared"

    def data_dir(self, progress: bool = True) -> Path:
        """The dataset folder the cells train on (generated phantom or holdout view if asked)."""
        if self._data is not None:
            return self._data
        c = self.config
        data = c.data
        if c.phantom is not None:
            data = self._phantom()
        assert data is not None
        if c.holdout is not None:
            cache = _cache_root(self.requested_config(self.cells[0]))
            data = make_holdout_view(data, cache / "views", c.holdout["count"], c.holdout["seed"])
        self._data = data
        return data

    def _phantom(self) -> Path:
        params = {**DEFAULT_PHANTOM, **(self.config.phantom or {})}
        key = _digest(params)
        target = self.shared / f"phantom_{key}"
        with self._lock():
            if not (target / "dataset.json").exists():  # written whole, then renamed into place
                write_phantom_dataset(target, labeled=params["labeled"], unlabeled=params["unlabeled"],
                                      test=params["test"], shape=tuple(params["shape"]), seed=params["seed"])
        return target

    def unlabeled_dirs(self, method: MethodSpec, data: Path, progress: bool = True) -> list[Path]:
        dirs = list(method.unlabeled_dirs)
        if method.synthesize:
            # imports torch: here, not at the top, so that --list-cells and config checks start fast
            from advseg.synthesis.api import synthesize_unlabeled

            s = {"preset": "small", "iterations_per_stage": None, "seed": 0, **method.synthesize}
            target = self.shared / f"synthetic_{_digest({**s, 'data': str(data.resolve())})}"
            done = target.with_name(target.name + ".done")
            with self._lock():
                if not done.exists():
                    synthesize_unlabeled(data, target, n=s["n"], seed=s["seed"], preset=s["preset"],
                                         iterations_per_stage=s["iterations_per_stage"], progress=progress)
                    atomic_write_text(done, json.dumps(s) + "\n")
            dirs.append(target)
        return dirs

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive lock on ``shared/.lock`` (several ``--cell`` jobs may prepare inputs at once)."""
        self.shared.mkdir(parents=True, exist_ok=True)
        with open(self.shared / ".lock", "w") as fh:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX)
            except ImportError:  # not on POSIX: no lock (run the first cell alone)
                pass
            yield

    # ---------------------------------------------------------------- test cases
    def test_cases(self, cfg: Config, index: Any) -> list[TestCase]:
        """The labeled cases a cell is evaluated on (see the module docstring, ``test``)."""
        mode = self.config.test
        if mode == "cv":
            # imports torch: here, not at the top, so that --list-cells and config checks start fast
            from advseg.training.api import splits_path

            names = sorted(c.name for c in index.training)
            path = splits_path(_cache_root(cfg), index, cfg)  # the split file training uses
            splits = load_or_create_splits(path, names, cfg.train.folds, cfg.train.data_seed)
            val = splits[cfg.train.fold]["val"]
            return [TestCase(n, index.case(n).images, index.case(n).label) for n in val]
        if mode in ("dataset", "holdout"):
            cases = [TestCase(c.name, c.images, c.label) for c in index.test if c.label is not None]
            if not cases:
                raise InputError(index.root, "test: dataset needs labeled test cases (imagesTs/ + labelsTs/)")
            return cases
        return folder_test_cases(mode["images"], mode["labels"])

    # ---------------------------------------------------------------- one cell
    def _cell_setup(self, cell: Cell, folder: Path, progress: bool) -> dict[str, Any]:
        """Everything before a cell's training: ``{"record": ...}`` for a finished cell, else its config,
        data, test cases, labels, unlabeled folders and whether to resume (may write: phantom data,
        synthetic images, clearing a cell that never saved)."""
        # imports torch: here, not at the top, so that --list-cells and config checks start fast
        from advseg.training.api import finalize_config

        record = self.done_record(cell, folder)
        if record is not None:
            return {"record": record}
        method = self.config.method(cell.method)
        cfg = self.requested_config(cell)
        data = self.data_dir(progress)
        index = load_dataset(data)
        tests = self.test_cases(cfg, index)
        resume = _prepare_cell_folder(folder, finalize_config(cfg, index))
        unlabeled = self.unlabeled_dirs(method, data, progress)
        return {"cfg": cfg, "data": data, "tests": tests, "labels": index.labels, "resume": resume,
                "unlabeled": unlabeled}

    def run_cell(self, cell: Cell, folder: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
        """Train (or resume) one cell, predict its test cases, evaluate, write ``cell.json``.

        Under ``torchrun`` every rank calls it: rank 0 alone prepares the cell (and writes), every rank
        trains (:func:`advseg.training.api.train_run` with DDP), rank 0 alone predicts, evaluates and
        writes ``cell.json``; the other ranks return ``{}``."""
        # imports torch: here, not at the top, so that --list-cells and config checks start fast
        from advseg.training import distributed
        from advseg.training.api import train_run

        folder = Path(folder) if folder is not None else self.cell_folder(cell)
        if distributed.world_size() > 1:
            setup = distributed.run_on_main_first(lambda: self._cell_setup(cell, folder, progress),
                                                  lambda shared: shared, share=lambda r: r)
        else:
            setup = self._cell_setup(cell, folder, progress)
        if "record" in setup:
            return setup["record"] if distributed.is_main() else {}
        cfg, data, tests, unlabeled = setup["cfg"], setup["data"], setup["tests"], setup["unlabeled"]

        t0 = time.perf_counter()
        result = train_run(cfg, data, folder, unlabeled=unlabeled, resume=setup["resume"],
                           progress=progress and distributed.is_main(), device=self.device)
        t_train = time.perf_counter() - t0
        # a cell resumed after a crash: its calls before the resume trained this long (to the checkpoint)
        t_before = float(result.get("seconds", 0.0)) - float(result.get("seconds_this_call", 0.0))
        if not distributed.is_main():
            return {}
        checkpoint = self.config.checkpoint
        if checkpoint == "auto":
            checkpoint = "last" if self.config.test == "cv" else "best"
        summary = predict_and_evaluate(folder, tests, setup["labels"], checkpoint=checkpoint,
                                       save_confidence=self.config.save_confidence,
                                       nsd_tolerance_mm=self.config.nsd_tolerance_mm, device=self.device)
        record = {
            "format": "advseg-cell-1",
            "cell": cell.to_dict(),
            "requested_config": cfg.to_dict(),
            "data": str(Path(data).resolve()),
            "unlabeled_dirs": [str(Path(d).resolve()) for d in unlabeled],
            # which volumes the cell saw: the phantom data and a synthetic pool are regenerated on each
            # machine, and the digests show whether cells computed on different days saw the same ones
            "inputs": {"data": folder_digest(data), "unlabeled": [folder_digest(d) for d in unlabeled]},
            "test_mode": self.config.test if isinstance(self.config.test, str) else "folder",
            "test_cases": [t.to_dict() for t in tests],
            "checkpoint": checkpoint,
            "train": {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                      for k, v in result.items()},
            "seconds": {"train": t_before + t_train, "evaluate": time.perf_counter() - t0 - t_train,
                        "total": t_before + time.perf_counter() - t0},
            "summary": summary,
            "hardware": hardware_record(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(folder / DONE_FILE, json.dumps(record, indent=1) + "\n")  # last: the cell is done
        return record

    # ---------------------------------------------------------------- the matrix
    def run(self, indices: list[int] | None = None, progress: bool = True,
            results: str | Path | None = None) -> list[dict[str, Any]]:
        """Run the given cells (default all), skipping finished ones; returns their records.

        ``results``: also write each finished cell (also those finished before) as a committable JSON
        file into this folder (:func:`advseg.experiments.results.export_cell_result`), and skip the
        cells whose file is there already (:meth:`committed_result`; their record is that file's), so
        that on a new machine only the missing cells train.

        Under ``torchrun`` (``torchrun --nproc_per_node=N -m advseg experiment ...``) each cell trains on
        all N ranks with DDP; rank 0 alone writes (manifest, cells, results) and the other ranks return
        ``[]``."""
        # imports torch: here, not at the top, so that --list-cells and config checks start fast
        from advseg.training import distributed

        distributed.init_from_env()
        if distributed.world_size() > 1:
            return self._run_distributed(indices, progress, results)

        cells, done, committed = self._plan(indices, results)
        durations = [r["seconds"]["total"] for r in done.values()]
        records: dict[int, dict[str, Any]] = dict(done)
        if results is not None:
            for i in done:
                export_cell_result(self.cell_folder(self.cells[i]), results)
        records.update(committed)
        durations += [float(r.get("seconds", {}).get("total") or 0.0) for r in committed.values()]
        pending = [c for c in cells if c.index not in records]
        display = MatrixProgress(len(cells), len(cells) - len(pending), durations, enabled=progress)
        for cell in pending:
            display.show(next_cell=cell)
            t0 = time.perf_counter()
            records[cell.index] = self.run_cell(cell, progress=progress)
            display.finished(time.perf_counter() - t0)
            if results is not None:
                export_cell_result(self.cell_folder(cell), results)
        display.show(next_cell=None)
        return [records[c.index] for c in cells]

    def _plan(self, indices: list[int] | None, results: str | Path | None
              ) -> tuple[list[Cell], dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
        """The cells to run (``indices``, default all), the records of those finished in the out
        folder, and the committed results in ``results`` of the others (cell index -> record). Every
        finished cell and committed result is checked before anything is written; then the manifest."""
        for i in indices or []:
            if not 0 <= i < len(self.cells):
                raise InputError(self.config.source,
                                 f"--cell {i}: the matrix has cells 0..{len(self.cells) - 1}")
        cells = self.cells if indices is None else [self.cells[i] for i in indices]
        self.check_out()
        done = {c.index: r for c in cells if (r := self.done_record(c)) is not None}
        committed = {}
        if results is not None:
            committed = {c.index: r for c in cells
                         if c.index not in done and (r := self.committed_result(c, results)) is not None}
        self.write_manifest()
        return cells, done, committed

    def _run_distributed(self, indices: list[int] | None, progress: bool,
                         results: str | Path | None) -> list[dict[str, Any]]:
        """:meth:`run` under torchrun: rank 0 checks and lists the pending cells, every rank trains them."""
        # imports torch: here, not at the top, so that --list-cells and config checks start fast
        from advseg.training import distributed

        committed: dict[int, dict[str, Any]] = {}  # rank 0's: the cells whose result is committed

        def plan() -> list[int]:
            # a finished cell is trained by no rank (run_cell returns its record, then it is exported)
            cells, _, found = self._plan(indices, results)
            committed.update(found)
            return [c.index for c in cells if c.index not in committed]

        todo = distributed.run_on_main_first(plan, lambda shared: shared, share=lambda r: r)
        records: dict[int, dict[str, Any]] = dict(committed)
        for i in todo:
            record = self.run_cell(self.cells[i], progress=progress)
            if distributed.is_main():
                records[i] = record
                if results is not None:
                    export_cell_result(self.cell_folder(self.cells[i]), results)
        order = list(indices) if indices is not None else [c.index for c in self.cells]
        return [records[i] for i in order if i in records] if distributed.is_main() else []

    def status(self) -> tuple[int, int]:
        """(finished cells, all cells)."""
        return sum((self.cell_folder(c) / DONE_FILE).is_file() for c in self.cells), len(self.cells)

    def list_commands(self, config_arg: str, data: Path | None = None,
                      results: Path | None = None) -> list[str]:
        """One shell command per cell, ``advseg experiment CONFIG --out OUT [--results R] --cell I``,
        each followed by a shell comment naming the cell (method, labeled level, seed, fold), so that
        a job array's lines can be picked by what they train."""
        cfg_path = Path(config_arg)
        arg = str(cfg_path.resolve()) if cfg_path.exists() else config_arg
        base = ["advseg", "experiment", arg, "--out", str(self.out.resolve())]
        if data is not None:
            base += ["--data", str(Path(data).resolve())]
        elif self.config.data is not None:
            base += ["--data", str(self.config.data.resolve())]
        if results is not None:
            base += ["--results", str(Path(results).resolve())]
        return [f"{shlex.join([*base, '--cell', str(c.index)])}  # {c.title}" for c in self.cells]


class MatrixProgress:
    """The matrix's progress between cells: a bar of cells done, elapsed time and time left (the mean
    duration of the cells finished so far, in this session or recorded in their ``cell.json``).

    Printed as a line before each cell rather than a live display, so each cell's own training
    progress bar can run underneath it."""

    def __init__(self, total: int, done: int, durations: list[float], enabled: bool = True) -> None:
        self.total, self.done, self.durations = total, done, list(durations)
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def finished(self, seconds: float) -> None:
        self.done += 1
        self.durations.append(seconds)

    def eta(self) -> float | None:
        if not self.durations:
            return None
        return float(np.mean(self.durations)) * (self.total - self.done)

    def show(self, next_cell: Cell | None) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        eta = self.eta()
        left = "unknown" if eta is None else _hms(eta)
        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            "[bold]matrix[/bold]", ProgressBar(total=max(self.total, 1), completed=self.done, width=30),
            f"{self.done}/{self.total} cells done", f"elapsed {_hms(time.perf_counter() - self.t0)}",
            f"left ~{left}" if next_cell is not None else "",
        )
        console = Console(stderr=True)
        console.print(grid)
        if next_cell is not None:
            console.print(f"[dim]cell {next_cell.index}: {next_cell.title}[/dim]")


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# ------------------------------------------------------------------------------------ cell mechanics


def _prepare_cell_folder(folder: Path, expected: Config) -> bool:
    """Whether to resume the run in ``folder``; clears a run that never saved a checkpoint.

    Raises :class:`InputError` if the folder holds something else, or a run with another config.
    """
    if not folder.exists() or not any(folder.iterdir()):
        return False
    check_unlocked(folder)  # never clear or judge a cell another job is training right now
    entries = {p.name for p in folder.iterdir()}
    if not (folder / "config.yaml").is_file() or entries - _CELL_OUTPUTS:
        raise InputError(folder, "exists, is not empty and is not a run folder of this experiment")
    if not (folder / "checkpoint_last.pt").is_file():
        shutil.rmtree(folder)  # stopped before its first checkpoint: nothing worth keeping
        return False
    diff = _config_diff(load_config(folder / "config.yaml").to_dict(), expected.to_dict())
    if diff:
        raise InputError(folder, f"holds a run with another config ({'; '.join(diff[:3])}); delete it to "
                                 "start this cell again, or use another --out")
    return True


def _never_stopped_early(doc: dict[str, Any], requested: dict[str, Any]) -> bool:
    """Whether a committed result's run reached its last iteration, so that a longer patience (or none)
    would have trained it the same way: patience decides only when to stop, nothing else in a run."""
    old = doc["config"].get("train", {}).get("early_stop_patience")
    new = requested.get("train", {}).get("early_stop_patience")
    iterations = requested.get("train", {}).get("iterations")
    ran = doc.get("train", {}).get("iterations")
    longer = new is None or (old is not None and new >= old)
    return longer and iterations is not None and ran == iterations


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "",
                 missing_equal: bool = False) -> list[str]:
    """``key: old -> new`` for each differing key; ``missing_equal``: a key ``old`` lacks differs not."""
    out = []
    for key in sorted(set(old) | set(new)):
        if missing_equal and key not in old:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "kwargs":
            out += _config_diff(a, b, f"{prefix}{key}.", missing_equal)
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def predict_and_evaluate(
    run_dir: Path, tests: list[TestCase], labels: dict[int, str], checkpoint: str = "best",
    save_confidence: bool = True, nsd_tolerance_mm: float = 2.0, device: str = "auto",
) -> dict[str, Any]:
    """Segment ``tests`` with the run's model into ``run_dir/predictions`` (D's confidence into
    ``predictions/confidence`` if the run has a D and ``save_confidence``), link their labels into
    ``run_dir/test_labels`` and evaluate into ``run_dir/evaluation``; returns the summary."""
    # imports torch: here, not at the top, so that --list-cells and config checks start fast
    from advseg.inference.api import load_model, predict_cases

    model = load_model(run_dir, checkpoint=checkpoint, device=device)
    pred_dir, label_dir = run_dir / "predictions", run_dir / "test_labels"
    for d in (pred_dir, label_dir):
        shutil.rmtree(d, ignore_errors=True)  # a resumed cell redoes these whole
        d.mkdir(parents=True)
    predict_cases(
        model,
        {case.name: case.images for case in tests},
        {case.name: pred_dir / f"{case.name}.nii.gz" for case in tests},
        save_confidence=save_confidence and model.discriminator is not None,
        progress=False,
    )
    for case in tests:
        _link(case.label, label_dir / f"{case.name}{_ending(case.label)}")
    return evaluate_folders(pred_dir, label_dir, run_dir / "evaluation", labels=labels,
                            nsd_tolerance_mm=nsd_tolerance_mm, progress=False)


def folder_test_cases(images: Path, labels: Path) -> list[TestCase]:
    """Images (``case.nii.gz`` or ``case_XXXX.nii.gz`` per channel) paired with ``labels/case.nii.gz``."""
    by_case: dict[str, list[Path]] = {}
    for p in sorted(images.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(_NIFTI):
            by_case.setdefault(_CHANNEL.sub("", _stem(p)), []).append(p)
    label_files = {_stem(p): p for p in sorted(labels.iterdir())
                   if p.is_file() and not p.name.startswith(".") and p.name.endswith(_NIFTI)}
    if not by_case:
        raise InputError(images, "no NIfTI images (.nii.gz / .nii) in this folder")
    missing = [n for n in by_case if n not in label_files]
    if missing:
        raise InputError(labels, f"no label for test case(s) {missing[:5]}")
    return [TestCase(n, files, label_files[n]) for n, files in by_case.items()]


def make_holdout_view(source: str | Path, views_root: Path, count: int, seed: int) -> Path:
    """A view of ``source`` with ``count`` labeled cases moved to a labeled test set (symlinks).

    The held-out cases are the first ``count`` of :func:`advseg.data.splits.seeded_order` of the
    labeled case names with ``seed``; ``imagesUnlabeled/`` gets the source's unlabeled pool. The view
    is named ``<name>_holdout<count>s<seed>_<hash>`` (its own name: splits are cached per name) and
    is built once, in a temporary folder renamed into place.
    """
    source = Path(source)
    index = load_dataset(source)
    names = sorted(c.name for c in index.training)
    if count >= len(names):
        raise InputError(source, f"holdout count {count} leaves no training case "
                                 f"({len(names)} labeled cases)")
    held = set(seeded_order(names, seed)[:count])
    key = _digest({"root": str(source.resolve()), "count": count, "seed": seed, "cases": names,
                   "unlabeled": sorted(c.name for c in index.unlabeled)})
    name = f"{index.name}_holdout{count}s{seed}_{key}"
    target = views_root / name
    if (target / "dataset.json").exists():
        return target
    views_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=views_root, prefix=f".{name}.tmp-"))
    try:
        multi = len(index.channel_names) > 1
        for case in index.training:
            img_dir, lbl_dir = ("imagesTs", "labelsTs") if case.name in held else ("imagesTr", "labelsTr")
            _link_case(case.images, tmp / img_dir, case.name, multi)
            _link(case.label, tmp / lbl_dir / f"{case.name}{_ending(case.label)}")
        for case in index.unlabeled:
            _link_case(case.images, tmp / "imagesUnlabeled", case.name, multi)
        meta = {
            "name": name,
            "description": f"{index.name} with {count} labeled cases held out as a test set (seed {seed}); "
                           f"files are links into {source.resolve()}",
            "labels": {str(k): v for k, v in index.labels.items()},
            "modality": {str(i): ch for i, ch in enumerate(index.channel_names)},
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, target)
        except OSError:  # built by another process meanwhile
            if not (target / "dataset.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _link_case(images: list[Path], folder: Path, name: str, multi: bool) -> None:
    for c, img in enumerate(images):
        _link(img, folder / (f"{name}_{c:04d}{_ending(img)}" if multi else f"{name}{_ending(img)}"))


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.symlink(Path(src).resolve(), dst)
    except OSError:  # a file system without symbolic links
        shutil.copy2(src, dst)


def _ending(path: Path) -> str:
    return next((e for e in _NIFTI if path.name.lower().endswith(e)), path.suffix)


def _stem(path: Path) -> str:
    return path.name[: -len(_ending(path))]


def _cache_root(cfg: Config) -> Path:
    # imports torch: here, not at the top, so that --list-cells and config checks start fast
    from advseg.data.preprocess import default_cache_root

    return default_cache_root(cfg.data)


def _digest(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()
