"""Seconds and peak memory to segment one CT volume on the CPU, from reading the NIfTI to writing the
labels: advseg's levers one by one, each engine, MONAI's networks, and the scaling with volume size.

    python benchmarks/inference_speed.py [--sections levers engines monai scaling] [--repeats 3]
        [--threads 2] [--out benchmarks/results/inference]

Every row runs in a fresh subprocess, so its peak RSS (``VmHWM``: imports, model and inference) is
its own. The timed path is what ``advseg predict`` does per case after loading the model:
``read_volume`` -> preprocessing -> the network (the study's slab recipe: four 16 x 128 x 128 slabs
as one batch, unless a row says otherwise) -> argmax -> the mapping back to the original geometry
-> ``write_volume`` (uint8 NIfTI). One untimed warm-up (oneDNN builds its kernels per shape), then
the median of ``--repeats``. Weights are random (the speed does not depend on them; label agreement
and DSC are measured on trained models by ``benchmarks/inference_accuracy.py``).

Sections:

* ``levers``: the paper-size S-net (64/128/256), 64 x 128 x 128: today's path (float32, batch norm
  unfolded) and one change at a time, then the fast path (bf16 + folded batch norm) with each other
  lever varied.
* ``engines``: the fast path's network on ONNX Runtime and OpenVINO (export time reported apart),
  and OpenVINO on the NNCF int8 IR of ``advseg export --int8``, made in a process of its own (export
  time includes the calibration, on the timed volume's own 4 slabs: the weights are random, only the
  speed counts), so the timed process's peak RSS is that of predicting with the IR.
* ``monai``: MONAI's DynUNet with the same widths (filters 64/128/256, strides 1/2/2, residual
  blocks) through ``sliding_window_inference`` (ROI 16 x 128 x 128, overlap 0: the same voxels as the
  slab recipe), MONAI's UNet (channels 64/128/256, strides 2/2), and the S-net with a strided first
  stage; each in float32 and bf16.
* ``scaling``: the fast path at 64 x 128 x 128, 128 x 256 x 256 (slab recipe) and a full
  512 x 512 x 200 CT (general recipe, sliding window 16 x 128 x 128, overlap 0.25): the cpu-size
  S-net at all three, the paper-size S-net at the first two; a table and ``scaling.png``.

Results go to ``<out>/inference_speed.json`` (one object per row) and ``<out>/scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SHAPES = {"small": (64, 128, 128), "medium": (128, 256, 256), "full": (200, 512, 512)}


def _config(row: dict[str, Any]) -> Any:
    from advseg.config import apply_overrides, load_preset

    sets = ["data.modality=CT", f"inference.precision={row.get('precision', 'fp32')}",
            f"inference.slab_batch={row.get('slab_batch', 0)}", "inference.tta_flip=false",
            "inference.keep_largest=false"]
    if row.get("shape", "small") == "full":
        sets += ["data.recipe=general", "inference.mode=sliding_window", "inference.overlap=0.25",
                 "inference.sw_batch_size=4", "data.patch_size=[16, 128, 128]"]
    else:
        side = SHAPES[row.get("shape", "small")][1]
        sets += ["data.recipe=pelvic", "inference.mode=slabs", "data.patch_size=[16, 128, 128]",
                 f"data.resize_xy={side}", f"data.crop_xy={side}",
                 f"data.n_slices={SHAPES[row.get('shape', 'small')][0]}"]
    if row.get("stem_stride", 1) != 1:
        sets.append(f"network.kwargs={{stem_stride: {row['stem_stride']}}}")
    preset = load_preset(f"res_unet_aux+{row.get('preset', 'paper')}")
    return apply_overrides(preset, sets + row.get("set", []))


class _Monai:
    """A MONAI network behind the same predict-volume interface (preprocessing of the S-net's config,
    ``sliding_window_inference`` over 16 x 128 x 128 windows, overlap 0, all windows in one batch)."""

    def __init__(self, kind: str, cfg: Any, precision: str) -> None:
        import torch
        from monai.networks.nets import DynUNet, UNet

        from advseg.data.preprocess import Preprocessor
        from advseg.networks.factory import to_channels_last

        k = cfg.network.out_channels
        if kind == "dynunet":
            self.net = DynUNet(3, 1, k, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                               filters=[64, 128, 256], res_block=True, norm_name="batch")
        else:
            self.net = UNet(3, 1, k, channels=(64, 128, 256), strides=(2, 2), norm="batch")
        self.net.eval()
        to_channels_last(self.net)
        self.cfg, self.bf16 = cfg, precision == "bf16"
        self.pre = Preprocessor(cfg.data, "CT")
        self.params = sum(p.numel() for p in self.net.parameters())
        self.torch = torch

    def predict_volume(self, vol: Any) -> Any:
        import numpy as np
        from monai.inferers import sliding_window_inference

        from advseg.inference.api import Prediction
        from advseg.io import Volume
        from advseg.networks.factory import channels_last_input

        torch = self.torch
        case = self.pre.forward(vol)
        x = torch.from_numpy(case.image).unsqueeze(0)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            logits = sliding_window_inference(
                x, (16, 128, 128), sw_batch_size=4, overlap=0.0, mode="constant",
                predictor=lambda t: self.net(channels_last_input(t)))
        pred = logits.float().argmax(1)[0].numpy().astype(np.uint8)
        return Prediction(Volume(self.pre.invert_label(pred, case.info), vol.affine))


def _peak_rss_mib() -> float:
    """This process's peak resident memory (``VmHWM``). Not ``ru_maxrss``: Linux carries that across
    ``exec`` from the forking parent, so every child would report at least the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(row: dict[str, Any], nifti: str, repeats: int, threads: int) -> dict[str, Any]:
    import os
    import time

    import numpy as np
    import torch

    from advseg.inference.api import SegmentationModel
    from advseg.io import read_volume, write_volume
    from advseg.networks.factory import build_network

    torch.set_num_threads(row.get("threads", threads))
    cfg = _config(row)
    export_s = None
    if row.get("network", "advseg") == "advseg":
        net = build_network(cfg.network)
        params = sum(p.numel() for p in net.parameters())
        t0 = time.perf_counter()
        model = SegmentationModel(cfg, {"nets": {"S": net.state_dict()}}, {}, [], device="cpu",
                                  engine=row.get("engine", "torch"), engine_file=row.get("engine_file"))
        if row.get("engine", "torch") != "torch":
            export_s = row.get("export_s", time.perf_counter() - t0)
        del net
        lever = row.get("lever", {})
        if lever:  # rebuild the torch engine with one lever changed
            from advseg.inference.engines import TorchEngine

            model.engine = TorchEngine(model.source_net, "cpu", model.precision, **lever)
        if row.get("autocast"):  # bf16 by autocast on the float32 (folded) network, for comparison
            from advseg.inference.engines import TorchEngine

            inner = TorchEngine(model.source_net, "cpu", "fp32", fold_bn=row.get("fold_bn", True))

            class _Autocast(torch.nn.Module):
                size_divisor = inner.size_divisor

                def forward(self, x: torch.Tensor) -> torch.Tensor:
                    with torch.autocast("cpu", torch.bfloat16):
                        return inner(x)

            model.engine = _Autocast()
        if row.get("no_inference_mode"):  # torch.no_grad instead of torch.inference_mode
            for name in ("predict_volume", "logits"):
                fn = getattr(SegmentationModel, name).__wrapped__
                setattr(model, name, torch.no_grad()(fn.__get__(model)))
    else:
        model = _Monai(row["network"], cfg, row.get("precision", "fp32"))
        params = model.params
    out_dir = tempfile.mkdtemp(prefix="advseg-speed-")
    target = os.path.join(out_dir, "labels.nii.gz")

    def once() -> np.ndarray:
        vol = read_volume(nifti)
        pred = model.predict_volume(vol)
        write_volume(target, pred.labels, dtype=np.uint8)
        return pred.labels.array

    times = []
    if row.get("warmup", True):
        once()
    for _ in range(repeats):
        t0 = time.perf_counter()
        labels = once()
        times.append(time.perf_counter() - t0)
    np.save(os.path.join(out_dir, "labels.npy"), labels)
    return {
        **{k: v for k, v in row.items() if k != "set"},
        "params_M": params / 1e6, "seconds_median": float(np.median(times)), "seconds_min": float(min(times)),
        "repeats": repeats, "peak_rss_MiB": _peak_rss_mib(),
        "export_s": export_s, "labels": os.path.join(out_dir, "labels.npy"),
        "precision_used": getattr(model, "precision", row.get("precision", "fp32")),
    }


