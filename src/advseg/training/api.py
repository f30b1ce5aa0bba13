"""``train_run``: from a dataset folder and a config to a trained run folder.

Run folder layout::

    config.yaml            the final, fully expanded config
    .advseg.lock           host and PID of the process writing the folder (while it runs)
    dataset_info.json      class names, modality, channels, left/right pairs (used by predict)
    splits.json            the fold split and the labeled / unlabeled case lists actually used
    checkpoint_last.pt     written every ``train.checkpoint_every`` iterations (resume point)
    checkpoint_best.pt     best mean foreground validation DSC
    log.jsonl              losses per iteration, validation DSC per class
    learning_curves.png    all losses and validation DSC
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from advseg.config import Config, load_config, network_patch, validate_config
from advseg.data.dataset import DatasetIndex, load_dataset
from advseg.data.labels import lr_pairs
from advseg.data.preprocess import default_cache_root, preprocess_dataset
from advseg.data.sampling import PatchDataset
from advseg.data.splits import labeled_subset, load_or_create_splits, unlabeled_complement
from advseg.data.validate import validate_dataset
from advseg.errors import InputError
from advseg.io.atomic import atomic_write_text
from advseg.io.guard import refuse_overlap
from advseg.io.lock import LOCK_NAME, RunLock, check_unlocked
from advseg.training import distributed
from advseg.training.trainer import BatchSource, TrainData, TrainingDiverged
from advseg.training.variants import trainer_class
from advseg.transforms.augment import build_augmentation


def finalize_config(cfg: Config, index: DatasetIndex) -> Config:
    """Fit the network's channel counts to the dataset (classes, image channels)."""
    net = dataclasses.replace(
        cfg.network, in_channels=len(index.channel_names), out_channels=index.num_classes
    )
    modality = index.modality if cfg.data.modality == "auto" else cfg.data.modality
    return dataclasses.replace(cfg, network=net, data=dataclasses.replace(cfg.data, modality=modality))


def select_cases(cfg: Config, index: DatasetIndex, splits_path: Path) -> dict[str, list[str]]:
    """Fold split, labeled subset, and which labeled-training cases serve as unlabeled data."""
    names = sorted(c.name for c in index.training)
    if len(names) < 2:
        raise InputError(
            index.root, f"need at least 2 labeled cases (training + validation), found {len(names)}"
        )
    splits = load_or_create_splits(splits_path, names, cfg.train.folds, cfg.train.data_seed)
    if not 0 <= cfg.train.fold < len(splits):
        raise InputError(None, f"train.fold={cfg.train.fold} but the split has {len(splits)} folds")
    fold = splits[cfg.train.fold]
    train = list(fold["train"])
    labeled = labeled_subset(
        train,
        fraction=None if cfg.train.labeled_count else cfg.train.labeled_fraction,
        count=cfg.train.labeled_count,
        seed=cfg.train.data_seed,
    )
    use = cfg.uses_unlabeled and "withheld" in cfg.train.unlabeled_pool
    withheld = unlabeled_complement(train, labeled) if use else []
    val = list(fold["val"])
    if cfg.train.val_cases:
        val = val[: cfg.train.val_cases]
    return {"labeled": labeled, "unlabeled_withheld": withheld, "val": val}


def unlabeled_pool(index: DatasetIndex, sources: list[str], extra_dirs: list[Path] | None) -> list[str]:
    """Names of the dataset's unlabeled cases that come from ``sources`` (``train.unlabeled_pool``):
    ``"dataset"`` for the dataset folder's own unlabeled images, ``"extra"`` for those found in
    ``extra_dirs`` (``--unlabeled`` folders, an experiment's synthesized pool)."""
    extra = {Path(d).resolve() for d in extra_dirs or []}
    names = []
    for case in index.unlabeled:
        source = "extra" if Path(case.images[0]).resolve().parent in extra else "dataset"
        if source in sources:
            names.append(case.name)
    return names


