"""How realistic are the synthesized volumes? (the pelvic CT study's Table I and Fig. 3)

1. Per-organ mean HU. A trained segmenter S labels each synthesized volume; organ ``c``'s mean HU
   in synthesized volume ``i`` is compared with the mean over the real labeled volumes (ground-truth
   labels) of their organ-``c`` mean HU::

       d_ic = mean_HU(synth_i, S(synth_i) == c) - mean_j mean_HU(real_j, label_j == c)

   reported as mean +- std over ``i`` (with the real and synthesized means +- std themselves).
   HU are clipped to the GAN's window on both sides, since samples cannot leave it.
2. Intensity histograms: the 1-Wasserstein distance (``scipy.stats.wasserstein_distance``, in HU)
   between the voxel values of the real volumes, prepared as the GAN's training data, and of the
   synthesized ones; and per organ, between the real organ voxels and the voxels S assigns to it.
3. Figures: five axial slices of two synthesized volumes with S's organ outlines
   (``synth_slices.png``) and the two histograms (``histograms.png``).

Written to ``out``: ``report.json``, ``report.md``, the figures, and ``samples/`` (unless a folder
of samples is given).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance

from advseg.data.dataset import load_dataset
from advseg.errors import InputError
from advseg.inference.api import load_model
from advseg.io import Volume, read_volume
from advseg.io.atomic import atomic_write_text
from advseg.io.guard import check_output_dir, record_outputs, refuse_overlap
from advseg.synthesis.data import find_training_images, load_training_set, to_hu
from advseg.synthesis.figures import save_histograms, save_slices_figure
from advseg.synthesis.sample import SAMPLE_PREFIX, load_generator, sample_gan

MAX_VOXELS = 400_000  # voxels drawn per distribution for the Wasserstein distances (speed)


def _load_segmenter(model_dir: Path, device: str):
    """The trained S-net: an object with ``predict_volume(Volume)`` (a Volume of labels, or an object
    whose ``.labels`` is one, in the input's geometry)."""

    return load_model(model_dir, checkpoint="best", device=device)


def _segment(model, vol: Volume) -> np.ndarray:
    pred = model.predict_volume(vol)
    labels = getattr(pred, "labels", pred)
    arr = np.asarray(labels.array if isinstance(labels, Volume) else labels)
    if arr.shape != vol.shape:
        raise RuntimeError(f"the segmenter returned labels of shape {arr.shape} for an image of {vol.shape}")
    return arr


def _organ_means(hu: np.ndarray, labels: np.ndarray, organs: dict[int, str]) -> dict[int, float]:
    return {c: float(hu[labels == c].mean()) for c in organs if np.any(labels == c)}


def _subsample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return values if values.size <= MAX_VOXELS else rng.choice(values, MAX_VOXELS, replace=False)


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def _fmt(s: dict[str, Any], signed: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:+.1f} ± {s['std']:.1f}" if signed else f"{s['mean']:.1f} ± {s['std']:.1f}"


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Synthesized CT vs real CT",
        "",
        f"{result['n_synthetic']} synthesized volumes (segmented by {result['model']}), "
        f"{result['n_real']} real labeled volumes (ground truth). HU clipped to {result['hu_window']}.",
        "",
        "| organ | real mean HU | synthesized mean HU | difference (synth - real) | synth with organ "
        "| W1 (HU) |",
        "|---|---|---|---|---|---|",
    ]
    for name, o in result["organs"].items():
        w = "n/a" if o["wasserstein_hu"] is None else f"{o['wasserstein_hu']:.1f}"
        lines.append(f"| {name} | {_fmt(o['real'])} | {_fmt(o['synthetic'])} | "
                     f"{_fmt(o['difference'], True)} | {o['synthetic']['n']}/{result['n_synthetic']} | {w} |")
    lines += ["", f"Whole-volume intensity histogram: Wasserstein distance {result['wasserstein_hu']:.1f} "
              "HU.",
              "", f"Figures: `{Path(result['figure']).name}`, `{Path(result['histogram_figure']).name}`.", ""]
    return "\n".join(lines)


_REPORT_FILES = ("synth_slices.png", "histograms.png", "report.json", "report.md")


