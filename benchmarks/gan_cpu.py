"""The ``cpu`` PGGAN preset end to end on the phantom: train, segment the samples, measure (Table I).

    python benchmarks/gan_cpu.py --out runs/gan_cpu --results benchmarks/results/gan_cpu
    python benchmarks/gan_cpu.py --smoke --out /tmp/gan_smoke --results /tmp/gan_smoke/results
    python benchmarks/gan_cpu.py --gan-set 'hu_window=[-250, 350]' --out OUT --results RESULTS

1. ``OUT/data``: phantoms of 32 x 64 x 64 voxels (the preset's last stage, so the GAN's grid is the
   data grid): 80 labeled (the GAN's training images, S's training cases and Table I's real
   reference) and 6 test cases (S's test set and the real held-out baseline of the report).
2. ``OUT/gan``: ``advseg synthesize train --preset cpu`` (resumed if interrupted).
3. ``OUT/seg/res_unet``: the S-net that finds the organs, the demo's ``res_unet+cpu`` recipe at
   64 x 64 in-plane (all 32 slices, 16 x 64 x 64 patches, 800 iterations or ``--seg-iterations``),
   evaluated on the test cases (Dice per organ).
4. ``OUT/report``: :func:`advseg.synthesis.report.synthesis_report` on 30 samples: per-organ HU error
   (Table I), share of samples with every organ found, nearest-neighbour copy check, Fig. 3.
5. ``RESULTS`` (small files only, no weights): ``summary.json`` (timings per stage, S's Dice, the
   measures), ``report.md``, ``report.json``, ``synth_slices.png``, ``histograms.png`` and the
   EMA generator's grid of every stage.

``--smoke`` shrinks every step (12 phantoms, a few iterations per stage, 4 samples) to check the
pipeline in minutes; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from advseg.io.atomic import atomic_write_text
from advseg.synthesis.config import gan_preset, merge_gan_config
from advseg.synthesis.trainer import LATEST, stage_name, train_gan

SHAPE = (32, 64, 64)
SEG_OVERRIDES = ["data.resize_xy=64", "data.n_slices=32", "data.patch_size=[16,64,64]",
                 "augment.translate_max_voxels=4"]
SMOKE_GAN = {"iterations_per_stage": [12, 12, 12, 6, 3], "checkpoint_every": 1000}


def _stage_timings(log: Path, cfg) -> list[dict[str, Any]]:
    """Seconds and seconds per iteration of each stage, from the run's ``log.csv``."""
    ends: dict[int, float] = {}
    with log.open(newline="") as f:
        for row in csv.DictReader(f):
            ends[int(row["stage"])] = float(row["seconds"])
    out, prev = [], 0.0
    for s in range(len(cfg.stages)):
        if s not in ends:
            continue
        dt = ends[s] - prev
        out.append({"stage": s, "shape": cfg.stages[s], "iterations": cfg.iterations(s),
                    "batch_size": cfg.batch_size(s), "seconds": round(dt, 1),
                    "seconds_per_iteration": round(dt / cfg.iterations(s), 4)})
        prev = ends[s]
    return out


def _dice(summary: dict[str, Any]) -> dict[str, float | None]:
    """Mean test Dice per organ from an evaluation summary (``{organ: {metric: {mean, std, n}}}``)."""
    return {organ: m.get("dsc", {}).get("mean") for organ, m in summary.items() if isinstance(m, dict)}


