"""Do the fast paths change the labels? Voxel agreement with the float32 torch path and test DSC,
per engine and precision, on trained models (``benchmarks/inference_models.py``).

    python benchmarks/inference_accuracy.py [--models runs/inference_models] [--runs stem1 paper stem2]
        [--out benchmarks/results/inference]

For each run folder: ``advseg predict`` (its own inference settings: the cpu preset's flip TTA and
largest component) of the 6 demo test cases with every engine x precision below, ``advseg
evaluate`` against the labels, and, against ``torch fp32``: the fraction of identical voxels (all
test cases together) and the largest change of an organ's mean DSC. Writes ``accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMBOS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
          ("openvino", "bf16")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("runs/inference_models"))
    ap.add_argument("--runs", nargs="+", default=["stem1", "paper", "stem2"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/inference"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from advseg.evaluation.evaluate import evaluate_folders
    from advseg.inference.api import predict_path
    from advseg.io import read_volume

    torch.set_num_threads(2)
    data = args.models / "data"
    result: dict[str, dict] = {}
    for run in args.runs:
        run_dir = args.models / run / "res_unet_aux"
        result[run] = {}
        ref: dict[str, np.ndarray] = {}
        ref_dsc: dict[str, float] = {}
        for engine, precision in COMBOS if run != "stem2" else COMBOS[:2]:
            key = f"{engine} {precision}"
            pred_dir = args.models / run / f"pred_{engine}_{precision}"
            try:
                files = predict_path(run_dir, data / "imagesTs", pred_dir, engine=engine,
                                     precision=precision, device="cpu", progress=False, overwrite=True)
            except Exception as exc:  # noqa: BLE001 - report the combination and go on
                print(f"{run:>6} {key:<18} failed: {exc!r}"[:2000], flush=True)
                result[run][key] = {"failed": repr(exc)[:2000]}
                continue
            summary = evaluate_folders(pred_dir, data / "labelsTs",
                                       args.models / run / f"eval_{engine}_{precision}",
                                       dataset_json=data / "dataset.json", progress=False, overwrite=True)
            dsc = {organ: m["dsc"]["mean"] for organ, m in summary.items() if "dsc" in m}
            labels = {f.name: read_volume(f).array for f in files}
            entry: dict = {"dsc": dsc}
            if not ref:
                ref, ref_dsc = labels, dsc
            else:
                same = sum(int((labels[n] == ref[n]).sum()) for n in ref)
                total = sum(ref[n].size for n in ref)
                entry["same_voxels"] = same / total
                entry["max_abs_dsc_change"] = max(abs(dsc[o] - ref_dsc[o]) for o in ref_dsc)
            result[run][key] = entry
            extra = (f"same voxels {entry['same_voxels'] * 100:.3f} %, max |dDSC| "
                     f"{entry['max_abs_dsc_change']:.4f}" if "same_voxels" in entry else "reference")
            print(f"{run:>6} {key:<18} mean DSC {np.mean(list(dsc.values())):.4f}  {extra}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
