"""Seconds and peak memory to segment one 64 x 128 x 128 CT volume, per network preset.

    python benchmarks/inference_speed.py [--presets paper cpu] [--repeats 3] [--threads 2] [--device cpu]

Each preset runs in a fresh subprocess (so its peak RSS is its own). The timed path is what
``advseg predict`` does per case after loading: preprocessing, the study's slab recipe (four
16 x 128 x 128 slabs as one batch), argmax and the mapping back to the original geometry. Weights
are random: the speed does not depend on them. Prints one line per preset.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _measure(preset: str, repeats: int, threads: int, device: str, bf16: bool) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    from advseg.config import apply_overrides, load_preset
    from advseg.data.phantom import generate_case
    from advseg.inference.api import SegmentationModel
    from advseg.io import Volume
    from advseg.networks.factory import build_network

    torch.set_num_threads(threads)
    cfg = apply_overrides(
        load_preset(f"res_unet_aux+{preset}"),
        [
            "data.modality=CT",
            "inference.mode=slabs",
            "data.patch_size=[16, 128, 128]",
            "data.resize_xy=128",
            f"train.bf16_cpu={str(bf16).lower()}",
        ],
    )
    net = build_network(cfg.network)
    params = sum(p.numel() for p in net.parameters())
    model = SegmentationModel(cfg, {"nets": {"S": net.state_dict()}}, {}, [], device=device)
    image, _, affine = generate_case(0, (64, 128, 128))
    vol = Volume(image, affine)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.predict_volume(vol)  # warm-up: allocator, oneDNN kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred = model.predict_volume(vol)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    assert pred.labels.array.shape == (64, 128, 128)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "preset": preset,
        "params_M": params / 1e6,
        "threads": threads,
        "device": device,
        "seconds_median": float(np.median(times)),
        "seconds_min": float(min(times)),
        "peak_rss_MiB": rss1 / 1024,
        "inference_rss_growth_MiB": (rss1 - rss0) / 1024,
    }
    if device.startswith("cuda"):
        out["cuda_peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["paper", "cpu"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, args.repeats, args.threads, args.device, args.bf16)))
        return
    print(f"segment one 64x128x128 volume (slab recipe, {args.threads} threads, {args.device})")
    for preset in args.presets:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            preset,
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ] + (["--bf16"] if args.bf16 else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            print(f"{preset}: failed\n{res.stderr[-2000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        extra = f", CUDA peak {r['cuda_peak_MiB']:.0f} MiB" if "cuda_peak_MiB" in r else ""
        print(
            f"{preset:>6}: {r['params_M']:.2f} M params, {r['seconds_median']:.2f} s median "
            f"(min {r['seconds_min']:.2f} s), peak RSS {r['peak_rss_MiB']:.0f} MiB "
            f"(+{r['inference_rss_growth_MiB']:.0f} MiB during inference){extra}"
        )


if __name__ == "__main__":
    main()
