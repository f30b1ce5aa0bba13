"""Training log: one JSON object per logged iteration in ``log.jsonl`` and a learning-curve plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from advseg.io.atomic import atomic_path, atomic_write_text


class TrainingLog:
    """Append-only log that can be rewound to an iteration on resume (so it matches the checkpoint)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a kill mid-append: its work is lost anyway
                    continue

    def truncate(self, iteration: int) -> None:
        """Drop rows written after ``iteration`` (they belong to work lost in a crash)."""
        self.rows = [r for r in self.rows if r.get("iteration", 0) <= iteration]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict[str, Any]) -> None:
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def plot(self, path: str | Path) -> None:
        """Every loss (keys starting with ``loss``) and validation DSC against the iteration."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.rows if r.get("kind") == "train"]
        val = [r for r in self.rows if r.get("kind") == "val"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        keys = sorted({k for r in train for k in r if k.startswith("loss")})
        for k in keys:
            pts = [(r["iteration"], r[k]) for r in train if r.get(k) is not None]
            if pts:
                axes[0].plot(*zip(*pts, strict=True), label=k, lw=1)
        axes[0].set(xlabel="iteration", ylabel="loss", title="training losses")
        if any(v > 0 for r in train for k in keys if (v := r.get(k)) is not None):
            axes[0].set_yscale("log")
        axes[0].legend(fontsize=8)
        dkeys = sorted({k for r in val for k in r if k.startswith("dsc_")})
        for k in dkeys:
            axes[1].plot([r["iteration"] for r in val], [r.get(k) for r in val], marker="o", label=k[4:])
        axes[1].set(xlabel="iteration", ylabel="DSC", title="validation DSC", ylim=(0, 1))
        if dkeys:
            axes[1].legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:  # matplotlib picks the format by the name
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
