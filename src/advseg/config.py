"""Run configuration: dataclasses with YAML presets.

A preset is a YAML file in ``advseg/configs/`` (``configs/`` at the repository root links there);
it may name a ``base:`` preset it extends. Only the keys a preset sets are overridden, so presets
stay short. The final, fully expanded config is saved as ``config.yaml`` in every run folder and
inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from advseg.errors import InputError
from advseg.io.atomic import atomic_write_text

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Preprocessing and sampling.

    ``recipe="pelvic"`` is the pelvic CT study's: center-crop each axial slice to
    ``crop_xy`` voxels, resize to ``resize_xy``, keep the middle ``n_slices`` slices.
    ``recipe="general"``: crop to the body / nonzero region, flip axes to a canonical orientation
    (array axis order kept, affine diagonal made positive), resample to ``target_spacing`` (mm,
    ``(z, y, x)``; None keeps each volume's spacing), then normalise intensities (CT: clip to
    ``hu_window`` and scale to [-1, 1]; MR: clip to the ``percentiles`` of the nonzero voxels and
    z-score per volume and channel). See :mod:`advseg.data.preprocess`.
    ``patch_size``: 3 ints ``(Z, Y, X)`` for 3D patches, 2 ints ``(Y, X)`` for 2D axial slices.
    """

    recipe: str = "pelvic"
    modality: str = "auto"  # "CT", "MR" or "auto" (from dataset.json)
    crop_xy: int = 384
    resize_xy: int = 128
    n_slices: int = 64
    target_spacing: list[float] | None = None
    # A soft-tissue window (W 600, L 50): urine, prostate and muscle differ by 10-50 HU, which the
    # full [-1000, 1000] range squeezes into ~2 % of the input scale. Measured on the phantom (demo
    # data, 700 iterations, same split): bladder test DSC 0.765 -> 0.865, prostate 0.777 -> 0.801,
    # rectum 0.832 -> 0.873, femurs unchanged (~0.94). Bone and air stay distinct at the bounds.
    hu_window: list[float] = field(default_factory=lambda: [-250.0, 350.0])
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    patch_size: list[int] = field(default_factory=lambda: [16, 128, 128])
    foreground_oversample: float = 0.33
    cache_dir: str | None = None  # preprocessing cache; $ADVSEG_CACHE wins; default ~/.cache/advseg


@dataclass
class AugmentConfig:
    """Each augmentation has a probability; 0 switches it off (see :mod:`advseg.transforms.augment`)."""

    translate_prob: float = 0.5
    translate_max_voxels: int = 8  # in X and Y, whole voxels
    flip_prob: float = 0.5  # left-right; paired left/right classes are swapped
    contrast_prob: float = 0.3
    contrast_gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])
    rotate_prob: float = 0.3
    rotate_deg: float = 10.0  # about the slice axis, uniform in [-deg, deg]
    scale_prob: float = 0.0  # in-plane zoom (off in the study's recipe)
    scale_range: list[float] = field(default_factory=lambda: [0.85, 1.15])  # factor, > 1 enlarges
    noise_prob: float = 0.2
    noise_std: float = 0.05  # Gaussian noise std, normalised intensity units


