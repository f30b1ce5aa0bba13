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
    with pytest.raises(InputError, match="unknown config key 'train.iteration'"):
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
        "adversarial.mask_source=D": r"adversarial\.mask_source: must be one of 'd', 'softmax', 'product'; "
                                     r"got 'D'",
        "adversarial.t_semi=automatic": r"adversarial\.t_semi: must be 'auto' or a number, got 'automatic'",
        "adversarial.t_semi=1.5": r"adversarial\.t_semi: must be 'auto' or in \[0, 1\], got 1\.5",
        "adversarial.t_semi_target_accuracy=1.2": r"t_semi_target_accuracy: must be in \(0, 1\], got 1\.2",
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
    assert str(path) in text and "mask_source" in text and "'d', 'softmax', 'product'" in text
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


def _lines(exc: InputError) -> list[str]:
    return exc.one_line().splitlines()


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("train.lr=-1", "config: train.lr: must be > 0, got -1.0"),
        ("adversarial.d_lr=0", "config: adversarial.d_lr: must be > 0, got 0.0"),
        ("augment.flip_prob=1.5", "config: augment.flip_prob: must be in [0, 1], got 1.5"),
        ("adversarial.t_semi=-0.1", "config: adversarial.t_semi: must be 'auto' or in [0, 1], got -0.1"),
        ("augment.contrast_gamma=[1.5, 0.7]", "config: augment.contrast_gamma: must be [lo, hi] with lo <="),
        ("augment.contrast_gamma=[0, 1]", "config: augment.contrast_gamma: entry 0 must be > 0, got 0.0"),
        ("data.hu_window=[350, -250]", "config: data.hu_window: must be [lo, hi] with lo < hi"),
        ("data.patch_size=[16, 30, 32]", "config: data.patch_size: every size must be divisible by 4"),
        ("train.iterations=2", "config: adversarial.pretrain_iterations: must be < train.iterations (2)"),
        ("train.fold=2", "config: train.fold: must be < train.folds (2), got 2"),
        ("network.name=unet", "config: network.name: unknown network 'unet'"),
        ("network.norm=group", "config: network.norm: must be one of 'batch', 'instance'; got 'group'"),
        ("adversarial.mode=gan", "config: adversarial.mode: must be one of"),
        ("train.batch_size=abc", "--set: train.batch_size: expected an integer, got 'abc'"),
        ("data.patch_size=[16, x, 32]", "--set: data.patch_size: entry 1: expected an integer, got 'x'"),
        ("train.batch_size=0", "config: train.batch_size: must be >= 1, got 0"),
    ],
)
def test_every_bad_value_is_one_line_naming_the_key(override: str, line: str) -> None:
    cfg = load_preset("res_unet_aux_adv_semi+tiny")
    with pytest.raises(InputError) as info:
        apply_overrides(cfg, [override])
    (only,) = _lines(info.value)
    assert only.startswith(line), only
    key = override.split("=")[0]
    assert only.count(f"{key}:") <= 1 and only.count(f"{key}.") == 0  # named once, never doubled


def test_all_problems_reported_together() -> None:
    cfg = load_preset("res_unet+tiny")
    with pytest.raises(InputError) as info:
        apply_overrides(cfg, ["train.lr=-1", "augment.noise_prob=2", "train.batch_size=x", "train.nope=1"])
    lines = _lines(info.value)
    assert len(lines) == 4
    assert {ln.split(":")[0] for ln in lines} == {"config", "--set"}


def test_validation_waits_for_the_overrides() -> None:
    # 4 iterations with the full method's 5000 pre-training iterations would never reach L_semi ...
    with pytest.raises(InputError, match="pretrain_iterations"):
        apply_overrides(load_preset("res_unet_aux_adv_semi"), ["train.iterations=4"])
    # ... but a later override that fixes it is fine when the preset is loaded unvalidated
    cfg = apply_overrides(load_preset("res_unet_aux_adv_semi", validate=False),
                          ["train.iterations=4", "adversarial.pretrain_iterations=2"])
    assert cfg.train.iterations == 4


def test_python_api_config_is_validated_before_training(tmp_path: Path, tiny_phantom: Path) -> None:
    import dataclasses

    from advseg.training.api import train_run

    cfg = load_preset("res_unet+tiny")
    bad = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=-1.0))
    with pytest.raises(InputError, match="train.lr: must be > 0"):
        train_run(bad, tiny_phantom, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_saved_config_carries_a_version_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    import yaml

    cfg = load_preset("res_unet+tiny")
    path = tmp_path / "config.yaml"
    cfg.save(path)
    data = yaml.safe_load(path.read_text())
    assert data["config_version"] == 1
    assert load_config(path) == cfg
    data["config_version"] = 99
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=r"written by a newer advseg \(config version 99"):
        load_config(path)
    with pytest.raises(InputError, match="config version 99"):
        config_from_dict(data, where="ckpt.pt")


def test_gan_config_is_validated_the_same_way(tmp_path: Path) -> None:
    from advseg.synthesis.config import gan_preset, load_gan_config, merge_gan_config

    with pytest.raises(InputError) as info:
        merge_gan_config(gan_preset("small"), {"lr": -1, "fade_fraction": 2, "seed": "x"}, "gan.yaml")
    assert sorted(_lines(info.value)) == [
        "gan.yaml: fade_fraction: must be in [0, 1], got 2.0",
        "gan.yaml: lr: must be > 0, got -1.0",
        "gan.yaml: seed: expected an integer, got 'x'",
    ]  # every problem at once
    with pytest.raises(InputError) as info:
        merge_gan_config(gan_preset("small"), {"lr": -1, "fade_fraction": 2}, "gan.yaml")
    assert sorted(_lines(info.value)) == [
        "gan.yaml: fade_fraction: must be in [0, 1], got 2.0",
        "gan.yaml: lr: must be > 0, got -1.0",
    ]
    path = tmp_path / "gan.yaml"
    path.write_text("base: small\nhu_window: [100, -100]\n")
    with pytest.raises(InputError, match=r"gan.yaml: hu_window: must be \[lo, hi\] with lo < hi"):
        load_gan_config(path)
