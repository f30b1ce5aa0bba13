"""``advseg report``: one self-contained HTML page for a matrix folder, a folder of runs, or one run.

The page opens offline: styles are inline, every figure is a PNG embedded as base64
(``<img src="data:image/png;base64,...">``), nothing is fetched. It holds:

* the result tables of :mod:`advseg.experiments.aggregate` (per-organ mean ± std, best bold,
  Wilcoxon p-values), also written to ``results/`` beside it;
* learning curves from each arm's ``log.jsonl`` (its first finished cell), and the validation mean
  DSC of every arm;
* D diagnostics of every adversarial arm (its first cell's ``log.jsonl``, last validation; see
  :mod:`advseg.training.diagnostics`): a table with D's AUCs beside S's max-softmax AUC and what the
  threshold T_semi keeps, a reliability figure (accuracy of S's label per bin of confidence) and the
  histogram of the confidences on the unlabeled pool;
* overlay figures like Fig. 4 of the pelvic CT study: per case and axial slice, the image, the
  ground truth, the baseline's prediction, the method's prediction and a contour overlay (truth
  solid, baseline dotted, method dashed); with D's confidence map as a sixth panel when the method's
  predictions were written with confidence (``predict_path(..., save_confidence=True)`` or a
  matrix with ``save_confidence: true``).

Baseline and method: the ``report:`` entry of the experiment config (``baseline``, ``method``,
``level``, ``cases``, ``slices``), else the first and the last method, at the first labeled level
both have, on the first fold/seed both finished. A single run folder shows its own predictions
without a baseline. Slices are taken at evenly spaced quantiles of the ground truth's axial extent.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from advseg.errors import InputError
from advseg.experiments.aggregate import (
    POOLING_NOTE,
    Aggregate,
    CellResult,
    Collection,
    PlannedCell,
    Table,
    aggregate,
    find_results,
    tables,
    write_aggregate,
)
from advseg.experiments.figures import plot_metric_vs_labels, plot_paired_differences
from advseg.io import read_volume
from advseg.io.atomic import atomic_write_text
from advseg.training.log import TrainingLog

CT_WINDOW = (-200.0, 300.0)  # soft-tissue window (HU) for CT slices; MR uses percentiles
MR_PERCENTILES = (0.5, 99.5)

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-top:1.5em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .6em}th{background:#f3f3f3}
td.r{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.note{color:#555;font-size:.88em;max-width:60em}
code{background:#f5f5f5;padding:0 .2em}
"""


_SIGNATURE = "Written by advseg report"


