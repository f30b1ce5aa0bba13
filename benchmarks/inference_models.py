"""Train the models that the inference checks need, on the demo's phantom data (seed 0).

    python benchmarks/inference_models.py [--out runs/inference_models] [--iterations 500]
        [--paper-iterations 60] [--only stem1 paper]

* ``stem1``: the demo's S-net (``res_unet_aux+cpu``, Dice + CE as in the demo), ``--iterations``.
* ``stem2``: the same with a strided first stage (``network.kwargs={stem_stride: 2}``), same data,
  seed and schedule: its DSC cost is the difference of the two test summaries.
* ``paper``: the paper-size S-net (64/128/256) on the cpu recipe for ``--paper-iterations``: only
  trained enough that its logits have real margins, for the bf16 / engine label-agreement checks
  (a random-weight network's logits are near ties everywhere).

Each run folder gets ``predictions/``, ``evaluation/`` and ``summary.json`` (6 test cases); a
``models.json`` beside them lists mean test DSC per organ and training seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/inference_models"))
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--paper-iterations", type=int, default=60)
    ap.add_argument("--only", nargs="+", choices=["stem1", "stem2", "paper"],
                    help="train only these models (default: all three)")
    args = ap.parse_args()

    import torch

    from advseg.data.phantom import write_phantom_dataset
    from advseg.experiments.demo import DEMO_PHANTOM, run_method

    torch.set_num_threads(2)
    data = args.out / "data"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(data, seed=0, **DEMO_PHANTOM)
    variants = {
        "stem1": ([], args.iterations),
        "stem2": (["network.kwargs={stem_stride: 2}"], args.iterations),
        "paper": (["network.channels=[64, 128, 256]", "train.val_every=1000000"], args.paper_iterations),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    models_json = args.out / "models.json"
    result = json.loads(models_json.read_text()) if models_json.exists() else {}
    for name, (overrides, iters) in variants.items():
        t0 = time.perf_counter()
        summary = run_method("res_unet_aux", data, args.out / name, iters, 0, progress=False,
                             overrides=overrides)
        result[name] = {
            "iterations": iters, "overrides": overrides, "seconds": time.perf_counter() - t0,
            "dsc": {organ: m["dsc"]["mean"] for organ, m in summary.items() if "dsc" in m},
        }
        print(name, json.dumps(result[name]), flush=True)
    models_json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
