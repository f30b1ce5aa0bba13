"""Dataset folders: MSD layout and nnU-Net v2 raw layout.

MSD::

    dataset.json            {"labels": {"0": "background", ...}, "modality": {"0": "CT"},
                             "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                             "test": ["./imagesTs/y.nii.gz"]}
    imagesTr/x.nii.gz  labelsTr/x.nii.gz  imagesTs/y.nii.gz

nnU-Net v2::

    dataset.json            {"labels": {"background": 0, ...}, "channel_names": {"0": "CT"},
                             "file_ending": ".nii.gz", "numTraining": N}
    imagesTr/x_0000.nii.gz  labelsTr/x.nii.gz  imagesTs/y_0000.nii.gz

Unlabeled images: ``imagesUnlabeled/`` if present (what ``advseg phantom`` writes), else the
``imagesTs/`` cases that have no ``labelsTs/`` file (MSD semantics), plus any folder the user names.
Test cases with ground truth: ``imagesTs/`` + ``labelsTs/`` (nnU-Net convention).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advseg.errors import InputError, InputErrors


@dataclass
class Case:
    """One case: its name, image file(s) (one per channel) and label file (None if unlabeled)."""

    name: str
    images: list[Path]
    label: Path | None = None


@dataclass
class DatasetIndex:
    """What a dataset folder holds, before anything is read.

    ``labels`` maps class index to name (``{0: "background", 1: "prostate", ...}``);
    ``modality`` is "CT" or "MR" (from the first channel name).
    """

    root: Path
    name: str
    layout: str  # "msd" or "nnunet"
    labels: dict[int, str]
    modality: str
    channel_names: list[str]
    file_ending: str = ".nii.gz"
    training: list[Case] = field(default_factory=list)
    unlabeled: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    def case(self, name: str) -> Case:
        for c in (*self.training, *self.test, *self.unlabeled):
            if c.name == name:
                return c
        raise KeyError(name)


# --------------------------------------------------------------------------------------------------
# Loading a dataset folder
# --------------------------------------------------------------------------------------------------

NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# Upper-case "CT" anywhere ("CT", "CBCT", "4DCT", "PET/CT", "CTA"), or "ct" starting a lower-case word
# ("ct", "ct_venous", "cbct"); not "direct", "spectral" or "MRI".
_CT_UPPER = re.compile(r"CT")
_CT_WORD = re.compile(r"(?:^|[^a-z])(?:cb|4d)?ct", re.IGNORECASE)


def load_labels_json(path: Path | str) -> dict[int, str]:
    """Class index -> name from a ``dataset.json`` of either layout.

    MSD writes ``{"0": "background", "1": "liver"}``, nnU-Net v2 ``{"background": 0, "liver": 1}``.
    Indices must be ``0..N-1`` without gaps, 0 being background, with at least one foreground class.
    nnU-Net region lists (``"tumor": [1, 2]``) are rejected: advseg trains one class per voxel value.
    """
    path = Path(path)
    return _parse_labels(_read_json(path), path)


def detect_modality(channel_name: str) -> str:
    """``"CT"`` if the channel name says CT (``CT``, ``ct``, ``CBCT``, ``4DCT``, ``PET/CT``, ``CTA``,
    ``ct_venous``), else ``"MR"`` (MRI, T1, T2, FLAIR, ADC, ...; ``direct`` is not CT)."""
    return "CT" if _CT_UPPER.search(channel_name) or _CT_WORD.search(channel_name) else "MR"


def load_dataset(
    root: Path | str, unlabeled_dirs: list[Path] | None = None, require_labels: bool = True
) -> DatasetIndex:
    """Index a dataset folder; see :func:`_load_dataset`. Warnings are issued only for a dataset that
    loads: when it has errors, the user sees the errors alone, one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = _load_dataset(root, unlabeled_dirs, require_labels)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return index


