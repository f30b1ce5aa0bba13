"""Validation figures written during training: image, ground truth, prediction, D's confidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advseg.io.atomic import atomic_path


def save_validation_figure(
    path: str | Path,
    cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
    num_classes: int,
    title: str = "",
) -> None:
    """One row per case: image, truth, prediction (and confidence if given) on the axial slice with
    the most foreground.

    ``cases``: ``(name, image (Z, Y, X), truth (Z, Y, X), pred (Z, Y, X), confidence (Z, Y, X) | None)``,
    all in the preprocessed grid.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4 if any(c[4] is not None for c in cases) else 3
    fig, axes = plt.subplots(len(cases), cols, figsize=(3 * cols, 3 * len(cases)), squeeze=False)
    cmap = plt.get_cmap("tab10", max(num_classes, 2))
    for row, (name, image, truth, pred, conf) in zip(axes, cases, strict=True):
        z = int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(1)))
        panels = [
            ("image", image[z], "gray", None),
            ("truth", truth[z], cmap, (0, num_classes - 1)),
            ("prediction", pred[z], cmap, (0, num_classes - 1)),
        ]
        if cols == 4:
            panels.append(
                ("D confidence", conf[z] if conf is not None else np.zeros_like(image[z]), "magma", (0, 1))
            )
        for ax, (label, arr, cm, lim) in zip(row, panels, strict=True):
            if label in ("truth", "prediction"):
                ax.imshow(image[z], cmap="gray")
                ax.imshow(
                    np.ma.masked_equal(arr, 0),
                    cmap=cm,
                    vmin=lim[0],
                    vmax=lim[1],
                    alpha=0.6,
                    interpolation="nearest",
                )
            else:
                ax.imshow(
                    arr, cmap=cm, vmin=None if lim is None else lim[0], vmax=None if lim is None else lim[1]
                )
            ax.set_title(f"{name} z={z}: {label}" if label == "image" else label, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:  # matplotlib picks the format by the name
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