def _is_report(path: Path) -> bool:
    """Whether ``path`` is a report this module wrote (the only file ``write_report`` replaces)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            return _SIGNATURE.encode() in f.read()
    except OSError:
        return False


def write_report(path: str | Path, out: str | Path | None = None,
                 planned: Sequence[PlannedCell] | None = None) -> Path:
    """Write ``report.html`` for ``path`` (default into ``path``) and return its path.

    ``planned``: every cell of the experiment's plan (for a folder of committed cell results, which
    does not know it): the overview counts the finished cells against it and the notes list the
    missing ones, as ``advseg experiment --aggregate --results`` does.

    Raises :class:`InputError` if ``path`` is not a matrix folder, a run folder or a folder of runs.
    """
    collection = find_results(path)
    out = Path(out) if out is not None else collection.root / "report.html"
    if out.exists() and out.is_dir():
        raise InputError(out, "is a folder; give the HTML file to write")
    if out.is_file() and not _is_report(out):
        raise InputError(out, "exists and is not an advseg report; choose another file name")
    agg = None
    try:
        agg = aggregate(collection, planned=planned)
        parts = [f"<h1>{_e(collection.name)}</h1>", _overview(collection, agg, planned is not None)]
    except InputError as exc:
        parts = [f"<h1>{_e(collection.name)}</h1>", _overview(collection),
                 f"<p class='note'>No result tables: {_e(exc.problem)}.</p>"]
    if agg is not None:
        drawn: dict[str, Path] = {}  # the figures write_aggregate has drawn already
        if collection.kind == "matrix":
            drawn = write_aggregate(agg, collection.root / "results")
        parts += ["<h2>Results</h2>", f"<p class='note'>{_e(POOLING_NOTE)}</p>"]
        parts += [f"<p class='note'>{_e(n)}</p>" for n in agg.notes]
        for t in tables(agg):
            parts.append(f"<h3>{_e(t.title)}</h3>{html_table(t)}")
        parts.append(_labels_figure(agg, drawn.get("dsc_vs_labels.png")))
        parts.append(_difference_figure(agg, drawn.get("dsc_difference.png")))
    parts.append(_learning_curves(collection))
    parts.append(_d_diagnostics(collection))
    parts.append(_overlays(collection, agg))
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>advseg report: {_e(collection.name)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(p for p in parts if p)
            + f"<p class='note'>{_SIGNATURE} on {time.strftime('%Y-%m-%d %H:%M')}.</p>"
            + "</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out


def _labels_figure(agg: Any, drawn: Path | None = None) -> str:
    """The tables' DSC against labeled cases per method (where the arms span two levels or more):
    the PNG ``drawn`` already, else drawn here."""
    return _figure("DSC against labeled cases", drawn,
                   lambda path: plot_metric_vs_labels(agg, path, "dsc", total_cases=agg.training_cases))


def _difference_figure(agg: Any, drawn: Path | None = None) -> str:
    """Each method's paired DSC difference from the baseline at its level, with case-bootstrap
    intervals (where some method has a baseline cell at its level): ``drawn`` already, else here."""
    return _figure(f"DSC difference from {agg.baseline} at the same level (95 % case-bootstrap interval)",
                   drawn, lambda path: plot_paired_differences(agg, path, "dsc"))


def _figure(title: str, drawn: Path | None, draw: Callable[[Path], Path | None]) -> str:
    """A titled figure: the PNG ``drawn`` already, else ``draw(path)`` into a temporary file; ""
    where there is nothing to draw."""
    with tempfile.TemporaryDirectory() as tmp:
        png = drawn or draw(Path(tmp) / "figure.png")
        if png is None:
            return ""
        return f"<h3>{_e(title)}</h3>" + png_tag(png.read_bytes(), title)


def _e(text: Any) -> str:
    return html.escape(str(text))


def html_table(table: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = []
        for (text, bold), align in zip(row, table.align, strict=True):
            content = f"<strong>{_e(text)}</strong>" if bold else _e(text)
            cells.append(f"<td class='{align}'>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_tag(png: bytes, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _overview(c: Collection, agg: Aggregate | None = None, planned: bool = False) -> str:
    """``agg``: its cell counts (against the plan, where ``planned``) replace the collection's own."""
    what = {"matrix": "experiment matrix", "runs": "folder of training runs", "run": "training run",
            "results": "folder of committed cell results"}[c.kind]
    if agg is not None:
        done = f"{agg.finished_cells} of {agg.total_cells}" + (" planned" if planned else "")
    else:
        done = f"{len(c.cells)} of {c.total_cells}"
    items = [f"<li>{what}: <code>{_e(c.root.resolve())}</code></li>",
             f"<li>finished cells: {done}</li>"]
    if c.arms:
        items.append(f"<li>arms (method @ labeled level): {_e(', '.join(c.arms))}</li>")
    return "<ul>" + "".join(items) + "</ul>"


# --------------------------------------------------------------------------------- learning curves


def _figure_png(fig: Any, dpi: int = 80) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _read_log(run_dir: Path) -> list[dict[str, Any]]:
    return TrainingLog(run_dir / "log.jsonl").rows  # [] when the run has no log yet


def _runs_by_arm(c: Collection) -> dict[str, list[Path]]:
    runs: dict[str, list[Path]] = {}
    for cell in c.cells:
        runs.setdefault(cell.arm, []).append(cell.run_dir)
    if not runs and c.kind == "run":
        runs = {c.name: [c.root]}
    return runs