def _load_dataset(
    root: Path | str, unlabeled_dirs: list[Path] | None = None, require_labels: bool = True
) -> DatasetIndex:
    """Index a dataset folder (MSD or nnU-Net v2 raw layout, detected from ``dataset.json``).

    Nothing but ``dataset.json`` and the folder listings is read; :func:`advseg.data.validate.
    validate_dataset` opens the images.

    Training cases: the entries ``dataset.json`` lists (MSD ``"training"``, nnU-Net v2 ``"dataset"``)
    when every listed file exists; otherwise (the json lists files that are absent, e.g. a subset of
    an MSD task was copied) a warning is issued and the cases are discovered from ``imagesTr/`` and
    ``labelsTr/`` instead. Discovery pairs ``imagesTr/<case>[_XXXX]<ending>`` with
    ``labelsTr/<case><ending>``; an image without its label or a label without its image is an error.
    MSD multi-modal 4D files are not read: one file per channel (``_0000``, ``_0001``, ...) is needed.

    Args:
        root: the dataset folder holding ``dataset.json``.
        unlabeled_dirs: extra folders of NIfTI images added to the unlabeled pool (a trailing
            ``_0000`` is stripped from single-channel names; multi-channel needs ``_XXXX`` names).
            A name that clashes with an earlier case gets the folder name as a prefix (warning).
        require_labels: if False, ``imagesTr`` cases without a label (or no ``labelsTr/`` at all)
            go to the unlabeled pool with a warning instead of being an error.

    Raises:
        InputError / InputErrors: one line per problem, each naming the file.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "dataset folder not found")
    if not root.is_dir():
        raise InputError(root, "expected a dataset folder (holding dataset.json), got a file")
    json_path = root / "dataset.json"
    meta = _read_json(json_path)
    labels = _parse_labels(meta, json_path)
    layout, channel_names = _layout_and_channels(meta, json_path)
    file_ending = _file_ending(meta, layout, json_path)
    endings = (file_ending,) if layout == "nnunet" else NIFTI_ENDINGS
    n_ch = len(channel_names)
    strict = layout == "nnunet"  # nnU-Net v2 requires the _XXXX channel suffix
    errors: list[InputError] = []

    # Training cases: json listing if complete, else the folders.
    training = _listed_training(meta, root, layout, n_ch, json_path, errors)
    unlabeled: list[Case] = []
    if training is None:
        images = _discover_images(root / "imagesTr", endings, n_ch, strict, errors, required=True)
        label_files = _discover_labels(root / "labelsTr", endings, errors, required=require_labels)
        if require_labels and not (root / "labelsTr").is_dir():
            images = {}  # one error for the missing folder, not one per image
        training, orphans = _pair(images, label_files, root / "labelsTr", root / "imagesTr", file_ending,
                                  errors, require_labels)
        if orphans:
            warnings.warn(
                f"{root / 'imagesTr'}: {len(orphans)} image(s) without a label in labelsTr/ "
                f"(e.g. {orphans[0].name}) are used as unlabeled data", stacklevel=2)
            unlabeled.extend(orphans)
    else:
        _warn_unlisted(root / "imagesTr", training, endings, n_ch, strict, json_path)

    # Test cases (imagesTs + labelsTs) and the unlabeled pool.
    test: list[Case] = []
    ts_unlabeled: list[Case] = []
    if (root / "imagesTs").is_dir():
        ts_images = _discover_images(root / "imagesTs", endings, n_ch, strict, errors, required=False)
        ts_labels = _discover_labels(root / "labelsTs", endings, errors, required=False)
        test, ts_unlabeled = _pair(ts_images, ts_labels, root / "labelsTs", root / "imagesTs",
                                   file_ending, errors, require_labels=False)
    if (root / "imagesUnlabeled").is_dir():
        found = _discover_images(root / "imagesUnlabeled", endings, n_ch, strict, errors, required=False)
        unlabeled.extend(Case(name, files) for name, files in found.items())
        if ts_unlabeled:
            warnings.warn(
                f"{root / 'imagesTs'}: {len(ts_unlabeled)} image(s) without a labelsTs/ file are not "
                "used (imagesUnlabeled/ is the unlabeled pool)", stacklevel=2)
    else:
        unlabeled.extend(ts_unlabeled)

    taken = {c.name for c in (*training, *test, *unlabeled)}
    for folder in unlabeled_dirs or []:
        folder = Path(folder)
        if not folder.is_dir():
            errors.append(InputError(folder, "unlabeled image folder not found" if not folder.exists()
                                     else "expected a folder of unlabeled images, got a file"))
            continue
        found = _discover_images(folder, NIFTI_ENDINGS, n_ch, False, errors, required=True)
        if not found:
            errors.append(InputError(folder, "no NIfTI images (.nii.gz, .nii) in this folder"))
        for name, files in found.items():
            if name in taken:
                new, k = f"{folder.name}_{name}", 1
                while new in taken:
                    new, k = f"{folder.name}_{name}_{k}", k + 1
                warnings.warn(f"{files[0]}: case name '{name}' is already used; renamed to '{new}'",
                              stacklevel=2)
                name = new
            taken.add(name)
            unlabeled.append(Case(name, files))

    if not training and not errors and require_labels:
        errors.append(InputError(root / "imagesTr", "no labeled training cases"))
    if errors:
        raise errors[0] if len(errors) == 1 else InputErrors(errors)

    return DatasetIndex(
        root=root,
        name=str(meta.get("name") or root.name),
        layout=layout,
        labels=labels,
        modality=detect_modality(channel_names[0]),
        channel_names=channel_names,
        file_ending=file_ending,
        training=training,
        unlabeled=unlabeled,
        test=test,
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise InputError(path, "not found (an MSD or nnU-Net v2 dataset folder needs a dataset.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"cannot read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def _is_int_text(text: Any) -> bool:
    return isinstance(text, str) and re.fullmatch(r"-?\d+", text.strip()) is not None


def _parse_labels(meta: dict[str, Any], path: Path) -> dict[int, str]:
    raw = meta.get("labels")
    if raw is None:
        raise InputError(path, "no 'labels' key (it maps class indices to names)")
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "'labels' must be a non-empty mapping of classes")
    out: dict[int, str] = {}
    if all(_is_int_text(k) for k in raw) and all(isinstance(v, str) for v in raw.values()):
        for key, name in raw.items():  # MSD: {"0": "background"}
            if int(key) in out:
                raise InputError(path, f"label index {int(key)} appears twice in 'labels'")
            out[int(key)] = name
    else:
        for name, value in raw.items():  # nnU-Net v2: {"background": 0}
            if isinstance(value, list | tuple):
                raise InputError(
                    path, f"label '{name}' is a region {value} (nnU-Net region-based training); advseg "
                    "trains one class per label value: give each label a single integer")
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(path, f"label '{name}' has value {value!r}; expected an integer class index")
            if value in out:
                raise InputError(path, f"labels '{out[value]}' and '{name}' both have value {value}")
            out[value] = str(name)
    indices = sorted(out)
    if indices != list(range(len(indices))):
        raise InputError(path, f"label indices must be 0..N-1 without gaps, got {indices}")
    if len(indices) < 2:
        raise InputError(path, "'labels' declares no foreground class (only background)")
    return dict(sorted(out.items()))


def _layout_and_channels(meta: dict[str, Any], path: Path) -> tuple[str, list[str]]:
    if "channel_names" in meta:
        layout, key = "nnunet", "channel_names"
    elif "modality" in meta:
        layout, key = "msd", "modality"
    else:
        raise InputError(path, "no 'channel_names' (nnU-Net v2) or 'modality' (MSD) key")
    raw = meta[key]
    if not isinstance(raw, dict) or not raw or not all(_is_int_text(k) for k in raw):
        raise InputError(path, f"'{key}' must map channel numbers to names, e.g. {{\"0\": \"CT\"}}")
    channels = {int(k): str(v) for k, v in raw.items()}
    if sorted(channels) != list(range(len(channels))):
        raise InputError(path, f"'{key}' channel numbers must be 0..N-1, got {sorted(channels)}")
    return layout, [channels[i] for i in range(len(channels))]


def _file_ending(meta: dict[str, Any], layout: str, path: Path) -> str:
    if layout != "nnunet":
        return ".nii.gz"
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise InputError(path, f"file_ending {ending!r} is not supported (advseg reads .nii.gz and .nii)")
    return ending


def _ending_of(path: Path, endings: tuple[str, ...]) -> str | None:
    low = path.name.lower()
    return next((e for e in endings if low.endswith(e)), None)


def _stem(path: Path, ending: str) -> str:
    return path.name[: -len(ending)]


def _visible_files(folder: Path) -> list[Path]:
    # Hidden files include macOS "._x.nii.gz" resource forks and half-written ".tmp-" files.
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def _discover_images(
    folder: Path, endings: tuple[str, ...], n_channels: int, strict: bool, errors: list[InputError],
    required: bool,
) -> dict[str, list[Path]]:
    """``{case: [channel files]}`` from ``<case>_XXXX<ending>`` (or ``<case><ending>``, single channel,
    when not ``strict``; a trailing ``_0000`` is then stripped)."""
    if not folder.is_dir():
        if required:
            errors.append(InputError(folder, "image folder not found"))
        return {}
    channels: dict[str, dict[int, Path]] = {}
    ignored: list[Path] = []
    for path in _visible_files(folder):
        ending = _ending_of(path, endings)
        if ending is None:
            ignored.append(path)
            continue
        stem = _stem(path, ending)
        match = _CHANNEL_RE.match(stem)
        if n_channels == 1 and not strict:
            name, ch = (match["case"], 0) if match and match["channel"] == "0000" else (stem, 0)
        elif match is None:
            hint = (" (4D multi-channel MSD files are not read: write one file per channel, e.g. with "
                    "nnUNetv2_convert_MSD_dataset)" if n_channels > 1 else "")
            errors.append(InputError(path, f"expected <case>_XXXX{ending} channel file names (nnU-Net "
                                           f"v2 naming, {n_channels} channel(s)){hint}"))
            continue
        else:
            name, ch = match["case"], int(match["channel"])
        if ch in channels.setdefault(name, {}):
            errors.append(InputError(path, f"case '{name}' channel {ch} is also in "
                                           f"{channels[name][ch].name}"))
            continue
        channels[name][ch] = path
    if ignored:
        warnings.warn(f"{folder}: {len(ignored)} file(s) that are not images ignored "
                      f"(e.g. {ignored[0].name})", stacklevel=3)
    out: dict[str, list[Path]] = {}
    for name, chans in sorted(channels.items()):
        if sorted(chans) != list(range(n_channels)):
            expected = ", ".join(f"{name}_{i:04d}" for i in range(n_channels))
            errors.append(InputError(next(iter(chans.values())), f"case '{name}' has channel(s) "
                                     f"{sorted(chans)} but dataset.json declares {n_channels} "
                                     f"(expected {expected})"))
            continue
        out[name] = [chans[i] for i in range(n_channels)]
    return out


def _discover_labels(
    folder: Path, endings: tuple[str, ...], errors: list[InputError], required: bool
) -> dict[str, Path]:
    if not folder.is_dir():
        if required:
            errors.append(InputError(folder, "label folder not found"))
        return {}
    out: dict[str, Path] = {}
    for path in _visible_files(folder):
        ending = _ending_of(path, endings)
        if ending is None:
            continue
        name = _stem(path, ending)
        if name in out:
            errors.append(InputError(path, f"same case as {out[name].name}"))
            continue
        out[name] = path
    return out


def _pair(
    images: dict[str, list[Path]], labels: dict[str, Path], label_dir: Path, image_dir: Path,
    ending: str, errors: list[InputError], require_labels: bool,
) -> tuple[list[Case], list[Case]]:
    """(cases with a label, cases without); a label with no image is always an error."""
    paired, alone = [], []
    for name, files in images.items():
        if name in labels:
            paired.append(Case(name, files, labels[name]))
        elif require_labels:
            errors.append(InputError(files[0], f"no label file (expected {label_dir / (name + ending)})"))
        else:
            alone.append(Case(name, files))
    for name, path in labels.items():
        if name not in images:
            errors.append(InputError(path, f"label without an image (expected {image_dir}/{name}_0000{ending}"
                                           f" or {name}{ending})"))
    return paired, alone


def _resolve(root: Path, entry: Any) -> Path:
    path = Path(str(entry))
    return path if path.is_absolute() else root / path


def _listed_training(
    meta: dict[str, Any], root: Path, layout: str, n_channels: int, json_path: Path,
    errors: list[InputError],
) -> list[Case] | None:
    """The training cases ``dataset.json`` lists, or None if it lists none or some files are absent."""
    entries: list[tuple[str, list[Path] | None, Path]] = []  # (name, images or None if absent, label)
    if layout == "msd":
        listing = meta.get("training")
        if not listing:
            return None
        if not isinstance(listing, list):
            raise InputError(json_path, "'training' must be a list of {\"image\": ..., \"label\": ...}")
        for i, item in enumerate(listing):
            if not isinstance(item, dict) or not isinstance(item.get("image"), str) \
                    or not isinstance(item.get("label"), str):
                raise InputError(json_path, f"'training' entry {i} must be {{'image': path, 'label': path}}")
            image = _resolve(root, item["image"])
            ending = _ending_of(image, NIFTI_ENDINGS) or ".nii.gz"
            name = _stem(image, ending)
            chans = [image.parent / f"{name}_{c:04d}{ending}" for c in range(n_channels)]
            if n_channels == 1 and image.is_file():
                files: list[Path] | None = [image]
            elif all(p.is_file() for p in chans):  # nnU-Net v1: json names x.nii.gz, files x_0000.nii.gz
                files = chans
            elif image.is_file():
                raise InputError(image, f"dataset.json declares {n_channels} modalities: 4D multi-channel "
                                        "MSD files are not read; write one file per channel "
                                        f"({name}_0000{ending}, ...), e.g. with nnUNetv2_convert_MSD_dataset")
            else:
                files = None
            entries.append((name, files, _resolve(root, item["label"])))
    else:
        listing = meta.get("dataset")
        if not listing:
            return None
        if not isinstance(listing, dict):
            raise InputError(json_path, "'dataset' must map case names to {'images': [...], 'label': ...}")
        for name, item in listing.items():
            if not isinstance(item, dict) or not isinstance(item.get("images"), list) \
                    or not isinstance(item.get("label"), str):
                raise InputError(json_path, f"'dataset' entry '{name}' must be "
                                            "{\"images\": [paths], \"label\": path}")
            if len(item["images"]) != n_channels:
                raise InputError(json_path, f"'dataset' entry '{name}' has {len(item['images'])} images "
                                            f"but channel_names declares {n_channels}")
            images = [_resolve(root, p) for p in item["images"]]
            entries.append((str(name), images if all(p.is_file() for p in images) else None,
                            _resolve(root, item["label"])))
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(json_path, f"training case '{dup}' is listed twice")
    absent = [name for name, files, label in entries if files is None or not label.is_file()]
    if absent:
        warnings.warn(
            f"{json_path}: {len(absent)} of {len(entries)} listed training cases are missing "
            f"(e.g. {absent[0]}); using the image/label files present in imagesTr/ and labelsTr/ instead",
            stacklevel=3)
        return None
    return [Case(name, files, label) for name, files, label in entries if files is not None]


def _warn_unlisted(
    folder: Path, training: list[Case], endings: tuple[str, ...], n_channels: int, strict: bool,
    json_path: Path,
) -> None:
    if not folder.is_dir():
        return
    listed = {p.resolve() for c in training for p in c.images}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = _discover_images(folder, endings, n_channels, strict, [], required=False)
    extra = sorted(name for name, files in found.items() if files[0].resolve() not in listed)
    if extra:
        warnings.warn(f"{folder}: {len(extra)} image(s) not listed in {json_path.name} 'training' are "
                      f"not used (e.g. {extra[0]})", stacklevel=3)