@dataclass
class NetworkConfig:
    """The segmenter S.

    ``name`` is ``res_unet`` (advseg's residual U-Net family) or ``monai:<Class>`` for any
    network in ``monai.networks.nets`` (``kwargs`` are passed to it).
    """

    name: str = "res_unet"
    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 6
    channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    res_blocks: int = 1  # residual blocks per level
    pooling: str = "multiscale"  # "max" or "multiscale"
    aux: bool = True  # auxiliary classifiers at 1/2 and 1/4 resolution
    aux_weights: list[float] = field(default_factory=lambda: [0.5, 0.25])
    norm: str = "batch"  # "batch" or "instance"
    act: str = "relu"  # "relu" or "leakyrelu"
    dropout: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Voxel-wise loss L_vox: ``adaptive_ce`` (w_c = 2 - DSC_c + ln(N_all/N_c)), ``ce``,
    ``dice``, ``dice_ce`` or ``gdice_attention`` (ASDNet generalized Dice with sample attention)."""

    name: str = "adaptive_ce"
    dice_momentum: float = 0.9  # running-mean factor for DSC_c in the adaptive weights
    deep_supervision_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    attention_beta: float = 2.0
    dice_include_background: bool = True  # dice, dice_ce, gdice_attention
    dice_batch: bool = True  # dice, dice_ce: pool Dice over the batch (stable on patches missing a class)
    ignore_index: int | None = None  # label value excluded from ce / adaptive_ce


@dataclass
class AdversarialConfig:
    """The discriminator D and the semi-supervised scheme (method issue)."""

    enabled: bool = False
    discriminator: str = "fcn"  # fcn | image | dcgan2d | fusion
    d_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # dcgan2d: 5 widths -> 6 convs
    d_norm: str = "auto"  # auto (fcn: none; image, fusion: instance) | none | instance | batch; dcgan2d: none
    # D's input: product (x*y) | concat (cat(x, y)) | label (y alone);
    # auto: fcn -> product, image and fusion -> concat, dcgan2d -> label
    d_input: str = "auto"
    # Added to the normalised image before x * y: CT in [-1, 1] has water-like tissue at ~0, which the
    # product would hide from D (and S would get no adversarial gradient there).
    d_image_offset: float = 1.0
    d_lr: float = 1e-4
    # Levers of D's learning (issue 10; the study's D has all of them off):
    # fcn: a decoder with skip connections back to full resolution instead of trilinear up-sampling of
    # the 1/2^len(d_channels) logits (which cannot place an error at a one-voxel boundary)
    d_decoder: bool = False
    d_spectral_norm: bool = False  # spectral normalisation of D's convolutions (Miyato et al. 2018)
    d_label_smoothing: float = 0.0  # one-sided: real target 1 - s (Salimans et al. 2016)
    d_instance_noise: float = 0.0  # std of Gaussian noise on D's inputs while D trains (Sonderby et al.)
    # What D learns to call fake in S's map: "fake" every voxel (the study); "errors" only the voxels
    # where S's label differs from the truth (elsewhere S's input is the truth's, so calling it fake
    # contradicts the real example): D becomes a voxel-wise error detector
    d_target: str = "fake"
    # Iterations at the start in which only D trains, on a frozen S in eval mode (e.g. an S loaded
    # with train.init_from), before S sees L_adv
    d_warmup_iterations: int = 0
    # One S forward pass (and one D pass) over the labeled and unlabeled batches together instead of
    # two: less overhead per semi-supervised step; batch norm then sees both batches at once
    joint_forward: bool = False
    onehot_fake: bool = True  # feed D with one-hot(argmax S(x)) (straight-through gradient)
    lambda_adv: float = 0.01
    lambda_adv_unlabeled: float = 0.001
    semi: bool = False
    lambda_semi: float = 0.1
    # Confidence threshold of L_semi (ASDNet's gamma): a number in [0, 1], or "auto": recalibrated at
    # every validation as the lowest threshold at which the validation cases' passing voxels reach
    # t_semi_target_accuracy (advseg.training.variants.adversarial); t_semi_target_accuracy until then.
    t_semi: float | str = 0.2
    t_semi_target_accuracy: float = 0.97
    # Which confidence selects L_semi's voxels: d (sigmoid of D's logits, the study), softmax (S's own
    # max-softmax probability: plain confidence-thresholded self-training, the baseline D must beat) or
    # product (the two multiplied: D's evidence added to S's own).
    mask_source: str = "d"
    # D diagnostics at every validation (AUCs, pass fractions, reliability; log.jsonl and the report)
    diagnostics: bool = True
    pretrain_iterations: int = 5000
    unlabeled_prob: float = 0.5  # chance an iteration after pre-training also uses an unlabeled batch
    d_steps: int = 1  # discriminator steps per segmenter step (Kohl et al.: 3)
    # trainer (advseg.training.variants.registry): semi_adv (the study) | pure | hybrid (Kohl et al.)
    # | asdnet (Nie et al.) | semi_adv_2d (Tan et al.) | fusion (Pan et al.)
    mode: str = "semi_adv"
    mask_poison_std: float = 0.0  # fusion: noise added to the label maps (truth and S's) when training D
    noise_std: float = 0.1  # fusion: noise on the second copy of an unlabeled image (normalised units)
    # fusion: supervised-only for the last N iterations; None: N = pretrain_iterations (Pan et al.: the
    # first and the last N iterations), so the size presets' pre-training length scales it too
    supervised_tail: int | None = None
    collapse_window: int = 200  # iterations of near-zero L_D or D(real)~D(fake) before a warning
    collapse_eps_loss: float = 1e-3  # "L_D near 0"
    collapse_eps_gap: float = 0.02  # "D(real) close to D(fake)": |mean sigmoid(D) real - fake|


@dataclass
class MeanTeacherConfig:
    """Mean Teacher (Tarvainen & Valpola 2017), the semi-supervised baseline without a discriminator.

    The teacher is an exponential moving average of S's weights; S is also trained to agree with it
    (mean squared difference of the softmax maps) on labeled and unlabeled patches, each network
    seeing its own Gaussian noise on the input. The consistency weight ramps up with
    ``consistency * exp(-5 (1 - t / rampup_iterations)^2)``.
    """

    enabled: bool = False
    ema_decay: float = 0.99  # alpha; min(1 - 1/(t + 1), alpha) early on, so the teacher starts as S
    consistency: float = 0.1  # lambda_cons at the end of the ramp-up
    rampup_iterations: int | None = None  # None: 40 % of train.iterations
    noise_std: float = 0.1  # Gaussian input noise (normalised intensity units), drawn per network
    noise_clip: float = 0.2  # |noise| clipped to this


@dataclass
class TrainConfig:
    iterations: int = 40000
    batch_size: int = 2
    lr: float = 5e-4
    weight_decay: float = 0.0
    poly_power: float = 0.9
    val_every: int = 500
    checkpoint_every: int = 500
    figure_every: int = 0  # 0: with every validation
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA
    amp_dtype: str = "float16"  # CUDA autocast dtype: float16 (with a GradScaler) | bfloat16 (no scaler)
    # cudnn.benchmark off and cudnn.deterministic on (CUDA): reproducible, somewhat slower convolutions
    deterministic: bool = False
    # under torchrun: batch norm statistics over the global batch (torch.nn.SyncBatchNorm; CUDA only)
    sync_batchnorm: bool = False
    bf16_cpu: bool = False  # bf16 autocast on CPU (measured faster on some CPUs)
    # 3-D nets and batches in channels-last (NDHWC) layout: 1.4x faster CPU steps (networks.to_channels_last)
    channels_last: bool = True
    num_workers: int = 0
    labeled_fraction: float = 1.0
    labeled_count: int | None = None
    folds: int = 5
    fold: int = 0
    val_cases: int | None = None  # cap the validation set size (speed)
    # Stop when the validation mean DSC has not improved by more than early_stop_min_delta for this
    # many validations in a row (None: train all iterations). Decided from the checkpointed best
    # iteration, so a resumed run stops where the uninterrupted one would.
    early_stop_patience: int | None = None
    early_stop_min_delta: float = 0.0
    # A checkpoint (.pt) whose S weights start a new run (fine-tuning, or an adversarial run on top of
    # a supervised one); optimizers, step and D start fresh. Ignored on --resume.
    init_from: str | None = None
    slices_2d: bool = False  # train a 2D network on axial slices of the 3D volumes


@dataclass
class InferenceConfig:
    mode: str = "slabs"  # "slabs" (the study's 4 x 16 slices) or "sliding_window"
    overlap: float = 0.5
    sw_batch_size: int = 2
    tta_flip: bool = False
    keep_largest: bool = False
    checkpoint: str = "best"  # best | last
    # How a prediction on a resized grid goes back to the original one: "probabilities" (linear
    # interpolation of the softmax, then argmax: smooth boundaries, as nnU-Net) or "labels" (nearest
    # neighbour of the argmax: cheaper for very large images). Same-size grids always take the cheap path.
    resample: str = "probabilities"


@dataclass
class Config:
    name: str = "res_unet_aux"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    mean_teacher: MeanTeacherConfig = field(default_factory=MeanTeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def uses_unlabeled(self) -> bool:
        """Whether the method trains on unlabeled images (semi-adversarial or Mean Teacher)."""
        return self.adversarial.semi or self.mean_teacher.enabled

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _merge(obj: Any, updates: dict[str, Any], where: str) -> Any:
    """Return a copy of dataclass ``obj`` with ``updates`` applied recursively, type-checked."""
    if not isinstance(updates, dict):
        raise InputError(where, f"expected a mapping, got {type(updates).__name__}")
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    changes = {}
    for key, value in updates.items():
        if key not in names:
            raise InputError(where, f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if is_dataclass(current):
            changes[key] = _merge(current, value or {}, f"{where}.{key}")
        else:
            changes[key] = _check_field(type(obj), key, _coerce(value, hints[key], f"{where}.{key}"),
                                        f"{where}.{key}")
    return dataclasses.replace(obj, **changes)


def _check_t_semi(value: Any, where: str) -> Any:
    if value == "auto":
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise InputError(where, f"expected a number in [0, 1] or auto, got {value!r}")


def _check_fraction(value: Any, where: str) -> Any:
    if not 0 < value <= 1:
        raise InputError(where, f"expected a number in (0, 1], got {value!r}")
    return value


def _check_d_target(value: Any, where: str) -> Any:
    if value not in ("fake", "errors"):
        raise InputError(where, f"expected fake or errors, got {value!r}")
    return value


def _check_amp_dtype(value: Any, where: str) -> Any:
    if value not in ("float16", "bfloat16"):
        raise InputError(where, f"expected float16 or bfloat16, got {value!r}")
    return value


def _check_mask_source(value: Any, where: str) -> Any:
    if value not in ("d", "softmax", "product"):
        raise InputError(where, f"expected d, softmax or product, got {value!r}")
    return value


#: checks of single fields beyond their type: (dataclass, key) -> check(value, where) -> value
_FIELD_CHECKS = {
    (AdversarialConfig, "t_semi"): _check_t_semi,
    (AdversarialConfig, "t_semi_target_accuracy"): _check_fraction,
    (AdversarialConfig, "mask_source"): _check_mask_source,
    (AdversarialConfig, "d_target"): _check_d_target,
    (TrainConfig, "amp_dtype"): _check_amp_dtype,
}


def _check_field(cls: type, key: str, value: Any, where: str) -> Any:
    check = _FIELD_CHECKS.get((cls, key))
    return value if check is None or value is None else check(value, where)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if value is None:
        return None
    text = str(hint)
    if hint is bool or text == "bool":
        if not isinstance(value, bool):
            raise InputError(where, f"expected true/false, got {value!r}")
        return value
    if hint is int or text in ("int", "int | None"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(where, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(where, f"expected a number, got {value!r}")
        return float(value)
    if hint is str or text in ("str", "str | None"):
        if not isinstance(value, str):
            raise InputError(where, f"expected a string, got {value!r}")
        return value
    if text.startswith("list") and not isinstance(value, list):
        raise InputError(where, f"expected a list, got {value!r}")
    return value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; one-line :class:`InputError` naming the file otherwise."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a config file must be a mapping of keys")
    return data


def _resolve(data: dict[str, Any], where: Path, seen: tuple[str, ...] = ()) -> Config:
    data = dict(data)
    base = data.pop("base", None)
    if base is None:
        cfg = Config()
    else:
        if base in seen:
            raise InputError(where, f"preset cycle through '{base}'")
        cfg = _resolve(load_yaml_mapping(_preset_path(base)), _preset_path(base), (*seen, base))
    return _merge(cfg, data, str(where))


def _preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise InputError(None, f"unknown preset '{name}' (known: {', '.join(preset_names())})")
    return path


def load_preset(name: str) -> Config:
    """The preset ``name`` from ``advseg/configs/`` (with its ``base`` chain resolved).

    ``"a+b"`` applies the keys of preset ``b`` on top of ``a``: a method preset plus a size preset,
    e.g. ``res_unet_aux_adv_semi+cpu``. The config's ``name`` is the first part.
    """
    first, *rest = name.split("+")
    path = _preset_path(first)
    cfg = _resolve(load_yaml_mapping(path), path, (first,))
    for extra in rest:
        extra_path = _preset_path(extra)
        data = load_yaml_mapping(extra_path)
        data.pop("base", None)
        cfg = _merge(cfg, data, str(extra_path))
    return dataclasses.replace(cfg, name=first)


def load_config(path: str | Path) -> Config:
    """A user's YAML config file (it may name ``base: <preset>``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "config file not found")
    return _resolve(load_yaml_mapping(path), path)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a saved config (``Config.to_dict()`` output, e.g. from a checkpoint)."""
    return _merge(Config(), data, "config")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML), e.g. ``train.iterations=100``."""
    for item in overrides:
        if "=" not in item:
            raise InputError(None, f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        nested: dict[str, Any] = {}
        node = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        cfg = _merge(cfg, nested, f"override {key}")
    return cfg
