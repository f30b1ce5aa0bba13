"""PNG figures of real and synthesized CT: training sample grids and the report's slice figure.

Arrays are ``(Z, Y, X)`` in HU; slices are shown with a soft-tissue-friendly window and the
physical aspect ratio of the voxels (``spacing`` ``(z, y, x)`` mm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advseg.io.atomic import atomic_path

DISPLAY_WINDOW = (-400.0, 600.0)  # HU: body, organs and bone all visible


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Atomic PNG write (temp + rename)."""
    with atomic_path(path, suffix=".png") as tmp:  # matplotlib picks the format by the name
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def save_sample_grid(path: str | Path, fake: np.ndarray, real: np.ndarray,
                     spacing: tuple[float, float, float], title: str = "") -> Path:
    """Mid axial and mid coronal slice of each volume: one column pair per volume, real ones first.

    Args:
        fake, real: ``(N, Z, Y, X)`` HU (``real`` may be empty).
        spacing: ``(z, y, x)`` mm of these arrays' grid.
    """
    plt = _pyplot()
    vols = [("real", v) for v in real] + [("synth", v) for v in fake]
    sz, sy, sx = spacing
    fig, axes = plt.subplots(2, len(vols), figsize=(1.9 * len(vols) + 0.4, 4.2), squeeze=False)
    for j, (kind, v) in enumerate(vols):
        z, y, _ = v.shape
        axes[0, j].imshow(v[z // 2], cmap="gray", vmin=DISPLAY_WINDOW[0], vmax=DISPLAY_WINDOW[1],
                          aspect=sy / sx, interpolation="nearest")
        # coronal: superior (high z) on top
        axes[1, j].imshow(v[:, y // 2, :], cmap="gray", vmin=DISPLAY_WINDOW[0], vmax=DISPLAY_WINDOW[1],
                          aspect=sz / sx, origin="lower", interpolation="nearest")
        axes[0, j].set_title(kind, fontsize=8, color="tab:blue" if kind == "real" else "black")
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("axial", fontsize=8)
    axes[1, 0].set_ylabel("coronal", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def save_slices_figure(path: str | Path, volumes: list[np.ndarray], names: list[str],
                       spacing: tuple[float, float, float], labels: list[np.ndarray | None] | None = None,
                       n_slices: int = 5) -> Path:
    """``n_slices`` axial slices (evenly spread over z) of each volume, one row per volume.

    When ``labels`` are given, each organ's outline (segmenter output) is drawn over its slice.
    """
    plt = _pyplot()
    _, sy, sx = spacing
    fig, axes = plt.subplots(len(volumes), n_slices, figsize=(2.0 * n_slices, 2.1 * len(volumes)),
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    for i, v in enumerate(volumes):
        zs = np.linspace(0, v.shape[0] - 1, n_slices + 2)[1:-1].round().astype(int)
        lab = None if labels is None else labels[i]
        for j, z in enumerate(zs):
            ax = axes[i, j]
            ax.imshow(v[z], cmap="gray", vmin=DISPLAY_WINDOW[0], vmax=DISPLAY_WINDOW[1], aspect=sy / sx,
                      interpolation="nearest")
            if lab is not None:
                for c in np.unique(lab[z]):
                    if c == 0:
                        continue
                    ax.contour((lab[z] == c).astype(float), levels=[0.5], colors=[cmap((int(c) - 1) % 10)],
                               linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{names[i]} z={z}", fontsize=7)
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def save_histograms(path: str | Path, real_hu: np.ndarray, fake_hu: np.ndarray,
                    window: tuple[float, float], title: str = "") -> Path:
    """Normalized intensity histograms of real and synthesized voxels (HU) on one axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    bins = np.linspace(window[0], window[1], 101)
    ax.hist(real_hu, bins=bins, density=True, histtype="step", label="real", linewidth=1.2)
    ax.hist(fake_hu, bins=bins, density=True, histtype="step", label="synthesized", linewidth=1.2)
    ax.set_xlabel("HU")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path
