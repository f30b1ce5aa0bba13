"""Do the fast paths change the labels? Voxel agreement with the float32 torch path and test DSC,
per engine and precision, on trained models (``benchmarks/inference_models.py``).

    python benchmarks/inference_accuracy.py [--models runs/inference_models] [--runs stem1 paper stem2]
        [--combos "torch fp32" "openvino int8"] [--out benchmarks/results/inference]

For each run folder: ``advseg predict`` (its own inference settings: the cpu preset's flip TTA and
largest component) of the 6 demo test cases with every engine x precision below, ``advseg
evaluate`` against the labels, and, against ``torch fp32``: the fraction of identical voxels (all
test cases together) and the largest change of an organ's mean DSC. Writes ``accuracy.json``
(entries of runs and combinations not run this time are kept from the file there).

``openvino int8``: ``advseg export --format openvino --int8`` of the run (calibrated on the run's own
training cases, the default; ``imagesTr`` of the demo data, never the test cases), run by
``advseg predict --engine openvino --engine-file`` with its float layers in f32. ``openvino
int8-all``: the same with the first convolution and the classifier heads quantised too (no
``ignored_scope``), to see what keeping them in float buys.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

COMBOS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
          ("openvino", "bf16"), ("openvino", "int8"), ("openvino", "int8-all")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("runs/inference_models"))
    ap.add_argument("--runs", nargs="+", default=["stem1", "paper", "stem2"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/inference"))
    ap.add_argument("--combos", nargs="+", help='only these "engine precision" (torch fp32, the '
                    "reference, always runs first)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from advseg.evaluation.evaluate import evaluate_folders
    from advseg.inference.api import predict_path
    from advseg.inference.deploy import export_run
    from advseg.io import read_volume

    torch.set_num_threads(2)
    data = args.models / "data"
    result_path = args.out / "accuracy.json"
    result: dict[str, dict] = json.loads(result_path.read_text()) if result_path.exists() else {}
    combos = COMBOS if not args.combos else [COMBOS[0],
                                             *(c for c in COMBOS[1:] if " ".join(c) in args.combos)]
    for run in args.runs:
        run_dir = args.models / run / "res_unet_aux"
        result.setdefault(run, {})
        ref: dict[str, np.ndarray] = {}
        ref_dsc: dict[str, float] = {}
        for engine, precision in combos if run != "stem2" else combos[:2]:
            key = f"{engine} {precision}"
            pred_dir = args.models / run / f"pred_{engine}_{precision}"
            try:
                engine_file, extra_info = None, {}
                if precision.startswith("int8"):
                    engine_file = args.models / run / precision / "model.xml"
                    t0 = time.perf_counter()
                    export_run(run_dir, engine_file, "openvino", int8=True, overwrite=True,
                               keep_float=precision == "int8")
                    meta = json.loads(engine_file.with_suffix(".json").read_text())["int8"]
                    extra_info = {"export_s": time.perf_counter() - t0,
                                  **{k: meta[k] for k in ("calibration_cases", "calibration_samples",
                                                          "float_layers", "preset", "tool")}}
                files = predict_path(run_dir, data / "imagesTs", pred_dir, engine=engine,
                                     precision="fp32" if precision.startswith("int8") else precision,
                                     device="cpu", progress=False, overwrite=True, engine_file=engine_file)
            except Exception as exc:  # noqa: BLE001 - report the combination and go on
                print(f"{run:>6} {key:<18} failed: {exc!r}"[:2000], flush=True)
                result[run][key] = {"failed": repr(exc)[:2000]}
                continue
            summary = evaluate_folders(pred_dir, data / "labelsTs",
                                       args.models / run / f"eval_{engine}_{precision}",
                                       dataset_json=data / "dataset.json", progress=False, overwrite=True)
            dsc = {organ: m["dsc"]["mean"] for organ, m in summary.items() if "dsc" in m}
            labels = {f.name: read_volume(f).array for f in files}
            entry: dict = {"dsc": dsc, **extra_info}
            if not ref:
                ref, ref_dsc = labels, dsc
            else:
                same = sum(int((labels[n] == ref[n]).sum()) for n in ref)
                total = sum(ref[n].size for n in ref)
                entry["same_voxels"] = same / total
                entry["max_abs_dsc_change"] = max(abs(dsc[o] - ref_dsc[o]) for o in ref_dsc)
                entry["dsc_change"] = {o: dsc[o] - ref_dsc[o] for o in ref_dsc}
            result[run][key] = entry
            extra = (f"same voxels {entry['same_voxels'] * 100:.3f} %, max |dDSC| "
                     f"{entry['max_abs_dsc_change']:.4f}" if "same_voxels" in entry else "reference")
            print(f"{run:>6} {key:<18} mean DSC {np.mean(list(dsc.values())):.4f}  {extra}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
