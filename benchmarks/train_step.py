"""Seconds per training iteration and peak memory: supervised vs adversarial vs semi-adversarial.

    python benchmarks/train_step.py [--size cpu] [--steps 10] [--threads 2] [--device cpu]
        [--method NAME[@KEY=VALUE;KEY=VALUE] ...] [--set KEY=VALUE ...]

The same S-net (``res_unet_aux`` at the chosen size preset) is trained by the three trainers of the
pelvic study's ablation ladder on random 16-slice slabs of a small phantom set. Each trainer runs in a
fresh subprocess so its peak RSS is its own; the semi-adversarial step is measured after
pre-training with an unlabeled batch on every iteration (its most expensive form). Prints one line
per method and the ratios to the supervised step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

METHODS = ("res_unet_aux", "res_unet_aux_adv", "res_unet_aux_adv_semi")


def _measure(
    method: str, size: str, steps: int, threads: int, device: str, data: str, extra: list[str]
) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    from advseg.config import apply_overrides, load_preset
    from advseg.training.api import prepare_training
    from advseg.training.variants import trainer_class

    torch.set_num_threads(threads)
    preset, _, own = method.partition("@")  # NAME@key=value;key=value: overrides of this method only
    extra = [*extra, *(kv for kv in own.split(";") if kv)]
    cfg = apply_overrides(
        load_preset(f"{preset}+{size}"),
        [
            "adversarial.pretrain_iterations=0",
            "adversarial.unlabeled_prob=1.0",
            "train.folds=2",
            f"train.iterations={steps + 2}",
            "train.val_every=0",
            "train.checkpoint_every=0",
            *extra,
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg, tdata, _ = prepare_training(cfg, data, f"{tmp}/run", progress=False)
        trainer = trainer_class(cfg)(cfg, f"{tmp}/run", tdata, device=device)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            trainer.training_step()
            trainer.scaler.update()
            trainer.iteration += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:  # the first steps pay for allocator and kernel warm-up
                times.append(time.perf_counter() - t0)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "method": method,
        "seconds_median": float(np.median(times)),
        "seconds_mean": float(np.mean(times)),
        "peak_rss_MiB": rss1 / 1024,
        "train_rss_growth_MiB": (rss1 - rss0) / 1024,
        "batch": cfg.train.batch_size,
        "patch": cfg.data.patch_size,
    }
    if device.startswith("cuda"):
        out["cuda_peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="cpu", help="size preset: tiny | cpu | paper")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", action="append",
                    help="method preset (repeatable; default: the ladder); NAME@key=value;key=value adds "
                         "overrides for that method alone, e.g. "
                         "res_unet_aux_adv_semi@adversarial.joint_forward=true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(
            json.dumps(
                _measure(args.child, args.size, args.steps, args.threads, args.device, args.data, args.set)
            )
        )
        return
    from advseg.data.phantom import write_phantom_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/data"
        write_phantom_dataset(data, labeled=4, unlabeled=2, test=0, seed=0)
        results = []
        for method in args.method or METHODS:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                method,
                "--size",
                args.size,
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
                "--device",
                args.device,
                "--data",
                data,
                *[f"--set={kv}" for kv in args.set],
            ]
            res = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                check=False,
                env={**__import__("os").environ, "ADVSEG_CACHE": f"{tmp}/cache"},
            )
            if res.returncode:  # say so and go on: one failing form must not hide the others' figures
                last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
                results.append({"method": method, "failed": last[:300]})
                continue
            results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    ok = [r for r in results if "failed" not in r]
    if not ok:
        print("every method failed:\n" + "\n".join(f"{r['method']}: {r['failed']}" for r in results))
        sys.exit(1)
    base = ok[0]["seconds_median"]
    base_mean = ok[0]["seconds_mean"]
    r0 = ok[0]
    print(
        f"training step, S = res_unet_aux+{args.size}, batch {r0['batch']} x patch {r0['patch']}, "
        f"{args.threads} threads, {args.device}" + (f", {' '.join(args.set)}" if args.set else "")
    )
    for r in results:
        if "failed" in r:
            print(f"{r['method']:>40}: failed: {r['failed']}")
            continue
        extra = f", CUDA peak {r['cuda_peak_MiB']:.0f} MiB" if "cuda_peak_MiB" in r else ""
        print(
            f"{r['method']:>40}: {r['seconds_median']:.3f} s/step ({r['seconds_median'] / base:.2f}x; mean "
            f"{r['seconds_mean']:.3f} s, {r['seconds_mean'] / base_mean:.2f}x), "
            f"peak RSS {r['peak_rss_MiB']:.0f} MiB (+{r['train_rss_growth_MiB']:.0f} MiB in training){extra}"
        )


if __name__ == "__main__":
    main()