def splits_path(cache_root: Path, index: DatasetIndex, cfg: Config) -> Path:
    """Where the fold split of a dataset is kept: written once, reused by every later run.

    Keyed by the set of labeled case names (not only the dataset's name), so two datasets that share
    a name but not their cases never share a split.
    """
    names = "\n".join(sorted(c.name for c in index.training))
    key = hashlib.sha1(names.encode()).hexdigest()[:10]
    return cache_root / index.name / f"splits_{key}_{cfg.train.folds}fold_seed{cfg.train.data_seed}.json"


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(out, "run folder is a file")
    check_unlocked(out)  # a run writing this folder right now: fail at once, before any work
    if resume:
        if not (out / "config.yaml").exists():
            raise InputError(out, "nothing to resume: no config.yaml in this run folder")
        return
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise InputError(out, "run folder exists and is not empty (use --resume, or another --out)")


def prepare_training(
    cfg: Config | None,
    data: str | Path,
    out: str | Path,
    unlabeled: list[Path] | None = None,
    resume: bool = False,
    progress: bool = True,
    check_out: bool = True,
) -> tuple[Config, TrainData, dict[str, Any]]:
    """Validate the inputs, preprocess (cached) and build the batch sources. Writes nothing in ``out``.

    ``check_out=False`` skips looking at ``out`` (distributed ranks > 0, which never touch the run folder;
    rank 0 checked it)."""
    out = Path(out)
    refuse_overlap([out], [data, *(unlabeled or [])])
    if check_out:
        _check_out(out, resume)
    cfg = load_config(out / "config.yaml") if cfg is None else validate_config(cfg)
    if cfg.train.init_from and not resume and not Path(cfg.train.init_from).is_file():
        raise InputError(cfg.train.init_from, "train.init_from: checkpoint not found")
    index = load_dataset(data, unlabeled_dirs=list(unlabeled or []))
    validate_dataset(index, check_test=False)
    cfg = finalize_config(cfg, index)

    cache_root = default_cache_root(cfg.data)
    selection = select_cases(cfg, index, splits_path(cache_root, index, cfg))
    extra_unlabeled = (unlabeled_pool(index, cfg.train.unlabeled_pool, unlabeled)
                       if cfg.uses_unlabeled else [])
    with_labels = set(selection["labeled"]) | set(selection["val"])
    wanted = sorted(with_labels | set(selection["unlabeled_withheld"]) | set(extra_unlabeled))
    pre = preprocess_dataset(
        index, cfg.data, cache_root, cases=wanted, with_labels=with_labels, progress=progress
    )

    def load(names: list[str], labels: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
        imgs, lbls = [], []
        for n in names:
            case = pre.load(n)
            imgs.append(case.image)
            if labels:
                lbls.append(case.label)
        return imgs, lbls

    tr_imgs, tr_lbls = load(selection["labeled"], True)
    pairs = lr_pairs(index.labels)
    spatial_dims = cfg.network.spatial_dims
    patch = network_patch(spatial_dims, cfg.data.patch_size)
    # the unlabeled batches' own size (train.unlabeled_patch_size), else the labeled one
    unlabeled_patch = network_patch(spatial_dims, cfg.train.unlabeled_patch_size or cfg.data.patch_size)
    augment = build_augmentation(
        cfg.augment, spatial_dims=spatial_dims, seed=cfg.train.seed, swap_labels_on_flip=pairs
    )
    labeled_src = BatchSource(
        PatchDataset(
            tr_imgs,
            tr_lbls,
            patch,
            cfg.data.foreground_oversample,
            augment,
            seed=cfg.train.seed,
            names=selection["labeled"],
        ),
        cfg.train.batch_size,
    )
    unl_names = selection["unlabeled_withheld"] + extra_unlabeled
    unlabeled_src = None
    if cfg.uses_unlabeled and unl_names:
        u_imgs, _ = load(unl_names, False)
        augment_u = build_augmentation(
            cfg.augment, spatial_dims=spatial_dims, seed=cfg.train.seed + 1, swap_labels_on_flip=pairs
        )
        unlabeled_src = BatchSource(
            PatchDataset(u_imgs, None, unlabeled_patch, 0.0, augment_u, seed=cfg.train.seed + 1,
                         names=unl_names),
            cfg.train.unlabeled_batch_size or cfg.train.batch_size,
        )
    elif cfg.uses_unlabeled:
        raise InputError(
            data,
            "semi-supervised training needs unlabeled images: none found in train.unlabeled_pool "
            f"{cfg.train.unlabeled_pool} (give --unlabeled DIR, or use a labeled fraction below 1)",
        )
    val_imgs, val_lbls = load(selection["val"], True)
    counts = np.zeros(index.num_classes, dtype=np.float64)
    for lbl in tr_lbls:
        counts += np.bincount(lbl.ravel(), minlength=index.num_classes)[: index.num_classes]
    tdata = TrainData(
        labeled=labeled_src,
        unlabeled=unlabeled_src,
        labels=index.labels,
        val_names=selection["val"],
        val_images=val_imgs,
        val_labels=val_lbls,
        class_voxel_counts=counts,
        lr_pairs=pairs,
    )
    info = {
        "dataset": str(Path(data).resolve()),
        "labels": {str(k): v for k, v in index.labels.items()},
        "modality": cfg.data.modality,
        "channel_names": index.channel_names,
        "lr_pairs": pairs,
        "cases": {**selection, "unlabeled_extra": extra_unlabeled},
    }
    return cfg, tdata, info


def train_run(
    cfg: Config | None,
    data: str | Path,
    out: str | Path,
    unlabeled: list[Path] | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Train per ``cfg`` on the dataset folder ``data``, writing the run folder ``out``.

    With ``resume=True`` the run continues from ``out/checkpoint_last.pt`` exactly where it stopped
    (config taken from ``out/config.yaml`` when ``cfg`` is None). Returns the best validation score.

    Under ``torchrun`` (:mod:`advseg.training.distributed`) every rank calls this: rank 0 prepares the
    data first (filling the preprocessing cache) and alone writes ``out``; the other ranks then build
    their own patch streams with the config rank 0 settled on.
    """
    out = Path(out)
    distributed.init_from_env()
    main = distributed.is_main()
    cfg, tdata, info = distributed.prepare_on_ranks(prepare_training, cfg, data, out, unlabeled, resume,
                                                    progress)
    fresh = not out.exists()
    lock = distributed.collective(lambda: _lock_run_folder(out, resume) if main else None)
    try:
        if main:
            for tmp in out.glob(".checkpoint_*.pt.*.tmp"):  # a checkpoint write a kill cut short
                tmp.unlink()
            cfg.save(out / "config.yaml")
            _write_json(out / "dataset_info.json", info)
            _write_json(out / "splits.json",
                        {"fold": cfg.train.fold, "folds": cfg.train.folds, **info["cases"]})
        trainer = distributed.collective(lambda: trainer_class(cfg)(cfg, out, tdata, device=device))
        if resume and trainer.resume():
            if main:
                print(f"resumed {out} at iteration {trainer.iteration}/{cfg.train.iterations}")
        elif cfg.train.init_from:
            distributed.collective(lambda: trainer.init_weights(cfg.train.init_from))
        result = trainer.fit(progress=progress)
    except TrainingDiverged as exc:
        raise SystemExit(f"error: {out}: {exc}" if main else 1) from None
    except BaseException:
        if lock is not None:
            lock.release()
        if main and fresh and not (out / "checkpoint_last.pt").exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping from a run that never saved
        raise
    finally:
        if lock is not None:
            lock.release()
    return result


def _lock_run_folder(out: Path, resume: bool) -> RunLock:
    """Create ``out`` and take its lock (one writer per run folder: a second train/--resume fails); the
    run folder is checked again under the lock, as another run may have written it meanwhile. Rank 0
    only under torchrun."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create the run folder ({exc.strerror or exc})") from None
    lock = RunLock(out).acquire()
    try:
        _check_out(out, resume)
    except InputError:
        lock.release()  # outside the try below: a folder another run filled is never removed
        raise
    return lock


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))