def synthesis_report(gan_dir: str | Path, model_dir: str | Path, data: str | Path, out: str | Path,
                     n: int = 10, seed: int = 0, samples: str | Path | None = None,
                     device: str = "auto") -> dict[str, Any]:
    """Compare synthesized volumes with the real labeled ones (module docstring); returns the report.

    Args:
        gan_dir: a finished GAN run (its config gives the HU window and the training preparation).
        model_dir: a trained segmentation run (:func:`advseg.inference.api.load_model`).
        data: the labeled dataset folder (``dataset.json`` names the organs).
        out: report folder.
        n, seed: samples to synthesize into ``out/samples`` (ignored when ``samples`` is given).
        samples: an existing folder of ``synth_*.nii.gz`` volumes to evaluate instead.

    Returns:
        ``{"organs": {name: {"real", "synthetic", "difference": {mean, std, n}, "wasserstein_hu"}},
        "wasserstein_hu", "n_synthetic", "n_real", "figure", "histogram_figure", ...}``
    """

    out = Path(out)
    refuse_overlap([out], [data, samples], hosts=[gan_dir, model_dir])
    check_output_dir(out, "synthesize report")
    # Validate every input before writing anything.
    _, gan_cfg, _ = load_generator(gan_dir, device="cpu")
    index = load_dataset(data)
    organs = {c: name for c, name in index.labels.items() if c != 0}
    real_cases = [c for c in index.training if c.label is not None]
    if not real_cases:
        raise InputError(data, "no labeled training cases to compare with")
    sample_files: list[Path] = []
    if samples is not None:
        samples = Path(samples)
        if not samples.is_dir():
            raise InputError(samples, "samples folder not found")
        sample_files = sorted(samples.glob(f"{SAMPLE_PREFIX}*.nii*"))
        if not sample_files:
            raise InputError(samples, f"no {SAMPLE_PREFIX}*.nii.gz volumes in this folder")
    elif n < 1:
        raise InputError(None, f"--n must be >= 1, got {n}")
    model = _load_segmenter(Path(model_dir), device)
    window = [float(v) for v in gan_cfg.hu_window]

    record_outputs(out, "synthesize report", [out / f for f in _REPORT_FILES])
    if samples is None:
        # the sample folder is sample_gan's own (with its own manifest), so the report may replace it
        sample_files = sample_gan(gan_dir, n, out / "samples", seed=seed, device=device)
    rng = np.random.default_rng(seed)

    synth_hu, synth_labels, synth_means = [], [], []
    for path in sample_files:
        vol = read_volume(path)
        labels = _segment(model, vol)
        hu = np.clip(vol.array.astype(np.float32), *window)
        synth_hu.append(hu)
        synth_labels.append(labels)
        synth_means.append(_organ_means(hu, labels, organs))

    real_means = []
    real_organ_voxels: dict[int, list[np.ndarray]] = {c: [] for c in organs}
    for case in real_cases:
        hu = np.clip(read_volume(case.images[0]).array.astype(np.float32), *window)
        labels = np.asarray(read_volume(case.label).array)
        if labels.shape != hu.shape:
            raise InputError(case.label, f"label shape {labels.shape} differs from its image's {hu.shape}")
        real_means.append(_organ_means(hu, labels, organs))
        for c in organs:
            real_organ_voxels[c].append(_subsample(hu[labels == c], rng))

    organ_rows: dict[str, Any] = {}
    for c, name in organs.items():
        real_vals = [m[c] for m in real_means if c in m]
        synth_vals = [m[c] for m in synth_means if c in m]
        ref = float(np.mean(real_vals)) if real_vals else None
        diffs = [v - ref for v in synth_vals] if ref is not None else []
        real_vox = np.concatenate(real_organ_voxels[c])
        synth_vox = np.concatenate([h[lab == c] for h, lab in zip(synth_hu, synth_labels, strict=True)])
        w = (float(wasserstein_distance(_subsample(real_vox, rng), _subsample(synth_vox, rng)))
             if real_vox.size and synth_vox.size else None)
        organ_rows[name] = {"label": c, "real": _stats(real_vals), "synthetic": _stats(synth_vals),
                            "difference": _stats(diffs), "wasserstein_hu": w}

    # Whole-volume histograms: real volumes prepared exactly as the GAN's training data.
    tset = load_training_set(find_training_images(data), gan_cfg.target_shape, gan_cfg.hu_window,
                             gan_cfg.n_slices, gan_cfg.crop_xy)
    real_all = _subsample(to_hu(tset.volumes.numpy(), window).ravel(), rng)
    synth_all = _subsample(np.concatenate([h.ravel() for h in synth_hu]), rng)
    w_all = float(wasserstein_distance(real_all, synth_all))

    shown = list(range(min(2, len(synth_hu))))
    spacing = read_volume(sample_files[0]).spacing
    figure = save_slices_figure(out / "synth_slices.png", [synth_hu[i] for i in shown],
                                [Path(sample_files[i]).name.split(".")[0] for i in shown], spacing,
                                labels=[synth_labels[i] for i in shown])
    hist = save_histograms(out / "histograms.png", real_all, synth_all, tuple(window),
                           f"real vs synthesized (W1 = {w_all:.1f} HU)")
    result = {
        "gan_dir": str(gan_dir), "model": str(model_dir), "data": str(data),
        "n_synthetic": len(sample_files), "n_real": len(real_cases), "hu_window": window,
        "samples": [str(p) for p in sample_files], "organs": organ_rows, "wasserstein_hu": w_all,
        "figure": str(figure), "histogram_figure": str(hist),
    }
    atomic_write_text(out / "report.json", json.dumps(result, indent=2))
    atomic_write_text(out / "report.md", _markdown(result))
    return result
