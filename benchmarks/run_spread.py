"""Paired per-case comparison of committed cell results, two files at a time.

    python benchmarks/run_spread.py BASE.json OTHER.json [BASE2.json OTHER2.json ...]

Each pair prints, per structure, OTHER's test DSC and HD95 minus BASE's: the mean over the test cases
both hold, a 95 % case-bootstrap interval and the two-sided Wilcoxon signed-rank p (uncorrected).

Its use is the run-to-run spread. The matrix's one-seed comparisons pair one training run of a method
with one of supervised training; the Wilcoxon p over test cases treats both trained models as fixed,
so it says nothing of how far a second run of the *same* configuration lands. Retrain supervised on
the same cases with another seed (``--seed 1 --set train.split_seed=0``: same fold split and labeled
subset, new initialisation, sampling and augmentation) and compare it with the first run here, side by
side with a method's comparison: a method's one-seed gain smaller than this spread is not evidence.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from advseg.errors import InputError
from advseg.evaluation.stats import paired_difference_ci, paired_wilcoxon
from advseg.experiments.results import level_text, read_result


def _values(record: dict, organ: str, metric: str) -> dict[tuple[str], float]:
    return {(r["case"],): float(r[metric]) for r in record["per_case"] if r["organ"] == organ}


def _name(record: dict) -> str:
    c = record["cell"]
    split = record.get("config", {}).get("train", {}).get("split_seed")
    cases = f", cases of seed {split}" if split is not None and split != c["seed"] else ""
    return f"{c['method']}, {level_text(c['level']['label'])}, seed {c['seed']}{cases}"


def compare(base: dict, other: dict) -> list[str]:
    """Markdown rows of ``other`` minus ``base``, one per structure and metric."""
    organs = sorted({r["organ"] for r in base["per_case"]}, key=str)
    rows = []
    for organ in organs:
        for metric, digits in (("dsc", 3), ("hd95", 2)):
            a, b = _values(other, organ, metric), _values(base, organ, metric)
            t = paired_wilcoxon(a, b, metric)
            ci = paired_difference_ci(a, b, metric)
            rows.append(f"| {_name(other)} | {_name(base)} | {organ} | {metric.upper()} | "
                        f"{ci.mean:+.{digits}f} [{ci.low:+.{digits}f}, {ci.high:+.{digits}f}] | "
                        f"{t.p:.2g} | {t.n} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="result files, in pairs: BASE OTHER")
    args = p.parse_args(argv)
    if len(args.files) % 2:
        print(f"error: {args.files[-1]}: result files come in pairs (BASE OTHER)", file=sys.stderr)
        return 2
    records = []
    for f in args.files:
        try:
            rec = read_result(f) if f.is_file() else None
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if rec is None:
            print(f"error: {f}: not a cell result file", file=sys.stderr)
            return 2
        records.append(rec)
    print("| Other | Base | Structure | Metric | Other - base [95 % case bootstrap] | Wilcoxon p | pairs |")
    print("|---|---|---|---|---:|---:|---:|")
    for base, other in zip(records[::2], records[1::2], strict=True):
        print("\n".join(compare(base, other)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
