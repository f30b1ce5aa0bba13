"""load_dataset / load_labels_json: MSD and nnU-Net v2 layouts, unlabeled pools, bad folders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from advseg.data.dataset import detect_modality, load_dataset, load_labels_json
from advseg.errors import InputError
from advseg.io import Volume, write_volume

SHAPE = (8, 10, 12)
MSD_HIPPO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "msd-hippocampus"


def _vol(path: Path, seed: int = 0, label: bool = False) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 3, SHAPE).astype(np.uint8) if label else rng.normal(size=SHAPE).astype(np.float32)
    write_volume(path, Volume(arr, np.diag([1.0, 1.0, 2.0, 1.0])))


def make_msd(root: Path, cases=("a", "b", "c"), test=(), test_labeled=(), listed=True,
             modality="MRI") -> Path:
    train = []
    for i, c in enumerate(cases):
        _vol(root / "imagesTr" / f"{c}.nii.gz", i)
        _vol(root / "labelsTr" / f"{c}.nii.gz", i, label=True)
        train.append({"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"})
    for i, c in enumerate(test):
        _vol(root / "imagesTs" / f"{c}.nii.gz", 100 + i)
        if c in test_labeled:
            _vol(root / "labelsTs" / f"{c}.nii.gz", 100 + i, label=True)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"name": "Toy", "modality": {"0": modality}, "labels": {"0": "background", "1": "x", "2": "y"},
            "numTraining": len(cases), "test": [f"./imagesTs/{c}.nii.gz" for c in test]}
    if listed:
        meta["training"] = train
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_nnunet(root: Path, cases=("a", "b"), channels=("T2", "ADC"), extra: dict | None = None) -> Path:
    for i, c in enumerate(cases):
        for ch in range(len(channels)):
            _vol(root / "imagesTr" / f"{c}_{ch:04d}.nii.gz", 10 * i + ch)
        _vol(root / "labelsTr" / f"{c}.nii.gz", i, label=True)
    meta = {"channel_names": {str(i): n for i, n in enumerate(channels)},
            "labels": {"background": 0, "peripheral": 1, "transition": 2},
            "numTraining": len(cases), "file_ending": ".nii.gz", **(extra or {})}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_layout(tmp_path):
    root = make_msd(tmp_path, test=("t1", "t2", "t3"), test_labeled=("t2",))
    index = load_dataset(root)
    assert (index.layout, index.name, index.modality, index.channel_names) == ("msd", "Toy", "MR", ["MRI"])
    assert index.labels == {0: "background", 1: "x", 2: "y"} and index.num_classes == 3
    assert [c.name for c in index.training] == ["a", "b", "c"]
    assert index.training[0].images == [root / "imagesTr" / "a.nii.gz"]
    assert index.training[0].label == root / "labelsTr" / "a.nii.gz"
    # MSD semantics: imagesTs without a labelsTs file are unlabeled; with one they are test cases.
    assert [c.name for c in index.unlabeled] == ["t1", "t3"] and all(c.label is None for c in index.unlabeled)
    assert [c.name for c in index.test] == ["t2"] and index.test[0].label == root / "labelsTs" / "t2.nii.gz"
    assert index.case("t2").label is not None


def test_msd_discovers_files_without_listing(tmp_path):
    root = make_msd(tmp_path, listed=False)
    assert [c.name for c in load_dataset(root).training] == ["a", "b", "c"]


def test_listed_but_absent_files_fall_back_to_folders_with_warning(tmp_path):
    root = make_msd(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/zz.nii.gz", "label": "./labelsTr/zz.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="1 of 4 listed training cases are missing"):
        index = load_dataset(root)
    assert [c.name for c in index.training] == ["a", "b", "c"]


def test_unlisted_images_are_warned_about(tmp_path):
    root = make_msd(tmp_path)
    _vol(root / "imagesTr" / "d.nii.gz")
    _vol(root / "labelsTr" / "d.nii.gz", label=True)
    with pytest.warns(UserWarning, match="not listed"):
        index = load_dataset(root)
    assert [c.name for c in index.training] == ["a", "b", "c"]


def test_hidden_and_non_image_files(tmp_path):
    root = make_msd(tmp_path, listed=False)
    (root / "imagesTr" / "._a.nii.gz").write_bytes(b"\x00\x05")  # macOS resource fork
    (root / "imagesTr" / "README.txt").write_text("notes")
    with pytest.warns(UserWarning, match="README.txt"):
        index = load_dataset(root)
    assert len(index.training) == 3


def test_nnunet_v2_multichannel(tmp_path):
    root = make_nnunet(tmp_path)
    index = load_dataset(root)
    assert index.layout == "nnunet" and index.channel_names == ["T2", "ADC"] and index.modality == "MR"
    assert index.labels == {0: "background", 1: "peripheral", 2: "transition"}
    a = index.case("a")
    assert a.images == [root / "imagesTr" / "a_0000.nii.gz", root / "imagesTr" / "a_0001.nii.gz"]
    assert a.label == root / "labelsTr" / "a.nii.gz"


def test_nnunet_v2_dataset_key_listing(tmp_path):
    root = make_nnunet(tmp_path, channels=("CT",))
    meta = json.loads((root / "dataset.json").read_text())
    meta["dataset"] = {"a": {"images": ["imagesTr/a_0000.nii.gz"], "label": "labelsTr/a.nii.gz"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="not listed"):
        index = load_dataset(root)
    assert [c.name for c in index.training] == ["a"] and index.modality == "CT"


def test_nnunet_v1_style_msd_json_with_channel_files(tmp_path):
    # nnU-Net v1: dataset.json names ./imagesTr/a.nii.gz, files are a_0000.nii.gz.
    root = make_nnunet(tmp_path, cases=("a",), channels=("CT",))
    meta = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "other"},
            "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    index = load_dataset(root)
    assert index.layout == "msd" and index.case("a").images == [root / "imagesTr" / "a_0000.nii.gz"]


def test_nnunet_missing_channel_is_error(tmp_path):
    root = make_nnunet(tmp_path)
    (root / "imagesTr" / "b_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"b_0000.nii.gz: case 'b' has channel\(s\) \[0\]"):
        load_dataset(root)


def test_msd_4d_multimodal_listing_is_rejected_clearly(tmp_path):
    root = make_msd(tmp_path, cases=("a",))
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1w"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="one file per channel") as err:
        load_dataset(root)
    assert "imagesTr/a.nii.gz" in str(err.value)


def test_unlabeled_folders(tmp_path):
    root = make_msd(tmp_path / "ds", test=("t1",))
    _vol(root / "imagesUnlabeled" / "u1.nii.gz")
    extra = tmp_path / "more"
    _vol(extra / "p7_0000.nii.gz")  # nnU-Net style suffix is stripped
    _vol(extra / "a.nii.gz")  # clashes with training case "a": renamed
    with pytest.warns(UserWarning) as record:
        index = load_dataset(root, unlabeled_dirs=[extra])
    messages = " ".join(str(w.message) for w in record)
    assert "renamed to 'more_a'" in messages and "imagesTs" in messages
    # imagesUnlabeled/ takes precedence over the unlabeled imagesTs cases.
    assert [c.name for c in index.unlabeled] == ["u1", "more_a", "p7"]
    assert index.case("p7").images == [extra / "p7_0000.nii.gz"]


def test_unlabeled_dir_errors(tmp_path):
    root = make_msd(tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        load_dataset(root, unlabeled_dirs=[tmp_path / "nope", tmp_path / "empty"])
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and "nope: unlabeled image folder not found" in lines[0]
    assert "empty: no NIfTI images" in lines[1]


def test_require_labels_false_moves_unlabeled_training_images(tmp_path):
    root = make_msd(tmp_path, listed=False)
    (root / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(InputError, match=r"imagesTr/b.nii.gz: no label file"):
        load_dataset(root)
    with pytest.warns(UserWarning, match="without a label"):
        index = load_dataset(root, require_labels=False)
    assert [c.name for c in index.training] == ["a", "c"] and [c.name for c in index.unlabeled] == ["b"]
    for f in (root / "labelsTr").iterdir():
        f.unlink()
    (root / "labelsTr").rmdir()
    with pytest.raises(InputError, match="labelsTr: label folder not found") as err:
        load_dataset(root)
    assert "\n" not in str(err.value)
    with pytest.warns(UserWarning, match="3 image"):
        assert len(load_dataset(root, require_labels=False).unlabeled) == 3


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"0": "background", "1": "liver", "2": "tumour"}, {0: "background", 1: "liver", 2: "tumour"}),
        ({"background": 0, "liver": 1}, {0: "background", 1: "liver"}),
    ],
)
def test_load_labels_json_both_layouts(tmp_path, labels, expected):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    assert load_labels_json(tmp_path / "dataset.json") == expected


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ({"background": 0, "whole": [1, 2], "core": 2}, "region"),
        ({"0": "background", "2": "b"}, "without gaps"),
        ({"0": "background"}, "no foreground"),
        ({"background": 0, "a": "one"}, "expected an integer"),
        ({"background": 0, "a": 1, "b": 1}, "both have value 1"),
        ([], "non-empty mapping"),
    ],
)
def test_load_labels_json_errors(tmp_path, labels, match):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    with pytest.raises(InputError, match=match) as err:
        load_labels_json(tmp_path / "dataset.json")
    assert str(err.value).startswith(str(tmp_path / "dataset.json")) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "modality"),
    [("CT", "CT"), ("ct", "CT"), ("non-contrast CT", "CT"), ("CTA", "CT"), ("CBCT", "CT"), ("cbct", "CT"),
     ("4DCT", "CT"), ("PET/CT", "CT"), ("ct_venous", "CT"), ("MRI", "MR"), ("T2", "MR"), ("FLAIR", "MR"),
     ("DWI_direct", "MR"), ("ADC", "MR"), ("spectral", "MR"), ("noNorm", "MR")],
)
def test_detect_modality(name, modality):
    assert detect_modality(name) == modality


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(InputError, match="dataset.json: not found"):
        load_dataset(tmp_path)
    root = make_msd(tmp_path / "ds", cases=())
    with pytest.raises(InputError, match="imagesTr: image folder not found"):
        load_dataset(root)


@pytest.mark.skipif(not MSD_HIPPO.exists(), reason="../shared/data/msd-hippocampus not present (fresh clone)")
def test_real_msd_hippocampus():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped subset loads without warnings
        index = load_dataset(MSD_HIPPO)
    assert index.layout == "msd" and index.modality == "MR"
    assert index.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert len(index.training) == 200 and len(index.unlabeled) == 130 and index.test == []
    assert all(c.label is not None and c.label.exists() for c in index.training)
    assert not {c.name for c in index.training} & {c.name for c in index.unlabeled}