# The measuring S-net's default schedule; the recorded command names --seg-iterations only when it differs.
SEG_ITERATIONS = 800


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="run folder (data, GAN, S-net, report)")
    ap.add_argument("--results", type=Path, required=True, help="folder for the small result files")
    ap.add_argument("--smoke", action="store_true", help="a few iterations everywhere (pipeline check)")
    ap.add_argument("--samples", type=int, default=None, help="samples for the report (default 30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seg-iterations", type=int, default=SEG_ITERATIONS,
                    help="iterations of the S-net that finds the organs (the measuring instrument)")
    ap.add_argument("--gan-set", dest="gan_set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the cpu preset (a YAML value), e.g. 'hu_window=[-250, 350]'")
    args = ap.parse_args()
    from advseg.data.phantom import write_phantom_dataset
    from advseg.experiments.demo import run_method
    from advseg.synthesis.report import synthesis_report

    out: Path = args.out
    n_samples = args.samples or (4 if args.smoke else 30)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    data = out / "data"
    t0 = time.perf_counter()
    if not (data / "dataset.json").is_file():
        labeled, test = (12, 2) if args.smoke else (80, 6)
        write_phantom_dataset(data, labeled=labeled, unlabeled=0, test=test, shape=SHAPE, seed=args.seed)
    timings["phantoms_s"] = round(time.perf_counter() - t0, 1)

    cfg = gan_preset("cpu")
    try:
        given = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.gan_set)}
    except ValueError:
        ap.error(f"--gan-set takes KEY=VALUE, got {args.gan_set}")
    smoke_gan = SMOKE_GAN if args.smoke else {}
    cfg = merge_gan_config(cfg, {"seed": args.seed, "device": "cpu", **smoke_gan, **given})
    gan = out / "gan"
    t0 = time.perf_counter()
    train_gan(data, gan, cfg, resume=(gan / "checkpoints" / LATEST).is_file(), progress=False)
    timings["gan_train_this_call_s"] = round(time.perf_counter() - t0, 1)
    stages = _stage_timings(gan / "log.csv", cfg)
    timings["gan_train_s"] = round(sum(s["seconds"] for s in stages), 1)

    seg = out / "seg"
    t0 = time.perf_counter()
    if (seg / "res_unet" / "summary.json").is_file():
        summary = json.loads((seg / "res_unet" / "summary.json").read_text())
    else:
        if (seg / "res_unet").exists():
            shutil.rmtree(seg / "res_unet")  # an interrupted S-net run of this script: train it again
        summary = run_method("res_unet", data, seg, 20 if args.smoke else args.seg_iterations, args.seed,
                             progress=False,
                             size="cpu", overrides=SEG_OVERRIDES)
    timings["segmenter_s"] = round(time.perf_counter() - t0, 1)

    report = out / "report"
    if report.exists():
        shutil.rmtree(report)  # this script's own report folder, rebuilt from the finished runs
    t0 = time.perf_counter()
    result = synthesis_report(gan, seg / "res_unet", data, report, n=n_samples, seed=args.seed, device="cpu")
    timings["report_s"] = round(time.perf_counter() - t0, 1)

    res: Path = args.results
    res.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "synth_slices.png", "histograms.png"):
        shutil.copyfile(report / name, res / name)
    for s in range(len(cfg.stages)):
        grid = gan / "grids" / f"{stage_name(cfg, s)}.png"
        if grid.is_file():
            shutil.copyfile(grid, res / f"grid_{grid.name}")
    small = {k: v for k, v in result.items() if k not in ("samples",)}
    atomic_write_text(res / "report.json", json.dumps(small, indent=2))
    organs = {name: {"hu_error": o["hu_error"], "difference": o["difference"],
                     "hu_error_real_test": o["hu_error_real_test"], "found": o["found"]}
              for name, o in result["organs"].items()}
    flags = " --smoke" if args.smoke else ""
    flags += "".join(f" --gan-set {shlex.quote(item)}" for item in args.gan_set)
    if args.seg_iterations != SEG_ITERATIONS:
        flags += f" --seg-iterations {args.seg_iterations}"
    summary_out = {
        "command": f"python benchmarks/gan_cpu.py --out {out} --results {res}{flags}",
        "smoke": args.smoke, "preset": cfg.to_dict(), "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "timings": timings, "stages": stages,
        "segmenter_test_dice": _dice(summary), "n_samples": result["n_synthetic"],
        "table_1": organs, "all_organs_found_share": result["organs_found"]["share"],
        "all_organs_found_real_test_share": result["organs_found"]["real_test_share"],
        "nearest_neighbour": {k: v for k, v in result["nearest_neighbour"].items() if k != "per_sample"},
        "wasserstein_hu": result["wasserstein_hu"],
    }
    atomic_write_text(res / "summary.json", json.dumps(summary_out, indent=2))
    print((report / "report.md").read_text())
    print(json.dumps({"timings": timings, "stages": stages}, indent=2))


if __name__ == "__main__":
    main()
