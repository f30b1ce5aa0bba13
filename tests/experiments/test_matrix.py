"""The experiment matrix end to end on the tiny phantom set (2 folds x 2 methods x 2 fractions), its
interruption and resumption, --list-cells, config checks, holdout views and the aggregation math."""

from __future__ import annotations

import csv
import json
import math
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from advseg.cli.main import app
from advseg.errors import InputError
from advseg.experiments.aggregate import (
    CellResult,
    Collection,
    aggregate,
    comparison_table,
    find_results,
    seeds_table,
    summary_markdown,
    tables,
    write_aggregate,
)
from advseg.experiments.matrix import (
    DONE_FILE,
    ExperimentMatrix,
    expand_cells,
    load_matrix_config,
    make_holdout_view,
)
from advseg.experiments.results import RESULT_FORMAT, cell_result, export_cell_result, read_results

runner = CliRunner()
FAST = ["train.iterations=2", "train.val_every=0", "train.checkpoint_every=1"]


def _write_config(path: Path, data: Path, **extra) -> Path:
    raw = {
        "name": "tiny_matrix", "data": str(data), "size": "tiny", "folds": 2, "seeds": [0],
        "fractions": [0.5, 1.0], "test": "cv", "overrides": FAST, "compare": "same_level",
        "methods": [{"name": "res_unet", "preset": "res_unet"}, {"name": "aux", "preset": "res_unet_aux"}],
        **extra,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def matrix_run(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the 8-cell matrix, interrupted by a KeyboardInterrupt after the first checkpoint of the 3rd
    cell, then resumed through the CLI. Records every train_run call of both sessions."""
    import advseg.training.api as api
    from advseg.training.trainer import Trainer

    root = tmp_path_factory.mktemp("matrix")
    cfg_path = _write_config(root / "tiny.yaml", tiny_phantom)
    out = root / "out"
    calls: list[tuple[Path, bool]] = []
    real_train, real_save = api.train_run, Trainer.save
    state = {"interrupt": True}

    def counting_train(cfg, data, out_dir, **kw):
        calls.append((Path(out_dir), bool(kw.get("resume"))))
        return real_train(cfg, data, out_dir, **kw)

    def interrupting_save(self, kind):
        path = real_save(self, kind)
        if state["interrupt"] and len(calls) == 3 and kind == "last" and self.iteration == 1:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the 3rd cell's training
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADVSEG_CACHE", str(tmp_path_factory.getbasetemp() / "advseg_cache"))
        mp.setattr(api, "train_run", counting_train)
        mp.setattr(Trainer, "save", interrupting_save)
        matrix = ExperimentMatrix(load_matrix_config(cfg_path), out)
        with pytest.raises(KeyboardInterrupt):
            matrix.run(progress=False)
        first = list(calls)
        done_after_first = {c.index: (matrix.cell_folder(c) / DONE_FILE).is_file() for c in matrix.cells}
        interrupted = matrix.cell_folder(matrix.cells[2])
        interrupted_state = {p.name for p in interrupted.iterdir()}
        mtimes = {i: (matrix.cell_folder(matrix.cells[i]) / DONE_FILE).stat().st_mtime_ns for i in (0, 1)}
        state["interrupt"] = False
        calls.clear()
        res = runner.invoke(app, ["experiment", str(cfg_path), "--out", str(out), "--quiet"])
        second = list(calls)
    return {"config": cfg_path, "out": out, "matrix": matrix, "first": first, "second": second,
            "done_after_first": done_after_first, "interrupted_state": interrupted_state, "mtimes": mtimes,
            "cli": res, "data": tiny_phantom}


def test_interrupted_matrix_resumes_without_rerunning_finished_cells(matrix_run: dict) -> None:
    matrix = matrix_run["matrix"]
    folders = [matrix.cell_folder(c) for c in matrix.cells]
    assert len(folders) == 8
    # first session: cells 0, 1 finished, cell 2 stopped after its first checkpoint
    assert [f for f, _ in matrix_run["first"]] == folders[:3]
    assert [i for i, d in matrix_run["done_after_first"].items() if d] == [0, 1]
    assert "checkpoint_last.pt" in matrix_run["interrupted_state"]
    assert DONE_FILE not in matrix_run["interrupted_state"]
    # second session: cell 2 resumed, 3..7 fresh, 0 and 1 untouched
    res = matrix_run["cli"]
    assert res.exit_code == 0, res.output
    assert matrix_run["second"] == [(folders[2], True)] + [(f, False) for f in folders[3:]]
    for i, mtime in matrix_run["mtimes"].items():
        assert (folders[i] / DONE_FILE).stat().st_mtime_ns == mtime
    assert all((f / DONE_FILE).is_file() for f in folders)
    # the resumed cell continued at iteration 2 (log rows 1 and 2, none repeated)
    its = [json.loads(line)["iteration"] for line in (folders[2] / "log.jsonl").read_text().splitlines()
           if json.loads(line).get("kind") == "train"]
    assert its == [1, 2]
    assert "8 of 8 cells finished" in res.output
    # its record counts the first session's training seconds (to the checkpoint) in the cell's cost
    record = json.loads((folders[2] / DONE_FILE).read_text())
    assert record["train"]["resumed_at"] == 1
    before = record["train"]["seconds"] - record["train"]["seconds_this_call"]
    assert before > 0
    assert record["seconds"]["train"] >= before + record["train"]["seconds_this_call"]


def test_cells_are_ordinary_runs_with_cv_test_cases(matrix_run: dict) -> None:
    from advseg.data.splits import make_kfold

    matrix = matrix_run["matrix"]
    names = sorted(p.name[: -len(".nii.gz")] for p in (matrix_run["data"] / "labelsTr").iterdir())
    folds = make_kfold(names, 2, 0)
    for cell in matrix.cells:
        folder = matrix.cell_folder(cell)
        record = json.loads((folder / DONE_FILE).read_text())
        assert {"config.yaml", "dataset_info.json", "checkpoint_last.pt", "log.jsonl"} <= {p.name for p in
                                                                                          folder.iterdir()}
        tested = sorted(t["name"] for t in record["test_cases"])
        assert tested == folds[cell.fold]["val"]  # test: cv -> the fold's validation cases
        assert record["checkpoint"] == "last"
        assert sorted(p.name for p in (folder / "predictions").iterdir()) == [f"{n}.nii.gz" for n in tested]
        with (folder / "evaluation" / "per_case.csv").open() as fh:
            assert sorted({r["case"] for r in csv.DictReader(fh)}) == tested
        info = json.loads((folder / "dataset_info.json").read_text())
        n_train = len(folds[cell.fold]["train"])
        assert len(info["cases"]["labeled"]) == round(cell.level.value * n_train)


def test_matrix_results_pool_per_case_values(matrix_run: dict) -> None:
    results = matrix_run["out"] / "results"
    for name in ("summary.md", "summary.csv", "summary.json", "wilcoxon.csv", "per_case.csv"):
        assert (results / name).is_file()
    doc = json.loads((results / "summary.json").read_text())
    assert [a["arm"] for a in doc["arms"]] == ["res_unet@0.5", "res_unet@1", "aux@0.5", "aux@1"]
    assert all(a["cells"] == 2 and a["samples"] == 4 for a in doc["arms"])  # 2 folds x 2 test cases
    # pooled mean of the bladder DSC of one arm, recomputed from the cells' own per_case.csv
    matrix = matrix_run["matrix"]
    values = []
    for cell in matrix.cells:
        if cell.method == "aux" and cell.level.label == "1":
            with (matrix.cell_folder(cell) / "evaluation" / "per_case.csv").open() as fh:
                values += [float(r["dsc"]) for r in csv.DictReader(fh) if r["organ"] == "bladder"]
    assert len(values) == 4
    stats = doc["summary"]["aux@1"]["bladder"]["dsc"]
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    # same_level: res_unet vs aux at each fraction, nothing across fractions
    pairs = {(t["a"], t["b"]) for t in doc["wilcoxon"]}
    assert pairs == {("res_unet@0.5", "aux@0.5"), ("res_unet@1", "aux@1")}
    md = (results / "summary.md").read_text()
    assert "## bladder" in md and "| Method | Labeled | DSC |" in md and "Wilcoxon" in md


def test_list_cells_prints_one_command_per_cell(matrix_run: dict) -> None:
    out = matrix_run["out"]
    results = out.parent / "committed"
    res = runner.invoke(app, ["experiment", str(matrix_run["config"]), "--out", str(out), "--list-cells",
                              "--results", str(results)])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 8
    cells = matrix_run["matrix"].cells
    for i, line in enumerate(lines):
        argv = shlex.split(line, comments=True)
        assert argv[:3] == ["advseg", "experiment", str(matrix_run["config"].resolve())]
        assert argv[argv.index("--out") + 1] == str(out.resolve())
        assert argv[argv.index("--data") + 1] == str(matrix_run["data"].resolve())
        assert argv[argv.index("--results") + 1] == str(results.resolve())
        assert argv[-2:] == ["--cell", str(i)]
        # the trailing comment names the cell
        assert line.endswith(f"  # {cells[i].title}")


def test_finished_cell_is_skipped_and_changed_config_refused(matrix_run: dict, tmp_path: Path) -> None:
    marker = matrix_run["matrix"].cell_folder(matrix_run["matrix"].cells[5]) / DONE_FILE
    before = marker.stat().st_mtime_ns
    res = runner.invoke(app, ["experiment", str(matrix_run["config"]), "--out", str(matrix_run["out"]),
                              "--cell", "5", "--quiet"])
    assert res.exit_code == 0, res.output
    assert marker.stat().st_mtime_ns == before
    changed = _write_config(tmp_path / "changed.yaml", matrix_run["data"],
                            overrides=["train.iterations=3", "train.val_every=0", "train.checkpoint_every=1"])
    res = runner.invoke(app, ["experiment", str(changed), "--out", str(matrix_run["out"]), "--quiet"])
    assert res.exit_code == 2
    assert "finished with another config" in res.output and "train.iterations" in res.output


def test_report_of_a_matrix_holds_tables_and_png_images(matrix_run: dict) -> None:
    import base64
    import re

    res = runner.invoke(app, ["report", str(matrix_run["out"])])
    assert res.exit_code == 0, res.output
    page = (matrix_run["out"] / "report.html").read_text()
    assert "<table>" in page and "bladder" in page and "aux" in page and "Wilcoxon" in page
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) >= 4  # validation curves/learning curves per arm + overlay figures
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page  # opens offline
    assert "baseline" in page and "res_unet" in page
    assert "alt='DSC against labeled cases'" in page  # the matrix spans two labeled levels
    assert "<h3>DSC difference from res_unet at the same level (95 % case-bootstrap interval)</h3>" in page


# ------------------------------------------------------------------------------ config and views


def test_config_errors_name_the_file(tmp_path: Path, tiny_phantom: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": str(tiny_phantom), "methods": ["res_unet"], "fractoins": [0.5]}))
    with pytest.raises(InputError, match="fractoins") as exc:
        load_matrix_config(bad)
    assert exc.value.path == str(bad)
    bad.write_text(yaml.safe_dump({"data": str(tiny_phantom), "methods": ["res_unet"], "fractions": [1.5]}))
    with pytest.raises(InputError, match=r"fractions"):
        load_matrix_config(bad)
    bad.write_text(yaml.safe_dump({"data": str(tiny_phantom), "test": "cv",
                                   "methods": [{"name": "s", "preset": "res_unet_aux_adv_semi",
                                                "synthesize": {"n": 2}}]}))
    with pytest.raises(InputError, match="synthesize needs a fixed test split"):
        load_matrix_config(bad)
    bad.write_text(yaml.safe_dump({"data": str(tiny_phantom), "methods": ["no_such_preset"]}))
    with pytest.raises(InputError, match="no_such_preset"):
        load_matrix_config(bad)
    res = runner.invoke(app, ["experiment", str(bad)])
    assert res.exit_code == 2 and res.output.startswith("error: ")
    bad.write_text(yaml.safe_dump({"data": str(tiny_phantom), "methods": ["res_unet"],
                                   "fractions": [{"value": 0.5, "seed": [0]}]}))
    with pytest.raises(InputError, match=r"fractions: an entry must be a number or \{value"):
        load_matrix_config(bad)
    bad.write_text(yaml.safe_dump({"data": str(tiny_phantom), "seeds": [0, 1],
                                   "fractions": [{"value": 1.0, "seeds": [1]}],
                                   "methods": [{"name": "a", "preset": "res_unet", "seeds": [0]}]}))
    with pytest.raises(InputError, match="method 'a' runs no cell"):
        load_matrix_config(bad)


def test_cells_order_levels_and_packaged_configs(tmp_path: Path, tiny_phantom: Path) -> None:
    cfg = load_matrix_config(_write_config(
        tmp_path / "c.yaml", tiny_phantom, folds=3, run_folds=[0, 2], seeds=[0, 1], counts=[2],
        methods=[{"name": "a", "preset": "res_unet"},
                 {"name": "b", "preset": "res_unet", "fractions": [0.25]}]))
    cells = expand_cells(cfg)
    # a: 3 levels (0.5, 1, n2) x 2 seeds x 2 folds; b: its own single level
    assert len(cells) == 3 * 2 * 2 + 1 * 2 * 2
    assert [c.index for c in cells] == list(range(len(cells)))
    assert (cells[0].method, cells[0].level.label, cells[0].seed, cells[0].fold) == ("a", "0.5", 0, 0)
    assert (cells[1].seed, cells[1].fold) == (0, 2)
    assert {c.level.label for c in cells if c.method == "b"} == {"0.25"}
    m = ExperimentMatrix(cfg, tmp_path / "out")
    tc = m.requested_config(next(c for c in cells if c.level.label == "n2")).train
    assert (tc.labeled_count, tc.folds, tc.iterations) == (2, 3, 2)
    for name in ("phantom_six", "hippocampus", "phantom_table2"):
        packaged = load_matrix_config(name, data=tiny_phantom)
        assert packaged.methods and expand_cells(packaged)
    # a method or a level may run fewer seeds: the plan of 38 Hippocampus cells
    hippo = load_matrix_config("hippocampus", data=tiny_phantom)
    runs = {}
    for c in expand_cells(hippo):
        runs.setdefault((c.method, c.level.label), []).append(c.seed)
    assert len(expand_cells(hippo)) == 38
    assert runs[("res_unet_aux", "n8")] == [0, 1, 2] and runs[("res_unet_aux", "1")] == [0]
    assert runs[("res_unet_aux_adv", "n4")] == [0] and runs[("res_unet_aux_adv_semi", "1")] == [0]
    table2 = load_matrix_config("phantom_table2")
    m2 = ExperimentMatrix(table2, tmp_path / "t2")
    pools = {c.method: m2.requested_config(c).train.unlabeled_pool for c in expand_cells(table2)}
    # Exp. 5 draws on the 30 real unlabeled phantoms alone, Exp. 6 on the 30 synthesized volumes alone
    assert {k: v for k, v in pools.items() if k.startswith("exp5")} == dict.fromkeys(
        ["exp5_semi_real", "exp5_errors_real", "exp5_mean_teacher_real"], ["dataset"])
    assert all(v == ["extra"] and table2.method(k).synthesize["n"] == 30
               for k, v in pools.items() if k.startswith("exp6"))
    assert len(expand_cells(table2)) == 37
    t2runs: dict = {}
    for c in expand_cells(table2):
        t2runs.setdefault((c.method, c.level.label), []).append(c.seed)
    assert t2runs[("exp5_errors_real", "n2")] == [0]
    assert t2runs[("exp6_mean_teacher_synthetic", "n4")] == [0, 1, 2]
    assert t2runs[("res_unet_aux", "1")] == [0, 1, 2]
    assert m2.requested_config(expand_cells(table2)[0]).train.iterations == 2000
    # both label-scarce matrices train every cell the same iterations: no stop rule on a small
    # validation set picks the winners (it did on Hippocampus, 8 labeled cases)
    m_h = ExperimentMatrix(hippo, tmp_path / "h")
    for mat, cfg_ in ((m_h, hippo), (m2, table2)):
        trains = [mat.requested_config(c).train for c in expand_cells(cfg_)]
        schedules = {(t.early_stop_patience, t.iterations) for t in trains}
        assert len(schedules) == 1 and next(iter(schedules))[0] is None
    six = load_matrix_config("phantom_six")
    assert [m.name[:4] for m in six.methods] == ["exp1", "exp2", "exp3", "exp4", "exp5", "exp6"]
    assert six.methods[5].synthesize and six.test == "dataset"


def test_holdout_view_and_test_modes(
    tmp_path: Path, tiny_phantom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from advseg.data.dataset import load_dataset
    from advseg.data.splits import seeded_order

    view = make_holdout_view(tiny_phantom, tmp_path / "views", count=1, seed=3)
    assert make_holdout_view(tiny_phantom, tmp_path / "views", count=1, seed=3) == view  # built once
    index = load_dataset(view)
    source = load_dataset(tiny_phantom)
    held = seeded_order(sorted(c.name for c in source.training), 3)[:1]
    assert [c.name for c in index.test] == held
    rest = sorted(c.name for c in source.training if c.name not in held)
    assert sorted(c.name for c in index.training) == rest
    assert len(index.unlabeled) == len(source.unlabeled)
    assert (view / "labelsTs" / f"{held[0]}.nii.gz").resolve() == source.case(held[0]).label.resolve()
    with pytest.raises(InputError, match="leaves no training case"):
        make_holdout_view(tiny_phantom, tmp_path / "views", count=4, seed=0)

    monkeypatch.setenv("ADVSEG_CACHE", str(tmp_path / "cache"))
    cfg = load_matrix_config(_write_config(tmp_path / "h.yaml", tiny_phantom, test="holdout",
                                           holdout={"count": 1, "seed": 3}))
    m = ExperimentMatrix(cfg, tmp_path / "out")
    data = m.data_dir(progress=False)
    assert data.parent == tmp_path / "cache" / "views"
    tests = m.test_cases(m.requested_config(m.cells[0]), load_dataset(data))
    assert [t.name for t in tests] == held
    cfg = load_matrix_config(_write_config(tmp_path / "d.yaml", tiny_phantom, test="dataset"))
    m = ExperimentMatrix(cfg, tmp_path / "out2")
    tests = m.test_cases(m.requested_config(m.cells[0]), load_dataset(tiny_phantom))
    assert sorted(t.name for t in tests) == sorted(c.name for c in source.test)


def test_out_folder_of_something_else_is_refused(tmp_path: Path, tiny_phantom: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = load_matrix_config(_write_config(tmp_path / "c.yaml", tiny_phantom))
    with pytest.raises(InputError, match="not an experiment matrix folder"):
        ExperimentMatrix(cfg, out).run(progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------- aggregation math


def _fake_cell(
    root: Path, method: str, level: str, fold: int, dsc: dict[str, float], hd: dict[str, float]
) -> CellResult:
    ev = root / f"{method}_{level}_{fold}" / "evaluation"
    ev.mkdir(parents=True)
    with (ev / "per_case.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "label", "organ", "dsc", "hd95", "rvd"])
        for case, v in dsc.items():
            w.writerow([case, 1, "prostate", v, "" if math.isnan(hd[case]) else hd[case], -10 * v])
    return CellResult(method, level, 0, fold, ev.parent, ev)


def test_aggregation_math_on_known_numbers(tmp_path: Path) -> None:
    base = {0: {"c1": 0.70, "c2": 0.80}, 1: {"c3": 0.60, "c4": 0.75, "c5": 0.65}}
    meth = {0: {"c1": 0.78, "c2": 0.85}, 1: {"c3": 0.70, "c4": 0.74, "c5": 0.80}}
    hd = {c: 5.0 for c in ("c1", "c2", "c3", "c4", "c5")}
    hd_nan = {**hd, "c2": math.nan}
    cells = [_fake_cell(tmp_path, "base", "1", f, base[f], hd) for f in (0, 1)]
    cells += [_fake_cell(tmp_path, "meth", "1", f, meth[f], hd_nan) for f in (0, 1)]
    coll = Collection("matrix", tmp_path, "toy", cells, 4, ["base@1", "meth@1"])
    agg = aggregate(coll, metrics=("dsc", "hd95", "rvd"))
    b = [v for f in (0, 1) for v in base[f].values()]
    m = [v for f in (0, 1) for v in meth[f].values()]
    s = agg.summary["base@1"]["prostate"]["dsc"]
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(np.mean(b)) and s["std"] == pytest.approx(np.std(b, ddof=1))
    assert agg.summary["meth@1"]["prostate"]["hd95"]["n"] == 4  # the undefined value left out
    t = next(t for t in agg.tests if t["metric"] == "dsc")
    assert (t["a"], t["b"], t["n"]) == ("base@1", "meth@1", 5)
    assert t["p"] == pytest.approx(wilcoxon(b, m).pvalue)
    md = summary_markdown(agg)
    # one row per cell with its own test means: how far the folds (seeds) differ
    recs = {(r["method"], r["fold"]): r for r in agg.cells}
    assert len(agg.cells) == 4
    assert recs[("meth", 1)]["dsc_prostate"] == pytest.approx(np.mean(list(meth[1].values())))
    assert math.isnan(recs[("base", 0)]["hd95_prostate"]) is False and recs[("base", 0)]["iterations"] is None
    assert f"| {np.mean(list(meth[1].values())):.3f} |" in md.split("## Cells")[1]
    assert f"**{np.mean(m):.3f} ± {np.std(m, ddof=1):.3f}**" in md  # the better DSC in bold
    assert f"| {np.mean(b):.3f} ± {np.std(b, ddof=1):.3f} |" in md
    # the test table leads with the signed paired difference A - B, then p and the pairs
    assert t["mean_diff"] == pytest.approx(np.mean(np.subtract(b, m)))
    assert f"| {np.mean(np.subtract(b, m)):+.3f} (p {t['p']:.3g}, n=5) |" in md
    paths = write_aggregate(agg, tmp_path / "results")
    rows = list(csv.DictReader(paths["summary.csv"].open()))
    best = {(r["arm"], r["metric"]): r["best"] for r in rows}
    assert best[("meth@1", "dsc")] == "1" and best[("base@1", "dsc")] == "0"
    assert best[("meth@1", "rvd")] == "0"  # |RVD| = 10 DSC: the lower DSC has the smaller |RVD|
    # demo-style side-by-side table marks the better method per organ and metric
    table = comparison_table({"base": agg.summary["base@1"], "meth": agg.summary["meth@1"]}, ("dsc",))
    assert table.count("**") == 2 and "meth" in table.splitlines()[0]


def test_baseline_table_sets_each_method_against_supervised_at_its_level(tmp_path: Path) -> None:
    base = {0: {"c1": 0.70, "c2": 0.80, "c3": 0.60, "c4": 0.75, "c5": 0.65}}
    meth = {0: {"c1": 0.78, "c2": 0.85, "c3": 0.70, "c4": 0.74, "c5": 0.80}}
    hd = {c: 5.0 for c in ("c1", "c2", "c3", "c4", "c5")}
    cells = [_fake_cell(tmp_path, "meth", "n4", 0, meth[0], hd),
             _fake_cell(tmp_path, "base", "n4", 0, base[0], hd),
             _fake_cell(tmp_path, "base", "n8", 0, base[0], hd)]
    # no baseline known (no report, no configs): no such table
    coll = Collection("results", tmp_path, "toy", cells, 3, ["meth@n4", "base@n4", "base@n8"])
    assert aggregate(coll, metrics=("dsc",)).baseline is None
    # the cells' configs tell which method trained supervised
    for c in cells:
        c.info["supervised"] = c.method == "base"
    agg = aggregate(coll, metrics=("dsc",))
    assert agg.baseline == "base"
    table = next(t for t in tables(agg) if t.title.startswith("DSC against base"))
    # level by level, the baseline first; the method's row carries its difference from it
    assert [(r[0][0], r[1][0]) for r in table.rows] == [("base", "4 cases"), ("meth", "4 cases"),
                                                          ("base", "8 cases")]
    b, m = list(base[0].values()), list(meth[0].values())
    p = wilcoxon(m, b).pvalue
    assert table.rows[1][3][0] == (f"{np.mean(m):.3f} ± {np.std(m, ddof=1):.3f} "
                                   f"({np.mean(np.subtract(m, b)):+.3f}, p {p:.2g}, n=5)")
    assert "(" not in table.rows[0][3][0] and "(" not in table.rows[2][3][0]
    # a report naming another baseline wins
    coll.report = {"baseline": "meth"}
    assert aggregate(coll, metrics=("dsc",)).baseline == "meth"


def test_seeds_table_shows_each_seed_against_the_baseline_of_the_same_seed(tmp_path: Path) -> None:
    hd = {c: 5.0 for c in ("c1", "c2")}
    dsc = {("base", 0): (0.70, 0.80), ("base", 1): (0.60, 0.70), ("meth", 0): (0.72, 0.82),
           ("meth", 1): (0.59, 0.69), ("one", 1): (0.65, 0.75)}
    cells = []
    for (method, seed), (a, b) in dsc.items():
        c = _fake_cell(tmp_path / f"s{seed}", method, "n4", 0, {"c1": a, "c2": b}, hd)
        c.seed = seed
        c.info["supervised"] = method == "base"
        cells.append(c)
    cells.append(_fake_cell(tmp_path, "base", "n8", 0, {"c1": 0.9, "c2": 0.9}, hd))  # one seed: no row
    cells[-1].info["supervised"] = True
    coll = Collection("results", tmp_path, "toy", cells, 6, [c.arm for c in cells])
    agg = aggregate(coll, metrics=("dsc",))
    table = seeds_table(agg)
    assert table is not None and table in tables(agg)
    rows = {r[0][0]: [c[0] for c in r] for r in table.rows}
    assert list(rows) == ["base", "meth", "one"]  # the 8-case level ran one seed per arm: left out
    assert rows["base"][2:] == ["0, 1", f"0.750 / 0.650 (sd {np.std([0.75, 0.65], ddof=1):.3f})"]
    # the method's difference seed by seed: a gain with seed 0, a loss with seed 1
    assert rows["meth"][3] == f"+0.020 / -0.010 (mean +0.005, sd {np.std([0.02, -0.01], ddof=1):.3f})"
    assert rows["one"][2:] == ["1", "+0.050"]  # against the baseline's seed 1, not its mean
    # a single seed everywhere: no table
    single = Collection("results", tmp_path, "toy", cells[:1] + cells[2:3], 2, [cells[0].arm, cells[2].arm])
    assert seeds_table(aggregate(single, metrics=("dsc",))) is None


def _hippocampus_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hippo_bench", Path(__file__).parents[2] / "benchmarks"
                                                  / "hippocampus.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_hippocampus_cell_command_drops_this_machines_folders() -> None:
    """The command committed with a cell result reruns the cell anywhere: no scratch paths."""
    bench = _hippocampus_bench()
    given = ["--count", "16", "--seed", "2", "--method", "mean_teacher", "--threads", "1",
             "--out", "/work/runs/x y", "--results=/tmp/res", "--data", "/mnt/d", "--set", "train.seed=3"]
    assert bench.portable_command(given) == ("python benchmarks/hippocampus.py --count 16 --seed 2 --method "
                                             "mean_teacher --threads 1 --set train.seed=3")


@pytest.mark.slow
def test_hippocampus_benchmark_cell_and_predict_evaluate_elsewhere(hippocampus: Path, tmp_path: Path) -> None:
    """The real-data benchmark at 2 iterations (preprocesses all 330 volumes: about a minute), then
    `advseg predict` / `advseg evaluate` of its run folder on another folder of hippocampus cases."""
    import shutil

    bench = _hippocampus_bench()
    run = tmp_path / "run"
    assert bench.main(["--fraction", "0.1", "--method", "res_unet", "--iterations", "2", "--data",
                       str(hippocampus), "--out", str(run), "--threads", "1",
                       "--results", str(tmp_path / "results")]) == 0
    result = json.loads((tmp_path / "results" / "res_unet" / "0.1" / "seed0_fold0.json").read_text())
    assert str(tmp_path) not in result["command"] and "--iterations 2" in result["command"]
    record = json.loads((run / DONE_FILE).read_text())
    assert len(record["test_cases"]) == 40 and set(record["summary"]) == {"Anterior", "Posterior"}
    doc = json.loads((run / "benchmark.json").read_text())
    assert doc["hardware"]["cpu_count"] and doc["wall_seconds_this_call"] > 0
    info = json.loads((run / "dataset_info.json").read_text())
    assert len(info["cases"]["labeled"]) == 14  # 10 % of the 144 training cases
    trained = set(info["cases"]["labeled"]) | set(info["cases"]["val"])
    assert not trained & {t["name"] for t in record["test_cases"]}  # the held-out cases never trained on
    images, labels = tmp_path / "imgs", tmp_path / "lbls"
    images.mkdir()
    labels.mkdir()
    for t in record["test_cases"][:2]:
        shutil.copy(t["images"][0], images)
        shutil.copy(t["label"], labels)
    res = runner.invoke(app, ["predict", str(run), str(images), str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(labels), "--dataset-json",
                              str(hippocampus / "dataset.json")])
    assert res.exit_code == 0, res.output
    assert "Anterior" in res.output and "Posterior" in res.output

# ------------------------------------------------ committable per-cell results (issue 11)


def test_results_files_rebuild_the_matrix_tables(matrix_run: dict, tmp_path: Path) -> None:
    matrix = matrix_run["matrix"]
    results = tmp_path / "results"
    paths = [export_cell_result(matrix.cell_folder(c), results, command="test") for c in matrix.cells]
    assert len(set(paths)) == 8
    assert paths[0] == results / "res_unet" / "0.5" / "seed0_fold0.json"
    doc = json.loads(paths[0].read_text())
    assert doc["format"] == RESULT_FORMAT and doc["cell"]["method"] == "res_unet"
    assert doc["hardware"]["cpu"] and doc["hardware"]["cpu_count"]
    # the machine the cell trained on, as its record says, not the one exporting it
    trained_on = json.loads((matrix.cell_folder(matrix.cells[0]) / "cell.json").read_text())["hardware"]
    assert doc["hardware"] == trained_on
    assert doc["per_case"] and {"case", "organ", "dsc", "hd95"} <= set(doc["per_case"][0])
    assert paths[0].stat().st_size < 200_000  # small enough to commit
    # the run folders are gone (a new machine): the tables come from the files alone, and equal
    ref = aggregate(find_results(matrix_run["out"]))
    shutil.copytree(results, tmp_path / "copy")
    agg = aggregate(find_results(tmp_path / "copy"))
    assert sorted(agg.arms) == sorted(ref.arms)
    for arm in ref.arms:
        for organ in ref.organs:
            for m in ("dsc", "hd95"):
                a, b = agg.summary[arm][organ][m], ref.summary[arm][organ][m]
                assert a["n"] == b["n"]
                assert a["mean"] == pytest.approx(b["mean"], abs=1e-5, nan_ok=True)
    for arm in ref.arms:  # the cost table too: iterations run and train seconds travel in the files
        assert agg.costs[arm]["iterations"] == ref.costs[arm]["iterations"]
        a_s, r_s = agg.costs[arm]["train_seconds"], ref.costs[arm]["train_seconds"]
        assert a_s["mean"] == pytest.approx(r_s["mean"])
        assert agg.costs[arm]["iterations"]["n"] >= 1

    def tests(a):
        return {(frozenset((t["a"], t["b"])), t["organ"], t["metric"]): t["p"] for t in a.tests}

    assert tests(agg).keys() == tests(ref).keys()
    for k, pv in tests(ref).items():
        assert tests(agg)[k] == pytest.approx(pv, abs=1e-6, nan_ok=True)
    # the command: tables into RESULTS/tables, no dataset needed (the config's data folder is gone)
    cfg = yaml.safe_load(matrix_run["config"].read_text())
    cfg["data"] = str(tmp_path / "gone")
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["experiment", str(plan), "--aggregate", "--results", str(tmp_path / "copy")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "copy" / "tables" / "summary.md").is_file()
    assert "8 of 8 cells finished" in res.output
    assert "all 8 planned cells finished" in (tmp_path / "copy" / "tables" / "summary.md").read_text()
    assert len(read_results(tmp_path / "copy")) == 8  # the tables' own JSON is not taken for a cell
    # two cells not computed yet: the tables say which, and the training time they need
    for c in matrix.cells[-2:]:
        (tmp_path / "copy" / c.method / c.level.label / f"seed{c.seed}_fold{c.fold}.json").unlink()
    res = runner.invoke(app, ["experiment", str(plan), "--aggregate", "--results", str(tmp_path / "copy")])
    assert res.exit_code == 0, res.output
    assert "6 of 8 cells finished" in res.output
    md = (tmp_path / "copy" / "tables" / "summary.md").read_text()
    last = matrix.cells[-1]
    assert "6 of 8 planned cells finished; about " in md and " h of training left" in md
    assert f"Missing: {last.method} at {last.level.text} (seed" in md
    # the HTML report of the committed files: their tables, without run folders
    res = runner.invoke(app, ["report", str(tmp_path / "copy"), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert "folder of committed cell results" in page and "Wilcoxon" in page and "<h3>Cells" in page
    assert "finished cells: 6 of 6</li>" in page  # the files alone do not know the plan
    # with the experiment config the report counts them against the plan and names the missing cells
    res = runner.invoke(app, ["report", str(tmp_path / "copy"), "--out", str(tmp_path / "r.html"),
                              "--config", str(plan)])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert "finished cells: 6 of 8 planned</li>" in page
    assert f"Missing: {last.method} at {last.level.text} (seed" in page


def test_results_record_input_digests_and_tables_warn_when_they_differ(matrix_run: dict,
                                                                        tmp_path: Path) -> None:
    """Each cell records a content digest of its data (and unlabeled pools); the tables warn when a
    method's cells saw different unlabeled pools (a GAN trained again elsewhere) or datasets."""
    from advseg.io.digest import folder_digest

    matrix = matrix_run["matrix"]
    results = tmp_path / "results"
    paths = [export_cell_result(matrix.cell_folder(c), results, command="test") for c in matrix.cells]
    docs = [json.loads(p.read_text()) for p in paths]
    data = Path(json.loads((matrix.cell_folder(matrix.cells[0]) / DONE_FILE).read_text())["data"])
    assert all(d["inputs"]["data"] == folder_digest(data) for d in docs)
    assert docs[0]["inputs"]["data"]["files"] > 0 and docs[0]["inputs"]["unlabeled"] == []
    assert not [n for n in aggregate(find_results(results)).notes if "different" in n]
    method = docs[0]["cell"]["method"]
    same = [p for p, d in zip(paths, docs, strict=True) if d["cell"]["method"] == method]
    for i, p in enumerate(same[:2]):  # two cells of one method with different pools
        doc = json.loads(p.read_text())
        doc["inputs"]["unlabeled"] = [{"files": 30, "sha256": f"{i}" * 64}]
        p.write_text(json.dumps(doc))
    doc = json.loads(paths[-1].read_text())
    doc["inputs"]["data"] = {"files": 3, "sha256": "f" * 64}
    paths[-1].write_text(json.dumps(doc))
    notes = aggregate(find_results(results)).notes
    assert any(n.startswith(f"{method}: its cells used 3 different unlabeled pools")
               for n in notes), notes
    assert any(n.startswith("the cells trained on 2 different datasets") for n in notes), notes


def test_cells_with_committed_results_are_not_trained_again(matrix_run: dict, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A new machine: the run folders are gone, the committed result files are not. Only the cells
    without a file train; a file computed with another config is refused, naming it, and kept."""
    import advseg.training.api as api

    matrix = matrix_run["matrix"]
    results = tmp_path / "results"
    for c in matrix.cells[:6]:
        export_cell_result(matrix.cell_folder(c), results, command="test")
    trained: list[Path] = []
    real_train = api.train_run

    def counting_train(cfg, data, out_dir, **kw):
        trained.append(Path(out_dir))
        return real_train(cfg, data, out_dir, **kw)

    monkeypatch.setattr(api, "train_run", counting_train)
    monkeypatch.setenv("ADVSEG_CACHE", str(tmp_path / "cache"))
    fresh = ExperimentMatrix(load_matrix_config(matrix_run["config"]), tmp_path / "new_machine")
    res = runner.invoke(app, ["experiment", str(matrix_run["config"]), "--out", str(fresh.out),
                              "--results", str(results), "--quiet"])
    assert res.exit_code == 0, res.output
    assert trained == [fresh.cell_folder(c) for c in fresh.cells[6:]]
    assert not (fresh.cell_folder(fresh.cells[0]) / DONE_FILE).exists()
    assert len(read_results(results)) == 8  # the two trained cells were written too
    # one committed cell asked for again in a fresh folder: says where its result is, trains nothing
    trained.clear()
    res = runner.invoke(app, ["experiment", str(matrix_run["config"]), "--out", str(tmp_path / "fourth"),
                              "--results", str(results), "--cell", "0", "--quiet"])
    assert res.exit_code == 0 and trained == [], res.output
    assert f"1 requested cell already in {results}, none trained" in res.output
    assert "no finished cell" not in res.output
    # the plan changed since the file was computed: refused before any training, the file untouched
    path = results / "res_unet" / "0.5" / "seed0_fold0.json"
    doc = json.loads(path.read_text())
    doc["config"]["train"]["lr"] = 0.5
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    trained.clear()
    res = runner.invoke(app, ["experiment", str(matrix_run["config"]), "--out", str(tmp_path / "third"),
                              "--results", str(results), "--quiet"])
    assert res.exit_code == 2
    assert str(path) in res.output and "computed with another config" in res.output
    assert "train.lr: 0.5" in res.output and "Traceback" not in res.output
    assert trained == [] and path.read_bytes() == before
    assert not (tmp_path / "third").exists()  # nothing written for a refused plan
    # a key the file lacks (an option added since) is no difference
    del doc["config"]["train"]["lr"]
    path.write_text(json.dumps(doc))
    assert fresh.committed_result(fresh.cells[0], results) is not None
    # an early-stop patience the plan no longer has: the same run if it never stopped early
    assert fresh.requested_config(fresh.cells[0]).train.early_stop_patience is None
    doc["config"]["train"]["early_stop_patience"] = 1
    doc["train"]["iterations"] = fresh.requested_config(fresh.cells[0]).train.iterations
    path.write_text(json.dumps(doc))
    assert fresh.committed_result(fresh.cells[0], results) is not None
    doc["train"]["iterations"] -= 1  # stopped early: another run than the plan's
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="train.early_stop_patience: 1 -> None"):
        fresh.committed_result(fresh.cells[0], results)


def test_unfinished_cell_and_bad_result_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a finished experiment cell"):
        cell_result(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.json").write_text("{broken")  # outside the <method>/<level>/ layout: not read
    assert read_results(tmp_path) == []
    (tmp_path / "m" / "n8").mkdir()
    (tmp_path / "m" / "n8" / "seed0_fold0.json").write_text("{broken")
    with pytest.raises(InputError, match="not JSON"):
        read_results(tmp_path)


def test_dsc_against_labels_figure(matrix_run: dict, tmp_path: Path) -> None:
    from advseg.experiments.figures import level_axis, plot_metric_vs_labels

    agg = aggregate(find_results(matrix_run["out"]))  # fractions 0.5 and 1 of each method
    path = plot_metric_vs_labels(agg, tmp_path / "f.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    assert level_axis("n8") == 8 and level_axis("0.25", 144) == 36 and level_axis("0.5") == 0.5
    one = aggregate(find_results(matrix_run["out"]))
    one.arms = [a for a in one.arms if a.endswith("@1")]
    assert plot_metric_vs_labels(one, tmp_path / "g.png") is None  # one level: no line to draw
    out = write_aggregate(agg, tmp_path / "tables")
    assert "dsc_vs_labels.png" in out


def test_paired_difference_figure(matrix_run: dict, tmp_path: Path) -> None:
    """Each method against the baseline at its level, with a case-bootstrap interval; drawn only
    where some method has a baseline cell at its level."""
    from advseg.experiments.figures import plot_paired_differences

    agg = aggregate(find_results(matrix_run["out"]))
    assert agg.baseline is not None
    out = write_aggregate(agg, tmp_path / "tables")
    assert out["dsc_difference.png"].read_bytes()[:4] == b"\x89PNG"
    only_base = aggregate(find_results(matrix_run["out"]))
    only_base.arms = [a for a in only_base.arms if only_base.arm_info[a]["method"] == agg.baseline]
    assert plot_paired_differences(only_base, tmp_path / "b.png") is None
    agg.baseline = None
    assert plot_paired_differences(agg, tmp_path / "c.png") is None
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


def test_cost_table_shows_the_mask_in_use_and_its_accuracy(tmp_path: Path) -> None:
    from advseg.experiments.aggregate import CellResult, _cell_info, cost_summary

    val = {"d_auc_real_fake": 0.7, "conf_auc_correct": 0.8, "softmax_auc_correct": 0.9,
           "product_pass_fraction": 0.6, "product_pass_accuracy": 0.97, "softmax_pass_fraction": 0.9,
           "softmax_pass_accuracy": 0.93, "region_accuracy": 0.91}
    semi = {"config": {"adversarial": {"enabled": True, "semi": True, "mask_source": "product"}},
            "train": {"iterations": 100, "best_iteration": 50}, "seconds": {"train": 10.0}}
    cells = [CellResult("m", "n4", seed, 0, tmp_path, tmp_path,
                        info=_cell_info({**semi, "train": {"iterations": it, "best_iteration": 50}},
                                        {**val, "conf_auc_correct": auc}))
             for seed, (it, auc) in enumerate([(100, 0.8), (300, 0.6)])]
    c = cost_summary(cells)
    assert c["iterations"]["mean"] == 200 and c["iterations"]["n"] == 2
    assert c["conf_auc_correct"]["mean"] == pytest.approx(0.7)
    assert c["mask_pass_fraction"]["mean"] == pytest.approx(0.6)  # the product mask's, not softmax's
    assert c["mask_pass_accuracy"]["mean"] == pytest.approx(0.97)
    sup = cost_summary([CellResult("s", "n4", 0, 0, tmp_path, tmp_path, info=_cell_info(
        {"config": {"adversarial": {"enabled": False}}, "train": {"iterations": 80}}, None))])
    assert sup["mask_pass_fraction"]["n"] == 0 and sup["iterations"]["mean"] == 80


def test_costs_from_more_than_one_kind_of_cpu_are_flagged(tmp_path: Path) -> None:
    from advseg.experiments.aggregate import _cell_info, hardware_notes
    from advseg.experiments.results import cpu_model

    def cell(seed: int, cpu: str | None) -> CellResult:
        record = {"train": {"iterations": 10}, "hardware": {"cpu": cpu} if cpu else {}}
        return CellResult("m", "n4", seed, 0, tmp_path, tmp_path, info=_cell_info(record, None))

    assert hardware_notes([cell(0, "CPU A"), cell(1, "CPU A")]) == []
    (note,) = hardware_notes([cell(0, "CPU A"), cell(1, "CPU A"), cell(2, "CPU B"), cell(3, None)])
    assert note.startswith("train seconds come from 3 kinds of CPU")
    assert "CPU A: 2 cells" in note and "CPU B: 1 cell" in note and "not recorded: 1 cell" in note
    assert isinstance(cpu_model(), str) and cpu_model()
