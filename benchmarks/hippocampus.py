"""One cell of the MSD Hippocampus benchmark: train with a labeled fraction, evaluate on the held-out set.

    python benchmarks/hippocampus.py --fraction 0.25 | --count 8  --method res_unet_aux_adv_semi
        [--out RUN_DIR] [--data ../shared/data/msd-hippocampus] [--iterations N] [--seed 0]
        [--threads 2] [--set KEY=VALUE ...] [--results benchmarks/results/hippocampus]

The settings are those of ``advseg/configs/experiments/hippocampus.yaml`` (see its header): 40 of
the 200 labeled cases held out as the test set (never trained on), fold 0 of a 10-fold split of the
other 160 (144 training, 16 validation cases), ``--fraction`` of the 144 training cases labeled, the
130 unlabeled images as the pool of semi-supervised methods, a CPU-sized network and schedule.
``--method`` is any method preset (res_unet, res_unet_aux, res_unet_aux_adv, res_unet_aux_adv_semi,
...). The run folder is an ordinary one, so afterwards

    advseg predict RUN_DIR IMAGES OUT && advseg evaluate OUT LABELS

segment and evaluate any other folder of hippocampus cases. Without ``--out`` the run goes to
``runs/hippocampus/cells/<method>/frac<F>/seed<S>_fold0``, the cell folder of
``advseg experiment hippocampus --out runs/hippocampus``, so ``advseg experiment hippocampus --out
runs/hippocampus --aggregate`` (or ``advseg report runs/hippocampus``) tabulates finished cells.

Prints the per-organ table of the test set and the wall time, and writes ``RUN_DIR/benchmark.json``
(command, wall time, hardware, summary). A finished run folder is not trained again. The cell's
per-case results also go into ``--results`` as one small JSON (commit it): ``advseg experiment
hippocampus --aggregate --results benchmarks/results/hippocampus`` builds the tables from those files.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other processes, spinning
# threads made each training iteration 10-20x slower (measured: 5.5 s instead of 0.5 s per step).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "msd-hippocampus"


MACHINE_OPTIONS = ("--out", "--results", "--data")


def portable_command(given: list[str]) -> str:
    """The cell's command as anyone would rerun it from the repository root: without the options
    that name this machine's folders (``--out``, ``--results``, ``--data``), whose defaults are the
    matrix cell folder, the committed results folder and the shared dataset."""
    kept: list[str] = []
    skip = False
    for arg in given:
        if skip:
            skip = False
        elif arg in MACHINE_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in MACHINE_OPTIONS)):
            kept.append(arg)
    return shlex.join(["python", "benchmarks/hippocampus.py", *kept])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    level = p.add_mutually_exclusive_group(required=True)
    level.add_argument("--fraction", type=float, help="labeled fraction of the 144 training cases")
    level.add_argument("--count", type=int, help="labeled training cases (of the 144)")
    p.add_argument("--method", required=True, help="method preset name")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: the matrix cell folder)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MSD hippocampus folder")
    p.add_argument("--iterations", type=int, default=None, help="override train.iterations (and scale "
                   "validation, checkpoints and pre-training to it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override for this cell, e.g. --set train.early_stop_patience=4")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "hippocampus",
                   help="folder of committable per-cell JSON results ('' to skip)")
    args = p.parse_args(argv)

    import torch

    from advseg.errors import InputError
    from advseg.evaluation.evaluate import format_summary
    from advseg.experiments.matrix import Cell, ExperimentMatrix, Level, MethodSpec, load_matrix_config
    from advseg.experiments.results import hardware_record
    from advseg.io.atomic import atomic_write_text

    torch.set_num_threads(args.threads)
    try:
        cfg = load_matrix_config("hippocampus", data=args.data)
        if not any(m.name == args.method for m in cfg.methods):
            cfg.methods.append(MethodSpec(name=args.method, preset=args.method))
        if args.iterations is not None:
            it = args.iterations
            every = max(1, it // 6)
            cfg.overrides += [f"train.iterations={it}", f"train.val_every={every}",
                              f"train.checkpoint_every={every}", f"adversarial.pretrain_iterations={it // 3}"]
        cfg.overrides += args.overrides
        if args.count is not None:
            if args.count < 1:
                raise InputError(None, f"--count must be >= 1, got {args.count}")
            level = Level("count", int(args.count))
        else:
            if not 0 < args.fraction <= 1:
                raise InputError(None, f"--fraction must be in (0, 1], got {args.fraction}")
            level = Level("fraction", float(args.fraction))
        cell = Cell(0, args.method, level, args.seed, cfg.folds_run[0])
        if args.out is None:
            matrix = ExperimentMatrix(cfg, REPO / "runs" / "hippocampus", device=args.device)
            matrix.write_manifest()
            folder = matrix.cell_folder(cell)
        else:
            matrix = ExperimentMatrix(cfg, args.out.parent, device=args.device)
            folder = args.out
        load = os.getloadavg()
        t0 = time.perf_counter()
        record = matrix.run_cell(cell, folder=folder)
        wall = time.perf_counter() - t0
    except InputError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    summary = record["summary"]
    hardware = {
        **hardware_record(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "benchmarks/hippocampus.py", *given])
    doc = {"command": command, "wall_seconds_this_call": wall, "cell_seconds": record["seconds"],
           "hardware": hardware, "test_cases": len(record["test_cases"]), "summary": summary}
    atomic_write_text(Path(folder) / "benchmark.json", json.dumps(doc, indent=1) + "\n")
    if str(args.results):
        from advseg.experiments.results import export_cell_result

        print(f"cell result: {export_cell_result(folder, args.results, command=portable_command(given))}")
    print(format_summary(summary))
    s = record["seconds"]
    print(f"\n{args.method} {level.label} labeled: train {s['train']:.0f} s, predict + evaluate "
          f"{s['evaluate']:.0f} s, total {s['total']:.0f} s on {len(record['test_cases'])} held-out test "
          f"cases; run folder {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