def _prepare_int8(row: dict[str, Any], nifti: str, folder: str, threads: int) -> dict[str, Any]:
    """In its own process (so the timed one's peak RSS is OpenVINO's alone): the row's network as an
    NNCF int8 IR in ``folder``, calibrated on the timed volume's own slabs (the weights are random)."""
    import time

    import torch

    from advseg.inference.api import SegmentationModel
    from advseg.inference.export import export_onnx, save_openvino
    from advseg.inference.quantize import quantize_openvino
    from advseg.networks.factory import build_network

    torch.set_num_threads(row.get("threads", threads))
    cfg = _config(row)
    net = build_network(cfg.network)
    t0 = time.perf_counter()
    model = SegmentationModel(cfg, {"nets": {"S": net.state_dict()}}, {}, [], device="cpu")
    onnx_path = export_onnx(model.source_net, Path(folder) / "model.onnx", cfg.network.in_channels)
    ov_model, info = quantize_openvino(model, onnx_path, {"ct": [Path(nifti)]})
    xml = save_openvino(ov_model, Path(folder) / "model_int8.xml")
    return {"engine_file": str(xml), "export_s": time.perf_counter() - t0,
            "calibration_samples": info["calibration_samples"]}


def _rows(sections: list[str], paper_full: bool = False) -> list[dict[str, Any]]:
    fast = {"precision": "bf16"}
    rows: list[dict[str, Any]] = []
    if "levers" in sections:
        four = {"slab_batch": 4}  # today's path: the four slabs as one batch
        rows += [
            {"name": "today: fp32, BN unfolded, 4 slabs a batch", "precision": "fp32", **four,
             "lever": {"fold_bn": False}, "reference": True},
            {"name": "today + torch.no_grad instead of inference_mode", "precision": "fp32", **four,
             "lever": {"fold_bn": False}, "no_inference_mode": True},
            {"name": "today + contiguous (no channels-last)", "precision": "fp32", **four,
             "lever": {"fold_bn": False, "channels_last": False}},
            {"name": "today + BN folded", "precision": "fp32", **four},
            {"name": "today + BN folded + bf16 autocast", "precision": "fp32", **four, "autocast": True},
            {"name": "today + bf16 weights (BN unfolded)", **fast, **four, "lever": {"fold_bn": False}},
            {"name": "today + bf16 weights + BN folded", **fast, **four},
            {"name": "bf16 + BN folded, 2 slabs a batch", **fast, "slab_batch": 2},
            {"name": "FAST (default): bf16 + BN folded, 1 slab a pass", **fast},
            {"name": "fp32 (--precision fp32): BN folded, 1 slab a pass", "precision": "fp32"},
            {"name": "fast, 1 thread", **fast, "threads": 1},
            {"name": "fast, contiguous (no channels-last)", **fast, "lever": {"channels_last": False}},
        ]
    if "engines" in sections:
        rows += [
            {"name": "onnxruntime fp32", "engine": "onnxruntime", "precision": "fp32"},
            {"name": "openvino fp32", "engine": "openvino", "precision": "fp32"},
            {"name": "openvino bf16", "engine": "openvino", "precision": "bf16"},
            # NNCF int8 (advseg export --int8); the layers left in floating point run f32 or bf16
            {"name": "openvino int8 (float layers fp32)", "engine": "openvino", "int8": True,
             "precision": "fp32"},
            {"name": "openvino int8 (float layers bf16)", "engine": "openvino", "int8": True,
             "precision": "bf16"},
        ]
    if "monai" in sections:
        rows += [
            {"name": "MONAI DynUNet 64/128/256 fp32", "network": "dynunet", "precision": "fp32"},
            {"name": "MONAI DynUNet 64/128/256 bf16 autocast", "network": "dynunet", "precision": "bf16"},
            {"name": "MONAI UNet 64/128/256 fp32", "network": "unet", "precision": "fp32"},
            {"name": "MONAI UNet 64/128/256 bf16 autocast", "network": "unet", "precision": "bf16"},
            {"name": "S-net strided first stage fp32", "stem_stride": 2, "precision": "fp32"},
            {"name": "S-net strided first stage bf16", "stem_stride": 2, **fast},
        ]
    if "scaling" in sections:
        for preset in ("cpu", "paper"):
            for shape in ("small", "medium", "full"):
                if preset == "paper" and shape == "full" and not paper_full:
                    continue  # ~5 minutes a run here: only with --paper-full-ct (docs/inference.md)
                rows.append({"name": f"scaling {preset} {shape}", "preset": preset, "shape": shape, **fast,
                             "scaling": True, "warmup": shape == "small"})
    return rows


