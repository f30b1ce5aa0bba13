"""Training log: one JSON object per logged iteration in ``log.jsonl`` and a learning-curve plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from advseg.io.atomic import atomic_path, atomic_write_text

#: validation-record keys drawn in the diagnostics panel: (legend, line style)
DIAGNOSTIC_CURVES = {
    "d_auc_real_fake": ("AUC D real vs fake (S wrong)", "-"),
    "conf_auc_correct": ("AUC D conf., right vs wrong", "-"),
    "softmax_auc_correct": ("AUC max-softmax, right vs wrong", "-"),
    "d_pass_fraction": ("pass fraction, D > T_semi", "--"),
    "softmax_pass_fraction": ("pass fraction, softmax > T_semi", "--"),
    "t_semi": ("T_semi in use", ":"),
}


class TrainingLog:
    """Append-only log that can be rewound to an iteration on resume (so it matches the checkpoint).

    ``path=None``: rows are kept in memory only, nothing is read or written (the log of a distributed
    rank other than 0, which never touches the disk)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.rows: list[dict[str, Any]] = []
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a kill mid-append: its work is lost anyway
                    continue

    def truncate(self, iteration: int) -> None:
        """Drop rows written after ``iteration`` (they belong to work lost in a crash)."""
        self.rows = [r for r in self.rows if r.get("iteration", 0) <= iteration]
        if self.path is None:
            return
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict[str, Any]) -> None:
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.rows.append(row)
        if self.path is None:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def plot(self, path: str | Path) -> None:
        """Every loss (keys starting with ``loss``) and validation DSC against the iteration; for an
        adversarial run with D diagnostics (:mod:`advseg.training.diagnostics`) a third panel: D's AUCs
        beside S's max-softmax AUC, the pass fractions at T_semi and the threshold in use."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.rows if r.get("kind") == "train"]
        val = [r for r in self.rows if r.get("kind") == "val"]
        diag = [r for r in val if any(r.get(k) is not None for k in DIAGNOSTIC_CURVES)]
        fig, axes = plt.subplots(1, 3 if diag else 2, figsize=(16.5 if diag else 11, 4))
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
        if diag:
            ax = axes[2]
            for key, (label, style) in DIAGNOSTIC_CURVES.items():
                pts = [(r["iteration"], r[key]) for r in diag if r.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, lw=1.2, label=label)
            ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
            ax.set(xlabel="iteration", ylabel="AUC / fraction", ylim=(0, 1.02),
                   title="D diagnostics (validation cases as unlabeled)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:  # matplotlib picks the format by the name
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
