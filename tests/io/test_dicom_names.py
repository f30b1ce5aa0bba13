"""ROI-name matching: case, word order, side spellings, synonyms, the user's file and --structures."""

from __future__ import annotations

from pathlib import Path

import pytest

from advseg.errors import InputError
from advseg.io.dicom.names import SYNONYMS, key, load_synonyms, match_rois, parse_structures


@pytest.mark.parametrize(
    "name",
    [
        "Femur_L",
        "Femoral Head L",
        "FemoralHead_Lt",
        "LT FEMUR",
        "femur left",
        "Left_Femur",
        "left_femur",
        "Femoral_Head_L",
    ],
)
def test_left_femur_spellings_match(name: str) -> None:
    assert match_rois([name, "Bladder"], {"left_femur": []}, SYNONYMS) == {"left_femur": [name]}


def test_key_ignores_case_order_and_side_spelling() -> None:
    assert key("FemoralHead_Lt") == key("Femoral Head L") == key("l FEMORAL head") == "femoral head l"
    assert key("Femur_R") != key("Femur_L")


def test_right_does_not_match_left() -> None:
    assert match_rois(["Femur_R"], {"left_femur": []}, SYNONYMS) == {"left_femur": []}


def test_user_names_win_over_synonyms() -> None:
    wanted = parse_structures("Prostate_CTV=prostate,Blase=bladder", default=())
    assert wanted == {"prostate": ["Prostate_CTV"], "bladder": ["Blase"]}
    got = match_rois(["Prostate", "prostate ctv", "Blase", "Rectum"], wanted, SYNONYMS)
    assert got == {"prostate": ["prostate ctv"], "bladder": ["Blase"]}


def test_structures_default_and_bad_specs() -> None:
    assert parse_structures(None, ("prostate", "bladder")) == {"prostate": [], "bladder": []}
    with pytest.raises(InputError, match="background"):
        parse_structures("Body=background", ())
    with pytest.raises(InputError, match="label name 'a b'"):
        parse_structures("X=a b", ())


def test_an_roi_matching_two_labels_is_ambiguous() -> None:
    with pytest.raises(InputError, match="matches both"):
        match_rois(["Bladder"], {"bladder": [], "vessie": ["bladder"]}, SYNONYMS)


def test_user_synonym_file_extends_the_table(tmp_path: Path) -> None:
    f = tmp_path / "syn.yaml"
    f.write_text("prostate: [PROST_TPS]\nbowel_bag: [Darm]\n")
    table = load_synonyms(f)
    assert "PROST_TPS" in table["prostate"] and "Prostate" in table["prostate"]
    assert match_rois(["darm"], {"bowel_bag": []}, table) == {"bowel_bag": ["darm"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="bad.yaml: expected a mapping"):
        load_synonyms(bad)
    with pytest.raises(InputError, match="synonym file not found"):
        load_synonyms(tmp_path / "none.yaml")