def _learning_curves(c: Collection) -> str:
    runs = _runs_by_arm(c)
    parts = []
    val_png = _validation_curves(runs)
    if val_png:
        parts.append(png_tag(val_png, "validation mean DSC per arm"))
    with tempfile.TemporaryDirectory() as tmp:
        for arm, dirs in runs.items():
            log_path = dirs[0] / "log.jsonl"
            if not log_path.is_file():
                continue
            png = Path(tmp) / "curves.png"
            TrainingLog(log_path).plot(png)  # the run's own learning-curve figure, from log.jsonl
            parts.append(f"<h3>{_e(arm)} <span class='note'>({_e(dirs[0].name)})</span></h3>"
                         + png_tag(png.read_bytes(), f"learning curves {arm}"))
    if not parts:
        return ""
    return "<h2>Learning curves</h2>" + "".join(parts)


def _validation_curves(runs: dict[str, list[Path]]) -> bytes | None:
    """Validation mean DSC against the iteration, averaged over each arm's cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for arm, dirs in runs.items():
        by_it: dict[int, list[float]] = {}
        for d in dirs:
            for r in _read_log(d):
                if r.get("kind") == "val" and r.get("dsc_mean") is not None:
                    by_it.setdefault(int(r["iteration"]), []).append(float(r["dsc_mean"]))
        if by_it:
            its = sorted(by_it)
            series[arm] = (its, [float(np.mean(by_it[i])) for i in its])
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for arm, (its, vals) in series.items():
        ax.plot(its, vals, marker="o", ms=3, lw=1.2, label=arm)
    ax.set(xlabel="iteration", ylabel="validation mean DSC", ylim=(0, 1),
           title="validation mean foreground DSC (mean over the arm's cells)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _figure_png(fig)


# ------------------------------------------------------------------------------------ D diagnostics

#: (column header, log key, format) of the D diagnostics table
DIAGNOSTIC_COLUMNS = [
    ("iteration", "iteration", "d"),
    ("T_semi", "t_semi", ".3f"),
    ("AUC D real vs fake (S wrong)", "d_auc_real_fake", ".3f"),
    ("AUC D conf. right vs wrong", "conf_auc_correct", ".3f"),
    ("AUC max-softmax right vs wrong", "softmax_auc_correct", ".3f"),
    ("AUC D x softmax right vs wrong", "product_auc_correct", ".3f"),
    ("region accuracy", "region_accuracy", ".3f"),
    ("D > T: pass fraction", "d_pass_fraction", ".3f"),
    ("D > T: accuracy", "d_pass_accuracy", ".3f"),
    ("softmax > T: pass fraction", "softmax_pass_fraction", ".3f"),
    ("softmax > T: accuracy", "softmax_pass_accuracy", ".3f"),
    ("D: pass fraction at target accuracy", "d_pass_fraction_calibrated", ".3f"),
    ("softmax: pass fraction at target accuracy", "softmax_pass_fraction_calibrated", ".3f"),
    ("D x softmax: pass fraction at target accuracy", "product_pass_fraction_calibrated", ".3f"),
]

DIAGNOSTICS_NOTE = (
    "Validation cases fed as if unlabeled, last validation of the arm's first run. Region: voxels where "
    "the truth or S's prediction is foreground, dilated by 3 voxels. AUC 0.5 is chance; D earns its place "
    "in L_semi only where its AUC, or that of its product with S's max-softmax (mask_source: product), "
    "beats the max-softmax's own. 'D > T' / 'softmax > T': the voxels whose "
    "confidence passes the run's threshold T_semi and S's accuracy on them (region accuracy: on all of "
    "the region). 'at target accuracy': the share passing the lowest threshold whose passing voxels reach "
    "adversarial.t_semi_target_accuracy (empty: never reached)."
)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return format(int(value), "d") if spec == "d" else format(float(value), spec)


def _last_diagnostics(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The last validation record with D diagnostics of a run, and its mask source."""
    rows = [r for r in _read_log(run_dir) if r.get("kind") == "val" and "softmax_auc_correct" in r]
    source = "d"
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        import yaml

        try:
            adv = (yaml.safe_load(cfg_path.read_text()) or {}).get("adversarial", {})
            source = str(adv.get("mask_source", "d"))
        except (yaml.YAMLError, AttributeError):
            pass
    return (rows[-1] if rows else None), source


