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

from dataclasses import dataclass, field
from pathlib import Path


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
