"""``advseg evaluate``: metrics of a folder of predicted label maps against a folder of labels.

Files are matched by case name (:func:`advseg.io.strip_suffix`: ``case_001.nii.gz`` -> ``case_001``);
every label file needs a prediction (else :class:`InputError`), predictions without a label are
ignored with a note. Every input is read and checked (same shape and affine, integer label values
that the class list knows) before anything is written; the voxel spacing of each case comes from
its label file's affine. Class names come from, in order: ``labels``; ``dataset_json``; a
``dataset.json`` in the label folder's parent; else ``class_<value>`` for each non-zero value that
occurs in any file (with a class list, a value it does not name is an error).

Outputs, written atomically into ``out_dir``:

* ``per_case.csv``: one row per case x organ (``case, label, organ, dsc, ..., nsd``; a tidy table
  that pandas/R group directly); an empty cell is an undefined value (see below).
* ``summary.json``: ``{organ: {metric: {"mean": .., "std": .., "n": ..}}}``; ``null`` = undefined.
* ``summary.md``: a Markdown table, rows organs, columns metrics (units in the header), cells
  ``mean ± std``, plus the definitions.

Units: AHD, ASHD, HD95 in mm; RVD in % (signed, + = over-segmentation); the rest fractions in [0, 1].
A metric is undefined (NaN) for a case when exactly one of prediction and truth of that organ is
empty (distances; sensitivity or precision; RVD when the truth is empty); such cases are left out of
the mean and std (sample std, ``ddof=1``) and ``n`` counts the cases that were used.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from advseg.errors import InputError, InputErrors
from advseg.io import io_for, read_volume, strip_suffix
from advseg.io.atomic import atomic_path
from advseg.io.guard import check_output_dir, record_outputs, refuse_overlap
from advseg.metrics.accumulate import METRIC_UNITS, METRICS, MetricAccumulator, compute_case_metrics

log = logging.getLogger(__name__)

Summary = dict[str, dict[str, dict[str, Any]]]

_TITLES = {
    "dsc": "DSC", "iou": "IoU", "sensitivity": "Sensitivity", "specificity": "Specificity",
    "precision": "Precision", "rvd": "RVD", "ahd": "AHD", "ashd": "ASHD", "hd95": "HD95", "nsd": "NSD",
}
_DECIMALS = {"": 3, "%": 1, "mm": 2}
_DEFINITIONS = {
    "dsc": "Dice similarity coefficient 2|P∩T| / (|P|+|T|).",
    "iou": "Intersection over union |P∩T| / |P∪T|.",
    "sensitivity": "TP / (TP+FN).",
    "specificity": "TN / (TN+FP), over the whole image.",
    "precision": "TP / (TP+FP).",
    "rvd": "Relative volume difference (V_pred − V_true) / V_true × 100, signed (+ = too large).",
    "ahd": "Average Hausdorff distance over all voxels: max of the two directed mean distances.",
    "ashd": "Average surface distance: mean of the two directed mean distances between the "
            "surfaces (mask minus its 6-connected erosion).",
    "hd95": "Larger of the two directed 95th percentiles of the surface distances.",
    "nsd": "Normalized surface Dice: fraction of both surfaces' area (DeepMind surfels) within the "
           "tolerance of the other surface.",
}
_AFFINE_ATOL_MM = 1e-3  # float32 header storage rounds affines by ~1e-5 mm; real mismatches are larger


# ---------------------------------------------------------------------------------------------- labels


def read_class_names(dataset_json: str | Path) -> dict[int, str]:
    """Class index -> name from a ``dataset.json``'s ``"labels"``, MSD (``{"0": "background"}``) or
    nnU-Net v2 (``{"background": 0}``) form. Raises :class:`InputError` naming the file."""
    path = Path(dataset_json)
    if not path.is_file():
        raise InputError(path, "dataset.json not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read JSON ({exc})") from None
    raw = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, 'no "labels" mapping')
    if "ignore" in raw:
        raise InputError(path, 'an "ignore" label is not supported by advseg evaluate')
    names: dict[int, str] = {}
    msd = all(isinstance(k, str) and k.strip().isdigit() for k in raw)
    if msd and all(isinstance(v, str) for v in raw.values()):
        pairs = [(int(k), v) for k, v in raw.items()]  # MSD
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        pairs = [(v, k) for k, v in raw.items()]  # nnU-Net v2
    elif any(isinstance(v, list) for v in raw.values()):
        raise InputError(path, "region-based labels (lists of indices) are not supported by advseg evaluate")
    else:
        raise InputError(path, '"labels" must map "index": "name" (MSD) or "name": index (nnU-Net v2)')
    for index, name in pairs:
        if index < 0 or index in names:
            raise InputError(path, f'"labels": invalid or repeated class index {index}')
        names[index] = name
    fg = [n for i, n in names.items() if i != 0]
    if len(set(fg)) != len(fg):
        raise InputError(path, f'"labels": class names must be unique, got {fg}')
    return dict(sorted(names.items()))


def _class_names(
    labels: Mapping[int, str] | None, dataset_json: Path | None, label_dir: Path
) -> tuple[dict[int, str] | None, str]:
    """Foreground classes and where they came from; ``None`` = name them ``class_i`` later."""
    if labels is not None:
        names, source = {int(k): str(v) for k, v in labels.items()}, "the labels argument"
    elif dataset_json is not None:
        names, source = read_class_names(dataset_json), str(dataset_json)
    elif (label_dir.parent / "dataset.json").is_file():
        found = label_dir.parent / "dataset.json"
        names, source = read_class_names(found), str(found)
    else:
        return None, "label values (no dataset.json found)"
    fg = {i: n for i, n in sorted(names.items()) if i != 0}
    if not fg:
        raise InputError(None, f"no foreground classes in {source}")
    if len(set(fg.values())) != len(fg):
        raise InputError(None, f"class names must be unique, got {list(fg.values())} (from {source})")
    return fg, source


# ------------------------------------------------------------------------------------------ file lists


def _is_image(path: Path) -> bool:
    if not path.is_file() or path.name.startswith("."):
        return False
    try:
        io_for(path)
    except InputError:
        return False
    return True


def _list_images(folder: Path) -> tuple[dict[str, Path], list[InputError]]:
    files: dict[str, Path] = {}
    errors: list[InputError] = []
    for path in sorted(folder.iterdir()):
        if not _is_image(path):
            continue
        case = strip_suffix(path)
        if case in files:
            errors.append(InputError(path, f"two files for case {case!r} (also {files[case].name})"))
        else:
            files[case] = path
    return files, errors


def _suffix(path: Path) -> str:
    return path.name[len(strip_suffix(path)):]


def _raise(errors: list[InputError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputErrors(errors)


# ----------------------------------------------------------------------------------------- validation


def _label_values(array: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The array as non-negative integers and the label values present in it."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.view(np.uint8)
    elif not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise InputError(path, "label map has non-integer values")
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise InputError(path, f"label map has negative values (min {a.min()})")
    if not a.size:
        return a, np.zeros(0, np.int64)
    # bincount is O(voxels) where unique sorts; fall back to unique for huge label values
    present = np.flatnonzero(np.bincount(a.ravel())) if a.max() <= 65535 else np.unique(a)
    return a, present


def _check_pair(pred_path: Path, truth_path: Path, pred, truth) -> None:
    if pred.shape != truth.shape:
        raise InputError(
            pred_path, f"shape {pred.shape} differs from the label {truth_path.name} {truth.shape}"
        )
    diff = float(np.abs(np.asarray(pred.affine) - np.asarray(truth.affine)).max())
    if not diff <= _AFFINE_ATOL_MM:
        raise InputError(
            pred_path, f"affine differs from the label {truth_path.name} (by up to {diff:.4g} mm): "
            "resample the prediction to the label's geometry"
        )
    if not all(s > 0 for s in truth.spacing):
        raise InputError(truth_path, f"degenerate affine (voxel size {truth.spacing} mm)")


# ------------------------------------------------------------------------------------------- evaluate


def evaluate_folders(
    pred_dir: str | Path,
    label_dir: str | Path,
    out_dir: str | Path,
    dataset_json: str | Path | None = None,
    nsd_tolerance_mm: float = 2.0,
    labels: Mapping[int, str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Summary:
    """Evaluate every label file in ``label_dir`` against the same-named file in ``pred_dir``.

    Args:
        pred_dir: predicted label maps (``<case>.nii.gz``).
        label_dir: ground-truth label maps with the same case names.
        out_dir: folder for ``per_case.csv``, ``summary.md``, ``summary.json`` (created).
        dataset_json: a ``dataset.json`` naming the classes (MSD or nnU-Net v2 ``"labels"``).
        nsd_tolerance_mm: tolerance of the normalized surface Dice, mm.
        labels: class index -> name; overrides ``dataset_json``. Background (0) is never scored; every
            other value in the files must be named here (or in the dataset.json).
        progress: show a progress bar on stderr.
        overwrite: write into an ``out_dir`` that holds files other than earlier evaluations
            (:func:`advseg.io.guard.check_output_dir`). ``out_dir`` may never be, contain or lie
            inside an input (checked first).

    Returns:
        ``{organ: {metric: {"mean": float, "std": float, "n": int}}}``, exactly the content of
        ``summary.json``: ``None`` where undefined (``mean`` when ``n == 0``, ``std`` when ``n < 2``).

    Raises:
        InputError: a missing folder or prediction, an unreadable file, a geometry mismatch, label
            values the class list does not know; all are found before anything is written.
    """
    pred_dir, label_dir, out_dir = Path(pred_dir), Path(label_dir), Path(out_dir)
    refuse_overlap([out_dir], [pred_dir, label_dir, dataset_json])
    for folder in (label_dir, pred_dir):
        if not folder.is_dir():
            raise InputError(folder, "folder not found")
    check_output_dir(out_dir, "evaluate", overwrite)
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise InputError(None, f"NSD tolerance must be a number >= 0 mm, got {nsd_tolerance_mm}")
    dataset_json = None if dataset_json is None else Path(dataset_json)
    classes, class_source = _class_names(labels, dataset_json, label_dir)

    truths, errors = _list_images(label_dir)
    preds, pred_errors = _list_images(pred_dir)
    errors += pred_errors
    if not truths and not errors:
        raise InputError(label_dir, "no label files (.nii.gz / .nii) in this folder")
    errors += [
        InputError(pred_dir / f"{case}{_suffix(path)}", f"missing prediction for the label {path}")
        for case, path in truths.items() if case not in preds
    ]
    _raise(errors)
    notes: list[str] = []
    extra = sorted(set(preds) - set(truths))
    if extra:
        shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        notes.append(f"{len(extra)} prediction(s) without a label ignored: {shown}")
        log.warning("note: %s", notes[-1])

    per_case: dict[str, dict[int, dict[str, float]]] = {}
    found: set[int] = set()
    for case in _track(list(truths), "evaluating", progress):
        try:
            truth = read_volume(truths[case])
            pred = read_volume(preds[case])
            _check_pair(preds[case], truths[case], pred, truth)
            t_arr, t_vals = _label_values(truth.array, truths[case])
            p_arr, p_vals = _label_values(pred.array, preds[case])
            if classes is not None:
                for path, vals in ((truths[case], t_vals), (preds[case], p_vals)):
                    unknown = [int(v) for v in vals if v != 0 and int(v) not in classes]
                    if unknown:
                        raise InputError(path, f"label values {unknown} are not among the classes {classes} "
                                               f"(from {class_source})")
        except InputError as exc:
            errors.append(exc)
            continue
        if errors:  # keep validating the rest, but do not spend time on metrics that will not be written
            continue
        present = {int(v) for v in np.concatenate([t_vals, p_vals]) if v != 0}
        found |= present
        case_classes = classes if classes is not None else {i: f"class_{i}" for i in sorted(present)}
        by_name = compute_case_metrics(p_arr, t_arr, case_classes, truth.spacing, nsd_tolerance_mm)
        per_case[case] = {i: by_name[n] for i, n in case_classes.items()}
    _raise(errors)

    if classes is None:
        # only the values that occur: a 0/255 mask gives one class, not 255
        classes = {i: f"class_{i}" for i in sorted(found)}
        if not classes:
            raise InputError(label_dir, "no foreground in any label or prediction, and no class names given")
        shown = ", ".join(list(classes.values())[:10]) + (", ..." if len(classes) > 10 else "")
        notes.append(f"no class names given: classes named after the label values ({shown})")
    both_empty = compute_case_metrics(
        np.zeros((1, 1, 1), np.uint8), np.zeros((1, 1, 1), np.uint8), {1: "x"}, (1, 1, 1), nsd_tolerance_mm
    )["x"]
    acc = MetricAccumulator(classes)
    for case, values in per_case.items():
        # a class absent from both files of a case (only possible without a class list) is a perfect score
        acc.add(case, {name: values.get(i, both_empty) for i, name in classes.items()})
    summary = _json_safe(acc.summary())

    files = {
        out_dir / "per_case.csv": _per_case_csv(acc, classes),
        out_dir / "summary.json": json.dumps(summary, indent=2, allow_nan=False) + "\n",
        out_dir / "summary.md": _summary_markdown(
            summary, n_cases=len(acc), pred_dir=pred_dir, label_dir=label_dir, class_source=class_source,
            nsd_tolerance_mm=nsd_tolerance_mm, notes=notes,
        ),
    }
    record_outputs(out_dir, "evaluate", files)
    _write_atomic(files)
    return summary


def _track(items: list[str], description: str, enabled: bool):
    if not enabled:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=description, console=Console(stderr=True), transient=True)


# -------------------------------------------------------------------------------------------- writing


def _write_atomic(files: dict[Path, str]) -> None:
    """Write every file to a temporary name first, then rename them all into place, in the given
    order (none is renamed if any write fails)."""
    with ExitStack() as stack:  # contexts exit last-in first-out: enter in reverse order
        for path, text in reversed(list(files.items())):
            tmp = stack.enter_context(atomic_path(path, suffix=path.suffix))
            tmp.write_text(text, encoding="utf-8", newline="")


def _json_safe(summary: Summary) -> Summary:
    return {
        organ: {m: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in stats.items()}
                for m, stats in metrics.items()}
        for organ, metrics in summary.items()
    }


def _per_case_csv(acc: MetricAccumulator, classes: Mapping[int, str]) -> str:
    index_of = {name: i for i, name in classes.items()}
    metrics = acc.metrics
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "label", "organ", *metrics])
    for row in acc.per_case_rows():
        values = [row[m] for m in metrics]
        writer.writerow([row["case"], index_of[str(row["organ"])], row["organ"],
                         *("" if math.isnan(v) else f"{v:.10g}" for v in values)])
    return buf.getvalue()


def _title(metric: str, nsd_tolerance_mm: float | None) -> str:
    title = _TITLES.get(metric, metric)
    if metric == "nsd" and nsd_tolerance_mm is not None:
        return f"{title}@{nsd_tolerance_mm:g}mm"
    unit = METRIC_UNITS.get(metric, "")
    return f"{title} ({unit})" if unit else title


def _undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _cell(metric: str, stats: Mapping[str, Any], n_cases: int, sep: str = " ± ") -> str:
    digits = _DECIMALS[METRIC_UNITS.get(metric, "")]
    mean, std, n = stats["mean"], stats["std"], int(stats["n"])
    if n == 0 or _undefined(mean):
        text = "n/a"
    elif _undefined(std):
        text = f"{mean:.{digits}f}"
    else:
        text = f"{mean:.{digits}f}{sep}{std:.{digits}f}"
    return f"{text} (n={n})" if n < n_cases else text


def _summary_markdown(
    summary: Summary, n_cases: int, pred_dir: Path, label_dir: Path, class_source: str,
    nsd_tolerance_mm: float, notes: Sequence[str],
) -> str:
    metrics = [m for m in METRICS if any(m in v for v in summary.values())]
    lines = [
        "# Segmentation metrics",
        "",
        f"- predictions: `{pred_dir}`",
        f"- labels: `{label_dir}` ({n_cases} cases; class names from {class_source})",
        f"- voxel spacing from each label file; NSD tolerance {nsd_tolerance_mm:g} mm",
        "",
        "Cells: mean ± sample standard deviation (ddof=1) over cases. `(n=k)`: only k cases had a "
        "defined value; in the others exactly one of prediction and label is empty for that organ "
        "(see per_case.csv, empty cells).",
        "",
        "| Organ | " + " | ".join(_title(m, nsd_tolerance_mm) for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for organ, values in summary.items():
        cells = [_cell(m, values[m], n_cases) if m in values else "" for m in metrics]
        lines.append(f"| {organ} | " + " | ".join(cells) + " |")
    lines += ["", "Definitions (P = prediction, T = label; distances between voxel centres in mm):", ""]
    lines += [f"- **{_TITLES[m]}**: {_DEFINITIONS[m]}" for m in metrics if m in _DEFINITIONS]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def format_summary(
    summary: Summary,
    metrics: Sequence[str] | None = ("dsc", "nsd", "hd95", "ashd", "ahd", "rvd"),
    nsd_tolerance_mm: float | None = None,
) -> str:
    """A compact plain-text table for the terminal: rows organs, columns ``metrics`` (``None`` = all
    present), cells ``mean±std``, ``(n=k)`` where fewer cases than the most in the table were used.

    ``summary`` is what :func:`evaluate_folders` returns (or :meth:`MetricAccumulator.summary`);
    undefined values may be ``None`` or NaN."""
    present = [m for m in METRICS if any(m in v for v in summary.values())]
    present += [m for v in summary.values() for m in v if m not in present]
    shown = present if metrics is None else [m for m in metrics if m in present]
    n_max = max((int(s["n"]) for v in summary.values() for s in v.values()), default=0)
    header = ["organ", *(_title(m, nsd_tolerance_mm) for m in shown)]
    rows = [[organ, *(_cell(m, v[m], n_max, sep="±") if m in v else "" for m in shown)]
            for organ, v in summary.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))])
        for r in [header, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
