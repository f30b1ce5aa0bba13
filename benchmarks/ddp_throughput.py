"""Training throughput of 1 vs N torchrun processes (DistributedDataParallel, gloo on the CPU).

    python benchmarks/ddp_throughput.py [--procs 1,2] [--preset res_unet_aux+cpu] [--steps 10]
        [--warmup 3] [--threads-total 2] [--json benchmarks/results/ddp_throughput.json]

For each process count N it starts ``torchrun --standalone --nproc_per_node=N`` on this file (worker
mode): every rank builds the run's trainer on a phantom set written once (4 labeled cases,
32 x 128 x 128), takes ``--warmup`` training steps, then times ``--steps`` (barriers before and after,
so the time is the slowest rank's). Each rank gets ``threads-total / N`` intra-op threads, so 1 x 2
threads is compared with 2 x 1 thread on the same cores. Printed per N: seconds per training step (one
iteration: every rank's batch), samples per second (``batch_size x N`` per step: the global batch grows
with N) and the peak resident memory of one rank. On a 2-core machine expect no speed-up: the point
of the 2-process path there is correctness; the figure shows what DDP's gradient all-reduce costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    import torch

    from advseg.config import load_preset
    from advseg.training import distributed
    from advseg.training.api import prepare_training
    from advseg.training.variants import trainer_class

    distributed.init_from_env()
    torch.set_num_threads(args.threads)
    cfg = load_preset(args.preset)
    out = Path(args.scratch) / f"run_{distributed.world_size()}"
    cfg, tdata, _ = distributed.prepare_on_ranks(prepare_training, cfg, args.data, out, None, False, False)
    trainer = trainer_class(cfg)(cfg, out, tdata, device="cpu")
    for _ in range(args.warmup):
        trainer.training_step()
    distributed.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.training_step()
    distributed.barrier()
    seconds = time.perf_counter() - t0
    rss = distributed.all_gather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if distributed.is_main():
        n = distributed.world_size()
        print("RESULT " + json.dumps({
            "processes": n, "threads_per_process": args.threads, "preset": args.preset,
            "batch_per_process": cfg.train.batch_size, "global_batch": cfg.train.batch_size * n,
            "steps": args.steps, "step_s": seconds / args.steps,
            "samples_per_s": cfg.train.batch_size * n * args.steps / seconds,
            "peak_rss_mib_per_rank": max(rss)}), flush=True)
    del trainer
    distributed.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", default="1,2")
    p.add_argument("--preset", default="res_unet_aux+cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads-total", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    from advseg.data.phantom import write_phantom_dataset

    torchrun = Path(sys.executable).with_name("torchrun")
    results = []
    with tempfile.TemporaryDirectory(prefix="ddp_bench_") as tmp:
        data = Path(tmp) / "data"
        write_phantom_dataset(data, labeled=4, unlabeled=0, test=0, shape=(32, 128, 128), seed=0)
        for n in [int(x) for x in args.procs.split(",")]:
            threads = max(1, args.threads_total // n)
            # the CLI's OpenMP setting (advseg.cli.main): idle threads spin briefly, then sleep
            env = {"GOMP_SPINCOUNT": "10000", **os.environ, "OMP_NUM_THREADS": str(threads),
                   "ADVSEG_CACHE": str(Path(tmp) / "cache")}
            cmd = [str(torchrun), "--standalone", f"--nproc_per_node={n}", __file__, "--worker",
                   "--threads", str(threads), "--preset", args.preset, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--data", str(data), "--scratch", tmp]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                sys.exit(f"torchrun with {n} process(es) failed:\n{tail}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
    print(f"{'processes':>9} {'threads':>7} {'global batch':>12} {'s/step':>8} {'samples/s':>9} "
          f"{'RSS/rank':>9}")
    for r in results:
        print(f"{r['processes']:>9} {r['threads_per_process']:>7} {r['global_batch']:>12} "
              f"{r['step_s']:>8.3f} {r['samples_per_s']:>9.2f} {r['peak_rss_mib_per_rank']:>7.0f} MiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
