"""Prediction with a trained run folder: images in, label maps out in each input's original geometry.

>>> model = load_model("runs/demo/res_unet")           # best checkpoint + config of the run
>>> labels = model.predict_volume(read_volume("ct.nii.gz"))
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advseg.config import Config, config_from_dict
from advseg.data.preprocess import Preprocessor
from advseg.errors import InputError
from advseg.inference.engines import build_engine, resolve_precision
from advseg.inference.postprocess import keep_largest_component
from advseg.inference.sliding import flip_tta, predict_logits
from advseg.io import Volume, read_volume, strip_suffix, write_volume
from advseg.io.atomic import atomic_write_text
from advseg.io.dicom.rtstruct import write_rtstruct
from advseg.io.dicom.seg import write_seg
from advseg.io.dicom.series import is_dicom_folder, read_series_folder
from advseg.io.guard import MANIFEST, check_output_dir, check_output_file, record_outputs, refuse_overlap
from advseg.networks.confidence import build_discriminator, confidence_map, has_confidence_map
from advseg.networks.factory import build_network, to_channels_last
from advseg.ops import channel_argmax
from advseg.runtime.checkpoint import load_checkpoint
from advseg.runtime.device import resolve_device

_NNUNET_CHANNEL = re.compile(r"_(\d{4})$")


@dataclass
class Prediction:
    labels: Volume  # (Z, Y, X) uint8 in the input's geometry
    confidence: Volume | None = None  # D's per-voxel confidence in [0, 1], same geometry
    seconds: float = 0.0


class SegmentationModel:
    """A trained segmenter S (and, if the run had one, its discriminator D) ready for inference."""

    def __init__(
        self,
        cfg: Config,
        state: dict[str, Any],
        labels: dict[int, str],
        lr_pairs: list[tuple[int, int]],
        device: str = "auto",
        engine: str = "torch",
        engine_file: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.labels = labels
        self.lr_pairs = [tuple(p) for p in lr_pairs]
        self.device = resolve_device(device)
        self.net = build_network(cfg.network).to(self.device).eval()
        self.net.load_state_dict(state["nets"]["S"])
        to_channels_last(self.net)  # measured ~2x faster 3D convolutions on CPU (oneDNN)
        self.source_net = self.net  # the trained float32 network, as in the checkpoint
        # What runs it: folded batch norm, bf16 on CPUs that have it (inference.precision), or an
        # ONNX Runtime / OpenVINO graph; see advseg.inference.engines.
        self.precision = resolve_precision(cfg.inference.precision, self.device, cfg.network.name)
        self.engine_name = engine
        if engine_file is not None:
            check_engine_file(engine_file, cfg)
        self.engine = build_engine(self.net, engine, self.device, self.precision, path=engine_file)
        self.discriminator = None
        if "D" in state["nets"]:
            self.discriminator = build_discriminator(cfg, len(labels) if labels else cfg.network.out_channels)
            self.discriminator.load_state_dict(state["nets"]["D"])
            self.discriminator.to(self.device).eval()
        self.preprocessor = Preprocessor(cfg.data, cfg.data.modality)

    @torch.inference_mode()
    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, C, Z, Y, X)`` preprocessed -> logits ``(1, K, Z, Y, X)``."""
        ic = self.cfg.inference
        bf16 = self.precision == "bf16"
        use_amp = self.device.type == "cuda" and (self.cfg.train.amp or bf16)
        with torch.autocast("cuda", dtype=torch.bfloat16 if bf16 else torch.float16, enabled=use_amp):
            return predict_logits(
                self.engine,
                image,
                self.cfg.data.patch_size,
                mode=ic.mode,
                overlap=ic.overlap,
                sw_batch_size=ic.sw_batch_size,
                spatial_dims=self.cfg.network.spatial_dims,
                slab_batch=ic.slab_batch or (1 if self.device.type == "cpu" else 0),
            ).float()

    def _to_original(self, probs: torch.Tensor, pred: torch.Tensor, info: dict[str, Any]) -> np.ndarray:
        """Label map ``(Z, Y, X)`` in the input's original geometry (see ``inference.resample``)."""
        if self.cfg.inference.resample == "probabilities" and _resized(info, tuple(pred.shape[1:])):
            full = self.preprocessor.invert_probabilities(probs[0].float().cpu().numpy(), info)
            return full.argmax(0).astype(np.uint8)
        return self.preprocessor.invert_label(pred[0].cpu().numpy().astype(np.uint8), info)

    @torch.inference_mode()
    def predict_volume(self, image: Volume | list[Volume], with_confidence: bool = False) -> Prediction:
        """Segment one image (a list of volumes for multi-channel input)."""
        t0 = time.perf_counter()
        ref = image[0] if isinstance(image, list) else image
        case = self.preprocessor.forward(image)
        x = torch.from_numpy(case.image).unsqueeze(0).to(self.device)
        if self.cfg.inference.tta_flip:
            probs = flip_tta(self.logits, x, self.lr_pairs)
        else:
            probs = torch.softmax(self.logits(x), dim=1)
        pred = channel_argmax(probs)  # (1, Z, Y, X)
        confidence = None
        if with_confidence:
            if self.discriminator is None or not has_confidence_map(self.cfg):
                raise InputError(
                    None, "--save-confidence needs a run whose discriminator gives a per-voxel confidence "
                    "map (fcn or dcgan2d, e.g. res_unet_aux_adv_semi)",
                )
            conf = confidence_map(self.cfg, self.discriminator, x, probs)[0].cpu().numpy()
            conf = self.preprocessor.invert_probabilities(conf, case.info, outside_class=None)[0]
            confidence = Volume(conf.astype(np.float32), ref.affine)
        labels = self._to_original(probs, pred, case.info)
        if self.cfg.inference.keep_largest:
            labels = keep_largest_component(labels)
        return Prediction(Volume(labels.astype(np.uint8), ref.affine), confidence, time.perf_counter() - t0)


