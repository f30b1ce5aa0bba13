"""How realistic are the synthesized volumes? (the pelvic CT study's Table I and Fig. 3)

1. Per-organ mean HU (Table I). A trained segmenter S labels each synthesized volume; organ ``c``'s
   mean HU in synthesized volume ``i`` is compared with the mean over the real labeled volumes
   (ground-truth labels) of their organ-``c`` mean HU::

       d_ic = mean_HU(synth_i, S(synth_i) == c) - mean_j mean_HU(real_j, label_j == c)

   reported as mean +- std over ``i`` of the signed ``d_ic`` ("difference") and of the **HU error**
   ``|d_ic|`` (Table I's figure), with the real and synthesized means +- std themselves.
   HU are clipped to the GAN's window on both sides, since samples cannot leave it. When the
   dataset has test cases, S labels them too and the same HU error of these *real* held-out
   volumes is given: the floor a perfect generator would reach with this S.
2. Organs found: the share of samples in which S finds every organ, an organ counting as found
   when its largest connected component holds at least ``min_fraction`` of the organ's median
   volume (mL) in the real labeled volumes (:func:`advseg.synthesis.metrics.organs_found`); per
   organ too, with S's organ volumes (mL) next to the real ones.
3. Copy check: each sample's nearest training volume by ``1 - NCC`` (mirror images included),
   against each training volume's nearest other training volume
   (:func:`advseg.synthesis.metrics.nearest_training`), both on the GAN's grid.
4. Intensity histograms: the 1-Wasserstein distance (``scipy.stats.wasserstein_distance``, in HU)
   between the voxel values of the real volumes, prepared as the GAN's training data, and of the
   synthesized ones; and per organ, between the real organ voxels and the voxels S assigns to it.
5. Figures: five axial slices of one real volume (ground-truth outlines) and two synthesized
   volumes (S's organ outlines) (``synth_slices.png``, Fig. 3), and the two histograms
   (``histograms.png``).

Written to ``out``: ``report.json``, ``report.md``, the figures, and ``samples/`` (unless a folder
of samples is given).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from advseg.data.dataset import load_dataset
from advseg.data.preprocess import normalize_ct
from advseg.errors import InputError
from advseg.inference.api import load_model
from advseg.io import Volume, read_volume
from advseg.io.atomic import atomic_write_text
from advseg.io.guard import check_output_dir, record_outputs, refuse_overlap
from advseg.synthesis.data import find_training_images, load_training_set, resize_volume, to_hu
from advseg.synthesis.figures import save_histograms, save_slices_figure
from advseg.synthesis.metrics import (
    hu_errors,
    nearest_training,
    organ_means,
    organs_found,
    training_nearest_other,
)
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
    found = result["organs_found"]
    lines = [
        "# Synthesized CT vs real CT",
        "",
        f"{result['n_synthetic']} synthesized volumes (segmented by {result['model']}), "
        f"{result['n_real']} real labeled volumes (ground truth). HU clipped to {result['hu_window']}.",
        "",
        "HU error = |mean HU of the organ in a sample (where S finds it) - mean over the real volumes of "
        "the organ's mean HU| (mean ± std over the samples holding the organ).",
        "",
        "| organ | real mean HU | synthesized mean HU | difference (synth - real) | HU error "
        "| HU error, real test (S) | found | volume mL real | volume mL synth | W1 (HU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, o in result["organs"].items():
        w = "n/a" if o["wasserstein_hu"] is None else f"{o['wasserstein_hu']:.1f}"
        lines.append(f"| {name} | {_fmt(o['real'])} | {_fmt(o['synthetic'])} | "
                     f"{_fmt(o['difference'], True)} | {_fmt(o['hu_error'])} | "
                     f"{_fmt(o['hu_error_real_test'])} | "
                     f"{o['found']}/{result['n_synthetic']} | {_fmt(o['volume_ml_real'])} | "
                     f"{_fmt(o['volume_ml_synthetic'])} | {w} |")
    real_test = found["real_test_share"]
    lines += ["",
              f"Every organ found (largest component >= {found['min_fraction']:g} x the organ's median real "
              f"volume): {found['all']}/{result['n_synthetic']} samples ({100 * found['share']:.0f} %)"
              + ("" if real_test is None else f"; real test volumes: {100 * real_test:.0f} %") + ".",
              ""]
    nn = result["nearest_neighbour"]

    def f3(s: dict[str, float]) -> str:
        return f"{s['mean']:.3f} ± {s['std']:.3f} (median {s['median']:.3f}, min {s['min']:.3f})"

    lines += ["Copy check (1 - NCC, mirror images included): nearest training volume of a sample "
              f"{f3(nn['sample'])}; nearest other training volume of a "
              f"training volume {f3(nn['training'])}. Samples closer "
              f"to a training volume than any two training volumes are to each other: "
              f"{nn['closer_than_any_training_pair']}/{result['n_synthetic']}.",
              "", f"Whole-volume intensity histogram: Wasserstein distance {result['wasserstein_hu']:.1f} "
              "HU.",
              "", f"Figures: `{Path(result['figure']).name}`, `{Path(result['histogram_figure']).name}`.", ""]
    return "\n".join(lines)


def _fmt4(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "median": float(np.median(values)),
            "min": float(np.min(values)), "max": float(np.max(values)), "n": int(len(values))}


_REPORT_FILES = ("synth_slices.png", "histograms.png", "report.json", "report.md")


def synthesis_report(gan_dir: str | Path, model_dir: str | Path, data: str | Path, out: str | Path,
                     n: int = 10, seed: int = 0, samples: str | Path | None = None,
                     device: str = "auto", min_fraction: float = 0.25) -> dict[str, Any]:
    """Compare synthesized volumes with the real labeled ones (module docstring); returns the report.

    Args:
        gan_dir: a finished GAN run (its config gives the HU window and the training preparation).
        model_dir: a trained segmentation run (:func:`advseg.inference.api.load_model`).
        data: the labeled dataset folder (``dataset.json`` names the organs; its test cases, if
            any, give the real held-out baseline).
        out: report folder.
        n, seed: samples to synthesize into ``out/samples`` (ignored when ``samples`` is given).
        samples: an existing folder of ``synth_*.nii.gz`` volumes to evaluate instead.
        min_fraction: an organ is found when S's largest component of it holds at least this share
            of the organ's median volume in the real labeled volumes.

    Returns:
        ``{"organs": {name: {"real", "synthetic", "difference", "hu_error", "hu_error_real_test",
        "volume_ml_real", "volume_ml_synthetic": {mean, std, n}, "found", "wasserstein_hu"}},
        "organs_found": {"all", "share", "min_fraction", "min_volume_ml", "real_test_share"},
        "nearest_neighbour": {...}, "wasserstein_hu", "n_synthetic", "n_real", "figure",
        "histogram_figure", ...}``
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
    if not 0 < min_fraction <= 1:
        raise InputError(None, f"min_fraction must be in (0, 1], got {min_fraction}")
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

    # Real labeled volumes (ground truth): the reference organ means and volumes.
    real_means, real_ml = [], {c: [] for c in organs}
    real_organ_voxels: dict[int, list[np.ndarray]] = {c: [] for c in organs}
    first_real = None
    for case in real_cases:
        vol = read_volume(case.images[0])
        hu = np.clip(vol.array.astype(np.float32), *window)
        labels = np.asarray(read_volume(case.label).array)
        if labels.shape != hu.shape:
            raise InputError(case.label, f"label shape {labels.shape} differs from its image's {hu.shape}")
        if first_real is None:
            first_real = (hu, labels, case.name, vol.spacing)
        real_means.append(organ_means(hu, labels, organs))
        ml = float(np.prod(vol.spacing)) / 1000.0
        for c in organs:
            real_organ_voxels[c].append(_subsample(hu[labels == c], rng))
            if np.any(labels == c):
                real_ml[c].append(float(np.count_nonzero(labels == c)) * ml)
    reference = {c: float(np.mean([m[c] for m in real_means if c in m])) for c in organs
                 if any(c in m for m in real_means)}
    min_ml = {c: min_fraction * float(np.median(v)) for c, v in real_ml.items() if v}

    def measure(path: Path) -> tuple[np.ndarray, np.ndarray, dict[int, float], dict[int, bool],
                                     dict[int, float]]:
        """S's labels of one volume, its organ means, which organs are found, their volumes (mL)."""
        vol = read_volume(path)
        labels = _segment(model, vol)
        hu = np.clip(vol.array.astype(np.float32), *window)
        ml = float(np.prod(vol.spacing)) / 1000.0
        found = organs_found(labels, {c: v / ml for c, v in min_ml.items()})
        volumes = {c: float(np.count_nonzero(labels == c)) * ml for c in organs if np.any(labels == c)}
        return hu, labels, organ_means(hu, labels, organs), found, volumes

    synth_hu, synth_labels, synth_means, synth_found, synth_ml = [], [], [], [], []
    for path in sample_files:
        hu, labels, means, found, volumes = measure(path)
        synth_hu.append(hu)
        synth_labels.append(labels)
        synth_means.append(means)
        synth_found.append(found)
        synth_ml.append(volumes)
    errors = hu_errors(synth_means, reference)

    # Real held-out volumes through the same S: the HU error and organ presence a perfect generator gets.
    test_cases = list(index.test)
    test_means, test_found = [], []
    for case in test_cases:
        _, _, means, found, _ = measure(case.images[0])
        test_means.append(means)
        test_found.append(found)
    test_errors = hu_errors(test_means, reference)

    organ_rows: dict[str, Any] = {}
    for c, name in organs.items():
        real_vals = [m[c] for m in real_means if c in m]
        synth_vals = [m[c] for m in synth_means if c in m]
        ref = reference.get(c)
        diffs = [v - ref for v in synth_vals] if ref is not None else []
        real_vox = np.concatenate(real_organ_voxels[c])
        synth_vox = np.concatenate([h[lab == c] for h, lab in zip(synth_hu, synth_labels, strict=True)])
        w = (float(wasserstein_distance(_subsample(real_vox, rng), _subsample(synth_vox, rng)))
             if real_vox.size and synth_vox.size else None)
        organ_rows[name] = {"label": c, "real": _stats(real_vals), "synthetic": _stats(synth_vals),
                            "difference": _stats(diffs), "hu_error": _stats(errors.get(c, [])),
                            "hu_error_real_test": _stats(test_errors.get(c, [])),
                            "volume_ml_real": _stats(real_ml[c]),
                            "volume_ml_synthetic": _stats([v[c] for v in synth_ml if c in v]),
                            "found": int(sum(f.get(c, False) for f in synth_found)),
                            "wasserstein_hu": w}
    n_all = int(sum(all(f.values()) for f in synth_found))
    found_summary = {
        "all": n_all, "share": n_all / len(sample_files), "min_fraction": min_fraction,
        "min_volume_ml": {organs[c]: v for c, v in min_ml.items()},
        "real_test_share": (float(np.mean([all(f.values()) for f in test_found])) if test_found else None),
        "per_sample": [{organs[c]: bool(v) for c, v in f.items()} for f in synth_found],
    }

    # Whole-volume histograms and the copy check: real volumes prepared exactly as the GAN's training data.
    tset = load_training_set(find_training_images(data), gan_cfg.target_shape, gan_cfg.hu_window,
                             gan_cfg.n_slices, gan_cfg.crop_xy)
    train_x = tset.volumes[:, 0].numpy()
    real_all = _subsample(to_hu(train_x, window).ravel(), rng)
    synth_all = _subsample(np.concatenate([h.ravel() for h in synth_hu]), rng)
    w_all = float(wasserstein_distance(real_all, synth_all))
    synth_x = np.stack([resize_volume(normalize_ct(torch.from_numpy(h), window), gan_cfg.target_shape).numpy()
                        for h in synth_hu])
    nn_d, nn_j = nearest_training(synth_x, train_x)
    train_d = training_nearest_other(train_x) if len(train_x) > 1 else np.array([np.nan])
    nn = {"distance": "1 - NCC on the GAN grid, left-right mirror images of the training volumes included",
          "sample": _fmt4(nn_d), "training": _fmt4(train_d),
          "closer_than_any_training_pair": int(np.sum(nn_d < np.nanmin(train_d))),
          "per_sample": [{"distance": float(d), "nearest": Path(tset.files[j]).name.split(".")[0]}
                         for d, j in zip(nn_d, nn_j, strict=True)]}

    shown = list(range(min(2, len(synth_hu))))
    spacing = read_volume(sample_files[0]).spacing
    real_hu, real_lab, real_name, real_spacing = first_real
    rows = [real_hu] + [synth_hu[i] for i in shown]
    names = [f"real {real_name}"] + [Path(sample_files[i]).name.split(".")[0] for i in shown]
    if tuple(real_hu.shape) != tuple(synth_hu[0].shape):  # the real row on the samples' grid, for one figure
        rows[0] = resize_volume(torch.from_numpy(real_hu), synth_hu[0].shape).numpy()
        real_lab = None
    figure = save_slices_figure(out / "synth_slices.png", rows, names, spacing,
                                labels=[real_lab] + [synth_labels[i] for i in shown])
    hist = save_histograms(out / "histograms.png", real_all, synth_all, tuple(window),
                           f"real vs synthesized (W1 = {w_all:.1f} HU)")
    result = {
        "gan_dir": str(gan_dir), "model": str(model_dir), "data": str(data),
        "n_synthetic": len(sample_files), "n_real": len(real_cases), "n_real_test": len(test_cases),
        "hu_window": window,
        "hu_error_definition": "|mean HU of organ c in sample i (voxels S labels c) - mean over the real "
                               "labeled volumes of organ c's mean HU (ground truth)|",
        "samples": [str(p) for p in sample_files], "organs": organ_rows, "organs_found": found_summary,
        "nearest_neighbour": nn, "wasserstein_hu": w_all,
        "figure": str(figure), "histogram_figure": str(hist),
    }
    atomic_write_text(out / "report.json", json.dumps(result, indent=2))
    atomic_write_text(out / "report.md", _markdown(result))
    return result
