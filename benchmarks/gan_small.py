"""Seconds per PGGAN iteration (one D + one G step) at every stage of a GAN preset, on this machine.

    python benchmarks/gan_small.py [--preset small] [--channels 32 32 16 8] [--batch 8] [--repeats 3]

Uses random volumes (no data needed) and prints the time per iteration per stage and the
estimated wall time of a whole run (the sum over stages of iterations x seconds per iteration).
"""

from __future__ import annotations

import argparse
import time

import torch

from advseg.synthesis.config import gan_preset, merge_gan_config
from advseg.synthesis.data import TrainingSet
from advseg.synthesis.trainer import _Trainer, resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--channels", type=int, nargs="+")
    ap.add_argument("--batch", type=int, nargs="+", help="batch size (one, or one per stage)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    updates = {"device": args.device}
    if args.channels:
        updates["channels"] = args.channels
    if args.batch:
        updates["batch_sizes"] = args.batch
    cfg = merge_gan_config(gan_preset(args.preset), updates)
    volumes = torch.rand(8, 1, *cfg.target_shape) * 2 - 1
    tset = TrainingSet(volumes, [], {"affine": torch.eye(4).tolist(), "shape": list(cfg.target_shape)})
    trainer = _Trainer(cfg, tset, resolve_device(cfg.device))
    trainer.new_optimizers()
    total = 0.0
    for stage in range(len(cfg.stages)):
        trainer.step(stage, 0.5)  # warm-up (allocations, kernel selection)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            trainer.step(stage, 0.5)
        dt = (time.perf_counter() - t0) / args.repeats
        total += dt * cfg.iterations(stage)
        print(f"stage {stage} {cfg.stages[stage]} batch {cfg.batch_size(stage)}: {dt:.3f} s/iteration")
    print(f"channels {cfg.channels}: estimated {total / 60:.1f} min for {cfg.iterations_per_stage} "
          f"iterations per stage on {trainer.device} ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