def check_engine_file(path: str | Path, cfg: Config) -> None:
    """Refuse an exported file whose ``<file>.json`` (written by ``advseg export``) says it expects
    other input channels, classes or preprocessing than the run's config (a file without one is
    taken as it is)."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        return
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise InputError(meta_path, "cannot read this export record (JSON)") from None
    want = {"in_channels": cfg.network.in_channels, "out_channels": cfg.network.out_channels,
            "data": cfg.to_dict()["data"]}
    for key, value in want.items():
        if key in meta and meta[key] != value:
            raise InputError(path, f"exported for another model ({key} differs from the run's config)")


def _resized(info: dict[str, Any], shape: tuple[int, ...]) -> bool:
    return tuple(shape) != tuple(b - a for a, b in info["crop"])


def load_model(
    run_dir: str | Path, checkpoint: str = "best", device: str = "auto", engine: str = "torch",
    engine_file: str | Path | None = None, **inference_overrides: Any
) -> SegmentationModel:
    """Load ``checkpoint_<checkpoint>.pt`` of a run folder (falls back to ``last`` if no ``best``).

    ``engine``: ``torch`` | ``onnxruntime`` | ``openvino`` (:mod:`advseg.inference.engines`);
    ``engine_file``: an ``advseg export`` file (``.onnx`` / ``.xml``, e.g. the int8 IR) that the
    engine runs instead of an export of the checkpoint;
    ``inference_overrides`` replace ``inference.*`` keys of the run's config (e.g. ``precision``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "model folder not found (expected a training run folder)")
    path = run_dir / f"checkpoint_{checkpoint}.pt"
    if not path.exists() and checkpoint == "best":
        path = run_dir / "checkpoint_last.pt"
    if not path.exists():
        raise InputError(run_dir, f"no checkpoint_{checkpoint}.pt in this run folder")
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"], where=path)
    overrides = {k: v for k, v in inference_overrides.items() if v is not None}
    if overrides:
        cfg = replace(cfg, inference=replace(cfg.inference, **overrides))
    info_path = run_dir / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    labels = {int(k): v for k, v in state.get("labels", {}).items()}
    return SegmentationModel(cfg, state, labels, info.get("lr_pairs", []), device=device, engine=engine,
                             engine_file=engine_file)


def _case_name(path: Path) -> str:
    return _NNUNET_CHANNEL.sub("", strip_suffix(path))


def _inputs(input: Path) -> dict[str, list[Path]]:
    if input.is_file():
        return {_case_name(input): [input]}
    if not input.is_dir():
        raise InputError(input, "input not found")
    cases = nifti_cases(input)
    if not cases:
        raise InputError(input, "no NIfTI images (.nii.gz / .nii) and no DICOM files in this folder")
    return cases


def nifti_cases(folder: Path) -> dict[str, list[Path]]:
    """The NIfTI images of ``folder`` by case: ``<case>.nii.gz``, or nnU-Net's ``<case>_XXXX.nii.gz``
    per channel (channel files in name order). Empty if there are none."""
    cases: dict[str, list[Path]] = {}
    for f in _nifti_files(folder):
        cases.setdefault(_case_name(f), []).append(f)
    return cases


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith(".")
    )


