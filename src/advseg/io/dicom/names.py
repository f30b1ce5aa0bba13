"""ROI names of treatment planning systems -> advseg label names.

TPSs and clinics spell one organ many ways ("Femur_L", "Femoral Head L", "FemoralHead_Lt", "LT FEMUR").
A name is compared by its *key*: split into words (at spaces, punctuation, digits-to-letters and
camelCase boundaries), lower-cased, side words (``l``, ``lt``, ``left``; ``r``, ``rt``, ``right``)
reduced to ``l`` / ``r``, and the words sorted, so word order does not matter either::

    key("FemoralHead_Lt") == key("Femoral Head L") == key("L femoral head") == "femoral head l"

:data:`SYNONYMS` lists, per label name, the spellings that mean it; a user extends the table with a
YAML/JSON file ``{label_name: [name, ...]}`` (:func:`load_synonyms`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from advseg.errors import InputError

SYNONYMS: dict[str, list[str]] = {
    "prostate": ["Prostate", "Prostate gland", "Prostata"],
    "bladder": ["Bladder", "Urinary bladder", "Blad", "Vessie", "Blase"],
    "rectum": ["Rectum", "Rect", "Rectal", "Anorectum"],
    "left_femur": [
        "Femur_L",
        "Femur L",
        "Left femur",
        "Femur left",
        "Femoral Head L",
        "FemoralHead_Lt",
        "Femoral_Head_L",
        "Femur_Head_L",
        "FemurHead_L",
        "Head of femur L",
        "Hip_L",
        "Femur_Neck_L",
        "Femur_Prox_L",
    ],
    "right_femur": [
        "Femur_R",
        "Femur R",
        "Right femur",
        "Femur right",
        "Femoral Head R",
        "FemoralHead_Rt",
        "Femoral_Head_R",
        "Femur_Head_R",
        "FemurHead_R",
        "Head of femur R",
        "Hip_R",
        "Femur_Neck_R",
        "Femur_Prox_R",
    ],
    "seminal_vesicles": ["Seminal vesicles", "SeminalVesicles", "SeminalVesicle", "SV", "SeminalVes"],
    "penile_bulb": ["Penile bulb", "PenileBulb", "Bulb penis", "Bulb_Penis"],
    "bowel": ["Bowel", "Bowel bag", "BowelBag", "Bowel_Small", "SmallBowel", "Small bowel", "Intestine"],
    "sigmoid": ["Sigmoid", "Colon_Sigmoid", "Sigmoid colon"],
    "body": ["Body", "External", "Outline", "Skin", "Patient"],
}

_SIDE = {"l": "l", "lt": "l", "left": "l", "r": "r", "rt": "r", "right": "r"}


def key(name: str) -> str:
    """Comparison key of an ROI or label name (see the module docstring)."""
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", name.strip())
    text = re.sub(r"([A-Za-z])(\d)|(\d)([A-Za-z])", lambda m: " ".join(g for g in m.groups() if g), text)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", text) if w]
    return " ".join(sorted(_SIDE.get(w, w) for w in words))


def load_synonyms(path: str | Path | None) -> dict[str, list[str]]:
    """The built-in table, extended by the file at ``path`` (YAML or JSON ``{label: [names]}``)."""
    table = {k: list(v) for k, v in SYNONYMS.items()}
    if path is None:
        return table
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "synonym file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml / json / decode errors
        raise InputError(path, f"cannot parse the synonym file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
        for k, v in data.items()
    ):
        raise InputError(path, "expected a mapping {label_name: [ROI name, ...]}")
    for label, names in data.items():
        table.setdefault(label, []).extend(names)
    return table


def parse_structures(spec: str | None, default: Iterable[str]) -> dict[str, list[str]]:
    """``"Prostate=prostate,Bladder=bladder"`` -> ``{label: [ROI names the user gave]}`` in order.

    An item without ``=`` names a label whose ROI is found by the synonym table alone; the same
    label may be given several ROI names (``"Femur_L=left_femur,FemHead_L=left_femur"``).
    ``spec=None``: the labels ``default``, found by synonyms.
    """
    if spec is None or not spec.strip():
        return {label: [] for label in default}
    out: dict[str, list[str]] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        roi, _, label = item.rpartition("=") if "=" in item else ("", "", item)
        roi, label = roi.strip(), label.strip()
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", label):
            raise InputError(None, f"--structures: label name '{label}' must be letters, digits, _ or -")
        if label.lower() == "background":
            raise InputError(None, "--structures: 'background' is label 0 and cannot be an ROI")
        out.setdefault(label, [])
        if roi:
            out[label].append(roi)
    if not out:
        raise InputError(None, "--structures names no structure")
    return out


def match_rois(
    roi_names: Iterable[str], wanted: Mapping[str, list[str]], synonyms: Mapping[str, list[str]]
) -> dict[str, list[str]]:
    """For each wanted label, the ROI names (of one RTSTRUCT) that mean it.

    A ROI matches a label if its key equals the key of a name the user gave for it, of a synonym
    of it, or of the label name itself. A name the user gave wins over synonyms: if any ROI
    matches one, only those ROIs are used. An ROI that matches two labels is ambiguous (error).
    """
    rois = list(roi_names)
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for label, given in wanted.items():
        given_keys = {key(n) for n in given}
        syn_keys = {key(n) for n in [label, *synonyms.get(label, [])]}
        exact = [r for r in rois if key(r) in given_keys]
        found = exact or [r for r in rois if key(r) in syn_keys]
        for r in found:
            if r in owner:
                raise InputError(None, f"ROI '{r}' matches both '{owner[r]}' and '{label}'")
            owner[r] = label
        out[label] = found
    return out
