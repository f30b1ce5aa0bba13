"""Config dataclasses, YAML presets and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from advseg.config import apply_overrides, config_from_dict, load_config, load_preset, preset_names
from advseg.errors import InputError

METHODS = ["res_unet", "res_unet_aux", "res_unet_aux_adv", "res_unet_aux_adv_semi"]


@pytest.mark.parametrize("name", METHODS)
def test_ablation_ladder_presets(name: str) -> None:
    cfg = load_preset(name)
    assert cfg.name == name
    assert cfg.network.aux == (name != "res_unet")
    assert cfg.network.pooling == ("max" if name == "res_unet" else "multiscale")
    assert cfg.adversarial.enabled == ("adv" in name)
    assert cfg.adversarial.semi == name.endswith("semi")
    assert cfg.train.lr == 5e-4 and cfg.adversarial.d_lr == 1e-4 and cfg.train.poly_power == 0.9


def test_paper_values_of_the_method() -> None:
    a = load_preset("res_unet_aux_adv_semi").adversarial
    assert (a.lambda_adv, a.lambda_adv_unlabeled, a.lambda_semi, a.t_semi) == (0.01, 0.001, 0.1, 0.2)
    assert a.pretrain_iterations == 5000
    assert load_preset("res_unet_aux_adv_semi").train.iterations == 40000


def test_size_preset_composes_on_top() -> None:
    cfg = load_preset("res_unet_aux_adv_semi+cpu")
    assert cfg.name == "res_unet_aux_adv_semi"
    assert cfg.adversarial.semi and cfg.network.channels == load_preset("cpu").network.channels
    assert load_preset("res_unet+paper").network.channels == [64, 128, 256]


def test_every_preset_loads() -> None:
    for name in preset_names():
        load_preset(name)


def test_overrides_and_type_checks() -> None:
    cfg = apply_overrides(load_preset("res_unet"), ["train.iterations=7", "data.patch_size=[8, 16, 16]"])
    assert cfg.train.iterations == 7 and cfg.data.patch_size == [8, 16, 16]
    with pytest.raises(InputError, match="unknown config key 'iteration'"):
        apply_overrides(cfg, ["train.iteration=3"])
    with pytest.raises(InputError, match="expected an integer"):
        apply_overrides(cfg, ["train.iterations=abc"])


def test_mask_source_and_auto_threshold_options() -> None:
    a = load_preset("res_unet_aux_adv_semi").adversarial
    assert (a.mask_source, a.t_semi, a.t_semi_target_accuracy, a.diagnostics) == ("d", 0.2, 0.97, True)
    cfg = apply_overrides(load_preset("res_unet_aux_adv_semi"),
                          ["adversarial.t_semi=auto", "adversarial.mask_source=softmax"])
    assert (cfg.adversarial.t_semi, cfg.adversarial.mask_source) == ("auto", "softmax")
    assert config_from_dict(cfg.to_dict()) == cfg
    assert apply_overrides(cfg, ["adversarial.t_semi=1"]).adversarial.t_semi == 1.0
    bad = {
        "adversarial.mask_source=D": r"adversarial\.mask_source: expected d, softmax or product, got 'D'",
        "adversarial.t_semi=automatic": r"adversarial\.t_semi: expected a number in \[0, 1\] or auto",
        "adversarial.t_semi=1.5": r"adversarial\.t_semi: expected a number in \[0, 1\] or auto, got 1\.5",
        "adversarial.t_semi_target_accuracy=1.2": r"t_semi_target_accuracy: expected a number in \(0, 1\]",
    }
    for override, message in bad.items():
        with pytest.raises(InputError, match=message):
            apply_overrides(cfg, [override])


def test_bad_mask_source_in_a_config_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("base: res_unet_aux_adv_semi\nadversarial:\n  mask_source: entropy\n")
    with pytest.raises(InputError) as exc:
        load_config(path)
    text = str(exc.value)
    assert str(path) in text and "mask_source" in text and "d, softmax or product" in text
    assert "\n" not in text


def test_user_config_file_with_base(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("base: res_unet_aux_adv\ntrain:\n  batch_size: 4\n")
    cfg = load_config(path)
    assert cfg.adversarial.enabled and cfg.train.batch_size == 4
    assert config_from_dict(cfg.to_dict()) == cfg
    path.write_text("train: [1, 2\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(path)