def predict_dicom(
    model: SegmentationModel,
    input: Path,
    output: Path,
    rtstruct: bool = False,
    dicom_seg: bool = False,
    resample: bool = False,
    save_confidence: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Segment every CT series under the DICOM folder ``input`` into the folder ``output``.

    Per series (cases ``case_000``, ... in folder order; no patient identifier in names):
    ``<case>.nii.gz`` (label map, the series' geometry), with ``rtstruct`` ``<case>_RTSTRUCT.dcm``
    (:func:`advseg.io.dicom.rtstruct.write_rtstruct`: one ROI per organ, named as the run's
    labels), with ``dicom_seg`` ``<case>_SEG.dcm`` (:func:`advseg.io.dicom.seg.write_seg`), and
    ``dicom_index.json`` mapping each case to its series' UIDs and the files written. Every series
    is read and checked before anything is written; ``output`` follows :mod:`advseg.io.guard` (never
    the input, inside it or around it; a new, empty or earlier ``predict`` folder unless
    ``overwrite``). Returns the label files.
    """
    refuse_overlap([output], [input])
    if output.exists() and not output.is_dir():
        raise InputError(output, "for DICOM input, OUTPUT must be a folder")
    check_output_dir(output, "predict", overwrite)
    if model.cfg.network.in_channels != 1:
        n = model.cfg.network.in_channels
        raise InputError(input, f"the model needs {n} channels; a CT series is one")
    series = read_series_folder(input, resample=resample)
    for s in series:
        for w in s.warnings:
            print(f"warning: {w}", file=sys.stderr)
    names = {f"case_{i:03d}": s for i, s in enumerate(series)}
    volumes = {}
    for name, s in names.items():
        vol = s.read()
        if not np.isfinite(vol.array).all():
            raise InputError(s.files[0], "image contains NaN or Inf values")
        volumes[name] = vol
    label_names = {k: v for k, v in model.labels.items()} or {
        k: f"label_{k}" for k in range(model.cfg.network.out_channels)
    }
    planned = [output / "dicom_index.json"]
    for name in names:
        planned += [output / f"{name}.nii.gz", *(output / f"{name}_{k}.dcm" for k, on in
                                                 (("RTSTRUCT", rtstruct), ("SEG", dicom_seg)) if on)]
        if save_confidence:
            planned.append(confidence_path(output / f"{name}.nii.gz"))
    record_outputs(output, "predict", planned)
    written, index = [], {}
    for name, s in names.items():
        pred = model.predict_volume(volumes[name], with_confidence=save_confidence)
        target = output / f"{name}.nii.gz"
        write_volume(target, pred.labels, dtype=np.uint8)
        if pred.confidence is not None:
            write_volume(confidence_path(target), pred.confidence, np.float32)
        entry = {**s.index(), "labels": target.name}
        if (rtstruct or dicom_seg) and not pred.labels.array.any():
            print(f"warning: {name} (series {s.series_uid}): no organ predicted; no RTSTRUCT/SEG written",
                  file=sys.stderr)
        elif rtstruct:
            ds = write_rtstruct(output / f"{name}_RTSTRUCT.dcm", pred.labels.array, label_names, s)
            entry["RTSTRUCT"] = {"file": f"{name}_RTSTRUCT.dcm", "SOPInstanceUID": str(ds.SOPInstanceUID)}
        if dicom_seg and pred.labels.array.any():
            ds = write_seg(output / f"{name}_SEG.dcm", pred.labels.array, label_names, s)
            entry["SEG"] = {"file": f"{name}_SEG.dcm", "SOPInstanceUID": str(ds.SOPInstanceUID)}
        index[name] = entry
        written.append(target)
        if progress:
            extra = "".join(f" + {k}" for k in ("RTSTRUCT", "SEG") if k in entry)
            print(f"{name} (series {s.series_uid}): {pred.seconds:.2f} s -> {target}{extra}")
    atomic_write_text(output / "dicom_index.json", json.dumps(index, indent=2) + "\n")
    return written


def predict_path(
    model_dir: str | Path,
    input: str | Path,
    output: str | Path,
    mode: str | None = None,
    tta: bool | None = None,
    keep_largest: bool | None = None,
    checkpoint: str = "best",
    save_confidence: bool = False,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    rtstruct: bool = False,
    dicom_seg: bool = False,
    resample: bool = False,
    engine: str = "torch",
    precision: str | None = None,
    engine_file: str | Path | None = None,
) -> list[Path]:
    """Segment a NIfTI file, every image of a folder, or every CT series of a DICOM folder tree;
    write ``<case>.nii.gz`` label maps (and, for DICOM input, see :func:`predict_dicom`).

    All inputs are read and checked before anything is written. For a single file, ``output`` may
    be a file name (``*.nii.gz``) or a folder. Returns the written label files.

    ``output`` may not be, lie inside, or contain ``input`` (nor be or contain ``model_dir``; a
    folder inside the run folder is fine), checked before anything is read. An output folder must be
    new, empty, or hold only earlier ``advseg predict`` outputs (see :mod:`advseg.io.guard`); an
    existing output file, or a folder with other files, needs ``overwrite=True``.
    """
    input, output = Path(input), Path(output)
    refuse_overlap([output], [input, *([engine_file] if engine_file else [])], hosts=[model_dir])
    dicom_input = input.is_dir() and not _nifti_files(input) and is_dicom_folder(input)
    if (rtstruct or dicom_seg) and not dicom_input:
        flag = "--rtstruct" if rtstruct else "--dicom-seg"
        raise InputError(input, f"{flag} needs a folder of DICOM CT series as INPUT (it references their "
                                "UIDs)")
    model = load_model(model_dir, checkpoint, device, engine, engine_file, mode=mode, tta_flip=tta,
                       keep_largest=keep_largest, precision=precision)
    if dicom_input:
        return predict_dicom(model, input, output, rtstruct=rtstruct, dicom_seg=dicom_seg, resample=resample,
                             save_confidence=save_confidence, progress=progress, overwrite=overwrite)
    cases = _inputs(input)
    n_channels = model.cfg.network.in_channels
    for name, files in cases.items():
        if len(files) != n_channels:
            raise InputError(
                files[0], f"case '{name}' has {len(files)} channel file(s), the model needs {n_channels}"
            )
        for f in files:
            vol = read_volume(f)
            if not np.isfinite(vol.array).all():
                raise InputError(f, "image contains NaN or Inf values")
    single_file = input.is_file() and output.name.endswith((".nii.gz", ".nii"))
    targets = {name: output if single_file else output / f"{name}.nii.gz" for name in cases}
    if single_file:
        check_output_file(output, overwrite)
        if save_confidence:
            check_output_file(confidence_path(output), overwrite)
    else:
        check_output_dir(output, "predict", overwrite)
        written = list(targets.values())
        if save_confidence:
            written += [confidence_path(t) for t in targets.values()]
        created = not output.exists()
        try:
            record_outputs(output, "predict", written)
            return predict_cases(model, cases, targets, save_confidence=save_confidence, progress=progress)
        except InputError:  # e.g. disk full: a folder this call made and filled with nothing goes again
            if created and output.is_dir() and {p.name for p in output.iterdir()} <= {MANIFEST}:
                shutil.rmtree(output, ignore_errors=True)
            raise
    return predict_cases(model, cases, targets, save_confidence=save_confidence, progress=progress)


def confidence_path(label_path: str | Path) -> Path:
    """Where D's confidence map of a label file goes: ``confidence/<same name>`` beside it.

    A subfolder, so that a predictions folder stays a folder of label maps only (``advseg evaluate``
    reads every NIfTI file in it).
    """
    label_path = Path(label_path)
    return label_path.parent / "confidence" / label_path.name


def predict_cases(
    model: SegmentationModel,
    cases: Mapping[str, Sequence[Path]],
    targets: Mapping[str, Path],
    save_confidence: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Segment each case (``name -> its channel files``) into ``targets[name]`` (a uint8 label map in
    the input's geometry) and, with ``save_confidence``, D's confidence map into
    :func:`confidence_path` of it. Inputs must have been checked already. Returns the label files."""
    written = []
    for name, files in cases.items():
        vols = [read_volume(f) for f in files]
        pred = model.predict_volume(vols if len(vols) > 1 else vols[0], with_confidence=save_confidence)
        target = Path(targets[name])
        write_volume(target, pred.labels, dtype=np.uint8)
        if pred.confidence is not None:
            write_volume(confidence_path(target), pred.confidence, np.float32)
        written.append(target)
        if progress:
            print(f"{name}: {pred.seconds:.2f} s -> {target}")
    return written