def _d_diagnostics(c: Collection) -> str:
    records = {}
    for arm, dirs in _runs_by_arm(c).items():
        rec, source = _last_diagnostics(dirs[0])
        if rec is not None:
            records[arm] = (rec, source, dirs[0])
    if not records:
        return ""
    header = ["arm", "mask", *(h for h, _, _ in DIAGNOSTIC_COLUMNS)]
    rows = [[(arm, False), (source, False),
             *((_fmt(rec.get(k), spec), False) for _, k, spec in DIAGNOSTIC_COLUMNS)]
            for arm, (rec, source, _) in records.items()]
    table = Table("D diagnostics", header, rows, ["l", "l"] + ["r"] * len(DIAGNOSTIC_COLUMNS))
    parts = ["<h2>D diagnostics</h2>", f"<p class='note'>{_e(DIAGNOSTICS_NOTE)}</p>", html_table(table)]
    for arm, (rec, _, run_dir) in records.items():
        png = diagnostics_figure(rec, f"{arm} ({run_dir.name}), iteration {rec.get('iteration')}")
        parts.append(f"<h3>{_e(arm)}: reliability and confidence histogram</h3>"
                     + png_tag(png, f"D diagnostics {arm}"))
    return "".join(parts)


def diagnostics_figure(rec: dict[str, Any], title: str = "") -> bytes:
    """PNG: reliability (accuracy of S's label per bin of D's and of the softmax confidence, validation
    region; bar heights the voxel shares) and the histogram of the confidences on the unlabeled pool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_h) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"d": "tab:red", "softmax": "tab:blue"}
    names = {"d": "D confidence", "softmax": "max-softmax"}
    for src in ("d", "softmax"):
        counts, hits = rec.get(f"{src}_reliability_counts"), rec.get(f"{src}_reliability_correct")
        if not counts or not sum(counts):
            continue
        n = len(counts)
        centers = (np.arange(n) + 0.5) / n
        cnt = np.asarray(counts, dtype=np.float64)
        acc = np.where(cnt > 0, np.asarray(hits, dtype=np.float64) / np.maximum(cnt, 1), np.nan)
        ax_r.plot(centers, acc, marker="o", color=colors[src], label=f"{names[src]}: accuracy")
        ax_r.bar(centers, cnt / cnt.sum(), width=1 / n, alpha=0.2, color=colors[src],
                 label=f"{names[src]}: share of voxels")
    ax_r.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
    if rec.get("t_semi") is not None:
        ax_r.axvline(float(rec["t_semi"]), color="k", lw=0.8, ls="--", label="T_semi")
    ax_r.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy of S / share",
             title="reliability (validation region)")
    ax_r.legend(fontsize=6)
    drawn = False
    for src in ("d", "softmax"):
        for suffix, style, where in (("", "-", "all voxels"), ("_roi", "--", "prediction's region")):
            hist = rec.get(f"pool_{src}_hist{suffix}")
            if not hist or not sum(hist):
                continue
            edges = np.linspace(0, 1, len(hist) + 1)
            ax_h.stairs(np.asarray(hist, dtype=np.float64) / sum(hist), edges, color=colors[src], lw=1.3,
                        ls=style, label=f"{names[src]}, {where}")
            drawn = True
    if rec.get("t_semi") is not None:
        ax_h.axvline(float(rec["t_semi"]), color="k", lw=0.8, ls="--", label="T_semi")
    ax_h.set(xlim=(0, 1), xlabel="confidence", ylabel="share of voxels",
             title=f"confidence on the unlabeled pool ({rec.get('pool_cases', 0)} volumes)")
    if not drawn:
        ax_h.text(0.5, 0.5, "no unlabeled pool", ha="center", va="center", fontsize=8)
    ax_h.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _figure_png(fig)


# ------------------------------------------------------------------------------------ overlay figures


def _pick_cells(c: Collection) -> tuple[CellResult | None, CellResult | None, str]:
    """(baseline cell, method cell, explanation) for the overlay figures."""
    cells = [x for x in c.cells if x.cases and x.predictions is not None]
    if not cells:
        return None, None, "no predictions with known test cases"
    if c.kind == "run":
        return None, cells[0], ""
    methods = list(dict.fromkeys(x.method for x in cells))
    base_name = c.report.get("baseline", methods[0])
    meth_name = c.report.get("method", methods[-1])
    base = [x for x in cells if x.method == base_name]
    meth = [x for x in cells if x.method == meth_name]
    if not meth:
        return None, None, f"method {meth_name!r} has no finished cell"
    level = c.report.get("level")
    levels = [x.level for x in meth]
    if level is not None:
        want = f"{level:g}" if isinstance(level, int | float) and not isinstance(level, bool) else str(level)
        levels = [lv for lv in levels if lv == want]
        if not levels:
            return None, None, f"method {meth_name!r} has no finished cell at level {want}"
    shared = [lv for lv in levels if any(b.level == lv for b in base)]
    lv = shared[0] if shared else levels[0]
    meth = [x for x in meth if x.level == lv]
    if base_name == meth_name or not base:
        return None, meth[0], ""
    base_same = [b for b in base if b.level == lv] or base
    for m in meth:
        for b in base_same:
            if (b.seed, b.fold) == (m.seed, m.fold):
                return b, m, ""
    return base_same[0], meth[0], ""


def _overlays(c: Collection, agg: Aggregate | None) -> str:
    base, meth, why = _pick_cells(c)
    if meth is None:
        return f"<h2>Segmentations</h2><p class='note'>No overlay figures: {_e(why)}.</p>"
    n_cases = int(c.report.get("cases", 3))
    n_slices = int(c.report.get("slices", 3))
    names = sorted(n for n in meth.cases if base is None or n in base.cases)[:n_cases]
    labels, modality = _labels_and_modality(meth.run_dir)
    desc = (f"Baseline <code>{_e(base.arm)}</code> (seed {base.seed}, fold {base.fold}) vs "
            if base is not None else "")
    parts = ["<h2>Segmentations (Fig. 4 style)</h2>",
             f"<p class='note'>{desc}method <code>{_e(meth.arm)}</code> "
             f"(seed {meth.seed}, fold {meth.fold}), "
             f"{len(names)} test case(s), {n_slices} axial slices each. Contours: truth solid, baseline "
             "dotted, method dashed. Confidence: D's per-voxel confidence (1 = looks like a real label).</p>"]
    for name in names:
        try:
            png = overlay_figure(name, meth.cases[name], base, meth, labels, modality, n_slices)
        except (OSError, InputError, ValueError) as exc:
            parts.append(f"<p class='note'>{_e(name)}: cannot draw ({_e(exc)})</p>")
            continue
        parts.append(f"<h3>{_e(name)}</h3>" + png_tag(png, f"segmentations of {name}"))
    return "".join(parts)


def _labels_and_modality(run_dir: Path) -> tuple[dict[int, str], str]:
    info_path = run_dir / "dataset_info.json"
    if not info_path.is_file():
        return {}, "CT"
    info = json.loads(info_path.read_text())
    labels = {int(k): v for k, v in info.get("labels", {}).items() if int(k) != 0}
    return labels, str(info.get("modality", "CT")).upper()


def pick_slices(truth: np.ndarray, n: int) -> list[int]:
    """``n`` axial indices at evenly spaced quantiles of the slices holding foreground (the middle
    slice if there is none)."""
    zs = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1))
    if zs.size == 0:
        return [truth.shape[0] // 2]
    picks = [int(zs[int(round(q * (zs.size - 1)))]) for q in np.linspace(0, 1, n + 2)[1:-1]]
    return list(dict.fromkeys(picks))


def _window(image: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        return CT_WINDOW
    lo, hi = np.percentile(image, MR_PERCENTILES)
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def overlay_figure(
    name: str, case: dict[str, Any], base: CellResult | None, meth: CellResult, labels: dict[int, str],
    modality: str, n_slices: int = 3,
) -> bytes:
    """PNG: one row per slice: image | truth | baseline | method | contours (| confidence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    image_vol = read_volume(case["images"][0])
    image = image_vol.array.astype(np.float32)
    truth = read_volume(case["label"]).array.astype(np.int64)
    pred_m = read_volume(meth.predictions / f"{name}.nii.gz").array.astype(np.int64)
    pred_b = read_volume(base.predictions / f"{name}.nii.gz").array.astype(np.int64) if base else None
    conf_path = meth.confidence_file(name)
    conf = read_volume(conf_path).array if conf_path is not None else None
    for what, arr in (("prediction", pred_m), ("baseline prediction", pred_b), ("confidence", conf)):
        if arr is not None and arr.shape != truth.shape:
            raise ValueError(f"{what} shape {arr.shape} differs from the label's {truth.shape}")
    k = max([*labels, int(truth.max()), int(pred_m.max()), 1]) + 1
    cmap = plt.get_cmap("tab10", 10)
    colors = [cmap(i % 10) for i in range(k)]
    lo, hi = _window(image, modality)
    sz, sy, sx = image_vol.spacing
    aspect = sy / sx

    panels = ["image", "ground truth"] + (["baseline"] if pred_b is not None else []) + ["method", "contours"]
    if conf is not None:
        panels.append("confidence")
    slices = pick_slices(truth, n_slices)
    fig, axes = plt.subplots(len(slices), len(panels), figsize=(2.3 * len(panels), 2.4 * len(slices)),
                             squeeze=False)
    for row, z in zip(axes, slices, strict=True):
        img = image[z]
        for ax, panel in zip(row, panels, strict=True):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect,
                      interpolation="nearest")
            lab = {"ground truth": truth, "baseline": pred_b, "method": pred_m}.get(panel)
            if lab is not None:
                rgba = np.zeros((*img.shape, 4), np.float32)
                for c in range(1, k):
                    rgba[lab[z] == c] = (*colors[c][:3], 0.55)
                ax.imshow(rgba, origin="lower", aspect=aspect, interpolation="nearest")
            elif panel == "contours":
                for arr, style in ((truth, "solid"), (pred_b, "dotted"), (pred_m, "dashed")):
                    if arr is None:
                        continue
                    for c in range(1, k):
                        mask = (arr[z] == c).astype(np.float32)
                        if mask.any() and not mask.all():
                            ax.contour(mask, levels=[0.5], colors=[colors[c]], linestyles=style,
                                       linewidths=1.0, origin="lower")
            elif panel == "confidence":
                ax.imshow(conf[z], cmap="magma", vmin=0, vmax=1, origin="lower", aspect=aspect,
                          interpolation="nearest")
            title = {"baseline": f"baseline {base.method if base else ''}", "method": f"method {meth.method}"}
            ax.set_title(f"{name} z={z}" if panel == "image" else title.get(panel, panel), fontsize=7)
            ax.axis("off")
    handles = [Line2D([0], [0], color=colors[c], lw=3, label=labels.get(c, f"class {c}"))
               for c in range(1, k)]
    styles = [("solid", "truth"), ("dotted", "baseline"), ("dashed", "method")]
    if pred_b is None:
        styles.pop(1)
    handles += [Line2D([0], [0], color="k", ls=s, label=t) for s, t in styles]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _figure_png(fig, dpi=80)