def _write_volumes(folder: Path, shapes: set[str]) -> dict[str, str]:
    import numpy as np

    from advseg.data.phantom import generate_case
    from advseg.io import Volume, write_volume

    paths = {}
    for shape in shapes:
        image, _, affine = generate_case(0, SHAPES[shape])
        paths[shape] = str(folder / f"ct_{shape}.nii.gz")
        write_volume(paths[shape], Volume(image.astype(np.int16), affine), dtype=np.int16)
    return paths


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for preset in ("cpu", "paper"):
        pts = [r for r in rows if r.get("scaling") and r["preset"] == preset and "seconds_median" in r]
        pts.sort(key=lambda r: r["voxels"])
        vox = [r["voxels"] / 1e6 for r in pts]
        axes[0].loglog(vox, [r["seconds_median"] for r in pts], "o-", label=f"{preset} S-net")
        axes[1].loglog(vox, [r["peak_rss_MiB"] / 1024 for r in pts], "o-", label=f"{preset} S-net")
    axes[0].set(xlabel="volume (million voxels)", ylabel="seconds per case")
    axes[1].set(xlabel="volume (million voxels)", ylabel="peak RSS (GiB)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("advseg predict, bf16 fast path, NIfTI in -> labels out")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=["levers", "engines", "monai", "scaling"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/inference"))
    ap.add_argument("--only", nargs="+", help="run only the rows whose name contains one of these")
    ap.add_argument("--paper-full-ct", action="store_true",
                    help="also time the paper S-net on the 200 x 512 x 512 CT (one run, about 5 minutes)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--prepare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        row, nifti = json.loads(args.child)
        print(json.dumps(_child(row, nifti, args.repeats, args.threads)))
        return
    if args.prepare:
        row, nifti, folder = json.loads(args.prepare)
        print(json.dumps(_prepare_int8(row, nifti, folder, args.threads)))
        return
    import numpy as np

    rows = _rows(args.sections, args.paper_full_ct)
    if args.only:
        rows = [r for r in rows if any(o in r["name"] for o in args.only)]
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "inference_speed.json"
    old = json.loads(results_path.read_text()) if results_path.exists() else []
    done = []
    with tempfile.TemporaryDirectory(prefix="advseg-speed-in-") as tmp:
        paths = _write_volumes(Path(tmp), {r.get("shape", "small") for r in rows})
        print(f"segment one CT volume, NIfTI in -> labels out, {args.threads} threads, "
              f"median of {args.repeats}")
        ref_labels = None
        for row in rows:
            shape = row.get("shape", "small")
            repeats = args.repeats if shape == "small" else 1
            timed = row
            if row.get("int8"):  # the int8 IR is made in a process of its own (export_s)
                cmd = [sys.executable, __file__, "--prepare", json.dumps([row, paths[shape], tmp]),
                       "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode:
                    print(f"{row['name']}: int8 export failed\n{res.stderr[-1500:]}", flush=True)
                    done.append({**row, "failed": res.stderr[-1500:]})
                    continue
                timed = {**row, **json.loads(res.stdout.strip().splitlines()[-1])}
            cmd = [sys.executable, __file__, "--child", json.dumps([timed, paths[shape]]), "--repeats",
                   str(repeats), "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode:
                print(f"{row['name']}: failed\n{res.stderr[-1500:]}", flush=True)
                done.append({**row, "failed": res.stderr[-1500:]})
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r.pop("engine_file", None)  # a temporary file
            r["shape_zyx"] = list(SHAPES[shape])
            r["voxels"] = int(np.prod(SHAPES[shape]))
            labels = np.load(r.pop("labels"))
            if row.get("reference"):
                ref_labels = labels
            comparable = (r.get("preset", "paper") == "paper" and row.get("network", "advseg") == "advseg"
                          and row.get("stem_stride", 1) == 1)
            if ref_labels is not None and labels.shape == ref_labels.shape and comparable:
                r["same_labels_as_today"] = float((labels == ref_labels).mean())  # random weights
            extra = f", export {r['export_s']:.1f} s" if r.get("export_s") else ""
            print(f"{r['name']:<55} {r['seconds_median']:6.2f} s (min {r['seconds_min']:.2f}), "
                  f"peak RSS {r['peak_rss_MiB']:5.0f} MiB, {r['params_M']:.2f} M params{extra}", flush=True)
            done.append(r)
    names = {r["name"] for r in done}
    known = {r["name"] for r in _rows(["levers", "engines", "monai", "scaling"], paper_full=True)}
    merged = [r for r in old if r.get("name") not in names and r.get("name") in known] + done
    results_path.write_text(json.dumps(merged, indent=2) + "\n")
    by = {r["name"]: r for r in merged if "seconds_median" in r}
    fast = by.get("FAST (default): bf16 + BN folded, 1 slab a pass")
    dyn = by.get("MONAI DynUNet 64/128/256 fp32")
    today = by.get("today: fp32, BN unfolded, 4 slabs a batch")
    fp32 = by.get("fp32 (--precision fp32): BN folded, 1 slab a pass")
    if fast and dyn:
        dyn16 = by.get("MONAI DynUNet 64/128/256 bf16 autocast")
        print(f"advseg fast / MONAI DynUNet fp32: {fast['seconds_median'] / dyn['seconds_median']:.2f}"
              + (f"; advseg fast / DynUNet bf16: {fast['seconds_median'] / dyn16['seconds_median']:.2f}"
                 if dyn16 else "")
              + (f"; advseg fp32 today / DynUNet fp32: {today['seconds_median'] / dyn['seconds_median']:.2f}"
                 if today else "")
              + (f"; advseg --precision fp32 / DynUNet fp32: "
                 f"{fp32['seconds_median'] / dyn['seconds_median']:.2f}"
                 if fp32 else ""))
    if any(r.get("scaling") for r in merged):
        print("\n| S-net | volume (Z x Y x X) | recipe | seconds | peak RSS (MiB) |\n|---|---|---|---|---|")
        for r in merged:
            if r.get("scaling") and "seconds_median" in r:
                recipe = "general, sliding window 0.25" if r["shape"] == "full" else "pelvic, slabs"
                z, y, x = r["shape_zyx"]
                print(f"| {r['preset']} | {z} x {y} x {x} | {recipe} | {r['seconds_median']:.2f} | "
                      f"{r['peak_rss_MiB']:.0f} |")
        _plot(merged, args.out / "scaling.png")


if __name__ == "__main__":
    main()
