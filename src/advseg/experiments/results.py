"""Finished cells as small JSON files that can be committed: a results table built over many days.

A matrix cell's run folder holds weights and predictions (hundreds of MB, scratch). What a table
needs of it is small: which arm, fold and seed; the per-case metrics; the train/evaluate seconds and
iterations; the last validation record (with the D diagnostics of adversarial runs). One cell is one
file, ``<results>/<method>/<level>/seed<S>_fold<F>.json`` (``format: advseg-cell-result-1``), so a
matrix computed on several machines merges by copying files, and a finished cell survives the machine.

    export_cell_result(cell_folder, "benchmarks/results/hippocampus")    # after a cell finished
    advseg experiment hippocampus --aggregate --results benchmarks/results/hippocampus

:func:`advseg.experiments.aggregate.find_results` reads such a folder as a collection of kind
``results``: the same tables and paired tests as a matrix folder, without the run folders.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from advseg.errors import InputError
from advseg.io.atomic import atomic_write_text

# the files of a matrix folder (advseg.experiments.matrix): its manifest, and the marker a cell folder
# gets when the cell finished
MATRIX_FILE = "matrix.json"
DONE_FILE = "cell.json"

RESULT_FORMAT = "advseg-cell-result-1"


def level_text(level: str) -> str:
    """A level label for people: ``"0.25"`` -> ``"25 %"``, ``"n12"`` -> ``"12 cases"``."""
    if level.startswith("n"):
        return f"{level[1:]} cases"
    return f"{float(level) * 100:.4g} %"


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _per_case(folder: Path) -> list[dict[str, Any]]:
    path = folder / "evaluation" / "per_case.csv"
    if not path.is_file():
        raise InputError(path, "missing: the cell was not evaluated")
    rows = []
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            row: dict[str, Any] = {"case": r.pop("case"), "organ": r.pop("organ")}
            for k, v in r.items():
                try:
                    row[k] = None if v in ("", None) else round(float(v), 6)
                except ValueError:
                    row[k] = v
            rows.append(row)
    return rows


def validation_records(
    folder: Path, best_iteration: Any = None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The run's last validation record and the one at ``best_iteration`` (the checkpoint evaluated)."""
    log = folder / "log.jsonl"
    if not log.is_file():
        return None, None
    last = best = None
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("kind") == "val":
            last = rec
            if best_iteration is not None and rec.get("iteration") == best_iteration:
                best = rec
    return last, best


def cell_result(folder: str | Path, command: str | None = None) -> dict[str, Any]:
    """The committable record of a finished cell folder (its ``cell.json`` plus per-case metrics)."""
    folder = Path(folder)
    marker = folder / DONE_FILE
    if not marker.is_file():
        raise InputError(folder, "not a finished experiment cell (no cell.json)")
    record = json.loads(marker.read_text())
    cfg = record.get("requested_config", {})
    last, best = validation_records(folder, record.get("train", {}).get("best_iteration"))
    return _finite({
        "format": RESULT_FORMAT,
        "cell": {k: v for k, v in record["cell"].items() if k not in ("index", "folder")},
        "command": command,
        "config": cfg,
        "train": record.get("train", {}),
        "seconds": record.get("seconds", {}),
        "checkpoint": record.get("checkpoint"),
        "test_cases": [t["name"] for t in record.get("test_cases", [])],
        "inputs": record.get("inputs"),
        "cases": _case_counts(folder),
        "per_case": _per_case(folder),
        "summary": record.get("summary", {}),
        "last_validation": last,
        "best_validation": best,
        # where the cell trained (its record says so since 2026-12-04), else where it is exported
        "hardware": record.get("hardware") or hardware_record(),
        "finished": record.get("finished"),
    })


def _case_counts(folder: Path) -> dict[str, int]:
    """How many cases the cell trained on (labeled, withheld labels, validation), from splits.json."""
    path = folder / "splits.json"
    if not path.is_file():
        return {}
    splits = json.loads(path.read_text())
    return {k: len(splits.get(k) or []) for k in ("labeled", "unlabeled_withheld", "val", "unlabeled_extra")}


def hardware_record() -> dict[str, Any]:
    """What the train seconds were measured on: this process's CPU model, cores and torch threads."""
    return {"machine": platform.machine(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": _torch_threads()}


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`):
    train seconds are only comparable between cells that ran on the same kind of CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        return None


#: where :func:`result_path` puts a cell's file, as a glob below the results folder
RESULT_GLOB = "*/*/seed*_fold*.json"


def result_path(results: str | Path, cell: dict[str, Any]) -> Path:
    """``<results>/<method>/<level label>/seed<S>_fold<F>.json``."""
    name = f"seed{cell['seed']}_fold{cell['fold']}.json"
    return Path(results) / cell["method"] / cell["level"]["label"] / name


def export_cell_result(folder: str | Path, results: str | Path, command: str | None = None) -> Path:
    """Write :func:`cell_result` of ``folder`` into the results folder; returns the file."""
    doc = cell_result(folder, command)
    path = result_path(results, doc["cell"])
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return path


def read_result(path: str | Path) -> dict[str, Any] | None:
    """One cell-result document (with ``_path``); None for a JSON file of another format. Raises on a
    file that is not JSON, or a cell result without its ``cell`` or ``per_case``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(path, f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != RESULT_FORMAT:
        return None
    for key in ("cell", "per_case"):
        if key not in doc:
            raise InputError(path, f"cell result without '{key}'")
    doc["_path"] = str(path)
    return doc


def read_results(results: str | Path) -> list[dict[str, Any]]:
    """Every cell-result document under ``results`` (sorted by path). Raises on a malformed file."""
    docs = (read_result(path) for path in sorted(Path(results).glob(RESULT_GLOB)))
    return [doc for doc in docs if doc is not None]


def is_results_folder(path: str | Path) -> bool:
    """Whether ``path`` holds cell-result files in their layout (not a matrix or run folder). Only the
    files where :func:`result_path` writes are opened, and only until the first one is found."""
    root = Path(path)
    if not root.is_dir() or (root / MATRIX_FILE).is_file() or (root / "config.yaml").is_file():
        return False
    for p in root.glob(RESULT_GLOB):
        try:
            if json.loads(p.read_text()).get("format") == RESULT_FORMAT:
                return True
        except (ValueError, AttributeError, OSError):
            continue
    return False
