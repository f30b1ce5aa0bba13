"""Seconds to compute every metric for one 64 x 128 x 128 phantom case (5 organs).

    python benchmarks/metrics_speed.py [--repeats 5]

The prediction is the truth of the phantom case shifted by one voxel in Y and X, so every distance
is non-trivial.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from advseg.data.phantom import LABELS, generate_case
from advseg.io import Volume
from advseg.metrics.accumulate import compute_case_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    _, truth, affine = generate_case(0, (64, 128, 128))
    pred = np.roll(truth, (1, 1), axis=(1, 2))
    spacing = Volume(truth, affine).spacing
    labels = dict(LABELS)
    compute_case_metrics(pred, truth, labels, spacing)  # imports and caches
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        compute_case_metrics(pred, truth, labels, spacing)
        times.append(time.perf_counter() - t0)
    print(f"all metrics, 64x128x128, {len(labels) - 1} organs: median {np.median(times):.3f} s, "
          f"min {min(times):.3f} s over {args.repeats} runs")


if __name__ == "__main__":
    main()
