"""Run configuration: dataclasses with YAML presets.

A preset is a YAML file in ``advseg/configs/`` (``configs/`` at the repository root links there);
it may name a ``base:`` preset it extends. Only the keys a preset sets are overridden, so presets
stay short. The final, fully expanded config is saved as ``config.yaml`` in every run folder and
inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from advseg.checks import (
    between,
    each,
    field_problems,
    finite,
    ge,
    gt,
    interval,
    length,
    nonempty,
    one_of,
    or_literal,
    param,
    prob,
    type_problem,
    window,
)
from advseg.checks import coerce as _coerce_value
from advseg.errors import InputError, InputErrors
from advseg.io.atomic import atomic_write_text

PRESET_DIR = Path(__file__).parent / "configs"
# Version of the saved config.yaml layout (top-level key ``config_version``). Bump it when a key is
# renamed or changes meaning; a file with a newer version is refused instead of misread.
CONFIG_VERSION = 1


# The names a config may use. The modules that implement them import these tuples (and a test checks
# that each implements exactly these), so config, below networks, losses, transforms and training,
# validates a config without importing any of them.
NORMS = ("batch", "instance")  # advseg.networks.blocks
ACTS = ("relu", "leakyrelu")  # advseg.networks.blocks
POOLINGS = ("max", "multiscale")  # advseg.networks.blocks
LOSS_NAMES = ("adaptive_ce", "ce", "dice", "dice_ce", "gdice_attention")  # advseg.losses
# the keys of advseg.training.variants.registry.ADVERSARIAL_TRAINERS
ADVERSARIAL_MODES = ("asdnet", "fusion", "hybrid", "pure", "semi_adv", "semi_adv_2d")
MONAI_PREFIX = "monai:"


def monai_segmenters() -> dict[str, type]:
    """Classes of ``monai.networks.nets`` that take ``in_channels`` and ``out_channels`` (what
    ``network.name: monai:<Class>`` may name; :mod:`advseg.networks.factory` builds them)."""
    # imported here, not at the top: keeps torch and monai out of the start-up of every command that
    # reads a config without naming a MONAI network
    import monai.networks.nets as nets
    from torch import nn

    found = {}
    for name in dir(nets):
        obj = getattr(nets, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            if "in_channels" in params and "out_channels" in params:
                found[name] = obj
    return found


def _network_name(name: str) -> str | None:
    if name == "res_unet":
        return None
    if name.startswith(MONAI_PREFIX) and name[len(MONAI_PREFIX):] in monai_segmenters():
        return None
    return f"unknown network {name!r} (res_unet, or monai:<Class> of monai.networks.nets, e.g. monai:UNet)"


def scale_bounds(scale_range: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` of a zoom range; ValueError unless it is two numbers with ``0 < lo <= hi`` (the
    augmentation's own check, :class:`advseg.transforms.augment.RandInPlaneAffined`)."""
    bounds = tuple(float(v) for v in scale_range)
    if len(bounds) != 2 or not 0.0 < bounds[0] <= bounds[1]:
        raise ValueError(f"scale_range must be [lo, hi] with 0 < lo <= hi, got {list(scale_range)}")
    return bounds[0], bounds[1]


def network_patch(spatial_dims: int, size: Sequence[int]) -> Sequence[int]:
    """The patch a network of ``spatial_dims`` sees for a configured ``(Z, Y, X)`` size: a 2-D network
    its last two sizes (axial slices), a 3-D one all three."""
    return size[1:] if spatial_dims == 2 and len(size) == 3 else size


def _device(name: str) -> str | None:
    ok = re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", name) is not None
    return None if ok else f"must be auto, cpu, cuda or cuda:N; got {name!r}"


def _scale_range(value: list[float]) -> str | None:
    try:
        scale_bounds(value)
    except ValueError:
        return f"must be [lo, hi] with 0 < lo <= hi, got {value}"
    return None


def _first_positive(value: list[float]) -> str | None:
    return None if value and value[0] > 0 else f"the first weight must be > 0, got {value}"


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

    recipe: str = param("pelvic", one_of("pelvic", "general"))
    modality: str = param("auto", one_of("auto", "CT", "MR"))  # "CT", "MR" or "auto" (from dataset.json)
    crop_xy: int = param(384, ge(1))
    resize_xy: int = param(128, ge(1))
    n_slices: int = param(64, ge(1))
    target_spacing: list[float] | None = param(None, length(3), each(gt(0)))
    # A soft-tissue window (W 600, L 50): urine, prostate and muscle differ by 10-50 HU, which the
    # full [-1000, 1000] range squeezes into ~2 % of the input scale. Measured on the phantom (demo
    # data, 700 iterations, same split): bladder test DSC 0.765 -> 0.865, prostate 0.777 -> 0.801,
    # rectum 0.832 -> 0.873, femurs unchanged (~0.94). Bone and air stay distinct at the bounds.
    hu_window: list[float] = param([-250.0, 350.0], window)
    percentiles: list[float] = param([0.5, 99.5], window, each(between(0, 100)))
    patch_size: list[int] = param([16, 128, 128], length(2, 3), each(ge(1)))
    foreground_oversample: float = param(0.33, prob)
    cache_dir: str | None = None  # preprocessing cache; $ADVSEG_CACHE wins; default ~/.cache/advseg


@dataclass
class AugmentConfig:
    """Each augmentation has a probability; 0 switches it off (see :mod:`advseg.transforms.augment`)."""

    translate_prob: float = param(0.5, prob)
    translate_max_voxels: int = param(8, ge(0))  # in X and Y, whole voxels
    flip_prob: float = param(0.5, prob)  # left-right; paired left/right classes are swapped
    contrast_prob: float = param(0.3, prob)
    contrast_gamma: list[float] = param([0.7, 1.5], interval(strict=False), each(gt(0)))
    rotate_prob: float = param(0.3, prob)
    rotate_deg: float = param(10.0, between(0, 180))  # about the slice axis, uniform in [-deg, deg]
    scale_prob: float = param(0.0, prob)  # in-plane zoom (off in the study's recipe)
    scale_range: list[float] = param([0.85, 1.15], _scale_range)  # factor, > 1 enlarges
    noise_prob: float = param(0.2, prob)
    noise_std: float = param(0.05, ge(0))  # Gaussian noise std, normalised intensity units


@dataclass
class NetworkConfig:
    """The segmenter S.

    ``name`` is ``res_unet`` (advseg's residual U-Net family) or ``monai:<Class>`` for any
    network in ``monai.networks.nets`` (``kwargs`` are passed to it).
    """

    name: str = param("res_unet", _network_name)
    spatial_dims: int = param(3, one_of(2, 3))
    in_channels: int = param(1, ge(1))
    out_channels: int = param(6, ge(2))
    channels: list[int] = param([64, 128, 256], nonempty, each(ge(1)))
    res_blocks: int = param(1, ge(1))  # residual blocks per level
    pooling: str = param("multiscale", one_of(*POOLINGS))
    aux: bool = True  # auxiliary classifiers at 1/2 and 1/4 resolution
    aux_weights: list[float] = param([0.5, 0.25], each(ge(0)))
    norm: str = param("batch", one_of(*NORMS))
    act: str = param("relu", one_of(*ACTS))
    dropout: float = param(0.0, between(0, 1, hi_open=True))
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Voxel-wise loss L_vox: ``adaptive_ce`` (w_c = 2 - DSC_c + ln(N_all/N_c)), ``ce``,
    ``dice``, ``dice_ce`` or ``gdice_attention`` (ASDNet generalized Dice with sample attention)."""

    name: str = param("adaptive_ce", one_of(*LOSS_NAMES))
    # running-mean factor for DSC_c in the adaptive weights
    dice_momentum: float = param(0.9, between(0, 1, hi_open=True))
    deep_supervision_weights: list[float] = param([1.0, 0.5, 0.25], nonempty, each(ge(0)), _first_positive)
    attention_beta: float = param(2.0, ge(0))
    dice_include_background: bool = True  # dice, dice_ce, gdice_attention
    dice_batch: bool = True  # dice, dice_ce: pool Dice over the batch (stable on patches missing a class)
    ignore_index: int | None = None  # label value excluded from ce / adaptive_ce


@dataclass
class AdversarialConfig:
    """The discriminator D and the semi-supervised scheme (method issue)."""

    enabled: bool = False
    discriminator: str = param("fcn", one_of("fcn", "image", "dcgan2d", "fusion"))
    d_channels: list[int] = param([32, 64, 128, 256], nonempty, each(ge(1)))  # dcgan2d: 5 widths -> 6 convs
    # auto (fcn: none; image, fusion: instance) | none | instance | batch; dcgan2d: none
    d_norm: str = param("auto", one_of("auto", "none", "instance", "batch"))
    # D's input: product (x*y) | concat (cat(x, y)) | label (y alone);
    # auto: fcn -> product, image and fusion -> concat, dcgan2d -> label
    d_input: str = param("auto", one_of("auto", "product", "concat", "label"))
    # Added to the normalised image before x * y: CT in [-1, 1] has water-like tissue at ~0, which the
    # product would hide from D (and S would get no adversarial gradient there).
    d_image_offset: float = param(1.0, finite)
    d_lr: float = param(1e-4, gt(0))
    # Levers of D's learning (issue 10; the study's D has all of them off):
    # fcn: a decoder with skip connections back to full resolution instead of trilinear up-sampling of
    # the 1/2^len(d_channels) logits (which cannot place an error at a one-voxel boundary)
    d_decoder: bool = False
    d_spectral_norm: bool = False  # spectral normalisation of D's convolutions (Miyato et al. 2018)
    # one-sided: real target 1 - s (Salimans et al. 2016)
    d_label_smoothing: float = param(0.0, between(0, 1, hi_open=True))
    # std of Gaussian noise on D's inputs while D trains (Sonderby et al.)
    d_instance_noise: float = param(0.0, ge(0))
    # What D learns to call fake in S's map: "fake" every voxel (the study); "errors" only the voxels
    # where S's label differs from the truth (elsewhere S's input is the truth's, so calling it fake
    # contradicts the real example): D becomes a voxel-wise error detector
    d_target: str = param("fake", one_of("fake", "errors"))
    # Iterations at the start in which only D trains, on a frozen S in eval mode (e.g. an S loaded
    # with train.init_from), before S sees L_adv
    d_warmup_iterations: int = param(0, ge(0))
    # One S forward pass (and one D pass) over the labeled and unlabeled batches together instead of
    # two: less overhead per semi-supervised step; batch norm then sees both batches at once
    joint_forward: bool = False
    # D sees its input average-pooled by this factor per spatial dimension (logits up-sampled back):
    # 8x fewer voxels through D at 2 in 3-D, a cheaper semi-supervised step (1: the study)
    d_downsample: int = param(1, ge(1))
    onehot_fake: bool = True  # feed D with one-hot(argmax S(x)) (straight-through gradient)
    lambda_adv: float = param(0.01, ge(0))
    lambda_adv_unlabeled: float = param(0.001, ge(0))
    semi: bool = False
    lambda_semi: float = param(0.1, ge(0))
    # Confidence threshold of L_semi (ASDNet's gamma): a number in [0, 1], or "auto": recalibrated at
    # every validation as the lowest threshold at which the validation cases' passing voxels reach
    # t_semi_target_accuracy (advseg.training.variants.adversarial); t_semi_target_accuracy until then.
    t_semi: float | str = param(0.2, or_literal("auto", prob))
    t_semi_target_accuracy: float = param(0.97, between(0, 1, lo_open=True))
    # Which confidence selects L_semi's voxels: d (sigmoid of D's logits, the study), softmax (S's own
    # max-softmax probability: plain confidence-thresholded self-training, the baseline D must beat) or
    # product (the two multiplied: D's evidence added to S's own).
    mask_source: str = param("d", one_of("d", "softmax", "product"))
    # D diagnostics at every validation (AUCs, pass fractions, reliability; log.jsonl and the report)
    diagnostics: bool = True
    pretrain_iterations: int = param(5000, ge(0))
    # chance an iteration after pre-training also uses an unlabeled batch
    unlabeled_prob: float = param(0.5, prob)
    d_steps: int = param(1, ge(1))  # discriminator steps per segmenter step (Kohl et al.: 3)
    # trainer (advseg.training.variants.registry): semi_adv (the study) | pure | hybrid (Kohl et al.)
    # | asdnet (Nie et al.) | semi_adv_2d (Tan et al.) | fusion (Pan et al.)
    mode: str = param("semi_adv", one_of(*ADVERSARIAL_MODES))
    # fusion: noise added to the label maps (truth and S's) when training D
    mask_poison_std: float = param(0.0, ge(0))
    # fusion: noise on the second copy of an unlabeled image (normalised units)
    noise_std: float = param(0.1, ge(0))
    # fusion: supervised-only for the last N iterations; None: N = pretrain_iterations (Pan et al.: the
    # first and the last N iterations), so the size presets' pre-training length scales it too
    supervised_tail: int | None = param(None, ge(0))
    # iterations of near-zero L_D or D(real)~D(fake) before a warning
    collapse_window: int = param(200, ge(1))
    collapse_eps_loss: float = param(1e-3, ge(0))  # "L_D near 0"
    collapse_eps_gap: float = param(0.02, ge(0))  # "D(real) close to D(fake)": |mean sigmoid(D) real - fake|


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
    # False: a pass per batch, so batch norm normalises the labeled patches (foreground-oversampled)
    # with their own statistics, as the adversarial methods do (adversarial.joint_forward: false).
    # True: labeled and unlabeled patches through each network as one batch (SSL4MIS's form); on MSD
    # Hippocampus with 4 labeled cases that cost 0.04-0.06 test DSC against supervised training
    # (docs/results.md, the label-scarce matrix).
    joint_forward: bool = False


@dataclass
class TrainConfig:
    iterations: int = param(40000, ge(1))
    batch_size: int = param(2, ge(1))
    # patches per unlabeled batch (semi-supervised methods); None: batch_size. Fewer make a
    # semi-supervised step cheaper (issue 10's overhead lever)
    unlabeled_batch_size: int | None = param(None, ge(1))
    # patch size (Z, Y, X) of the unlabeled batches; None: data.patch_size. Smaller patches make the
    # unlabeled forward/backward pass, most of a semi-supervised step's cost, cheaper (issue 10)
    unlabeled_patch_size: list[int] | None = param(None, length(2, 3), each(ge(1)))
    # where a semi-supervised method's unlabeled images come from: "withheld" (the training cases whose
    # labels a labeled_fraction / labeled_count leaves out), "dataset" (the dataset's imagesUnlabeled/)
    # and "extra" (folders given with --unlabeled, or an experiment's synthesized pool). Choosing one
    # compares pools of the same size (the pelvic study's Table II: real vs GAN-synthesized scans).
    unlabeled_pool: list[str] = param(["withheld", "dataset", "extra"], length(1, 2, 3),
                                      each(one_of("withheld", "dataset", "extra")))
    lr: float = param(5e-4, gt(0))
    weight_decay: float = param(0.0, ge(0))
    poly_power: float = param(0.9, ge(0))
    val_every: int = param(500, ge(0))  # 0: no validation
    checkpoint_every: int = param(500, ge(0))  # 0: only at the end
    figure_every: int = param(0, ge(0))  # 0: with every validation
    seed: int = param(0, ge(0))
    # Seed of the fold split and of the labeled subset; None: seed. Set apart from seed, a run trains
    # on the same cases as another with a new initialisation, sampling and augmentation: the
    # run-to-run spread a one-seed comparison of methods has to exceed (docs/results.md).
    split_seed: int | None = param(None, ge(0))
    device: str = param("auto", _device)  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA
    # CUDA autocast dtype: float16 (with a GradScaler) | bfloat16 (no scaler)
    amp_dtype: str = param("float16", one_of("float16", "bfloat16"))
    # cudnn.benchmark off and cudnn.deterministic on (CUDA): reproducible, somewhat slower convolutions
    deterministic: bool = False
    # under torchrun: batch norm statistics over the global batch (torch.nn.SyncBatchNorm; CUDA only)
    sync_batchnorm: bool = False
    bf16_cpu: bool = False  # bf16 autocast on CPU (measured faster on some CPUs)
    # 3-D nets and batches in channels-last (NDHWC) layout: 1.4x faster CPU steps (networks.to_channels_last)
    channels_last: bool = True
    num_workers: int = param(0, ge(0))
    labeled_fraction: float = param(1.0, between(0, 1, lo_open=True))
    labeled_count: int | None = param(None, ge(1))
    folds: int = param(5, ge(2))
    fold: int = param(0, ge(0))  # < folds
    val_cases: int | None = param(None, ge(1))  # cap the validation set size (speed)
    # Stop when the validation mean DSC has not improved by more than early_stop_min_delta for this
    # many validations in a row (None: train all iterations). Decided from the checkpointed best
    # iteration, so a resumed run stops where the uninterrupted one would.
    early_stop_patience: int | None = param(None, ge(1))
    early_stop_min_delta: float = param(0.0, ge(0))
    # A checkpoint (.pt) whose S weights start a new run (fine-tuning, or an adversarial run on top of
    # a supervised one); optimizers, step and D start fresh. Ignored on --resume.
    init_from: str | None = None
    slices_2d: bool = False  # train a 2D network on axial slices of the 3D volumes

    @property
    def data_seed(self) -> int:
        """The seed that picks the fold split and the labeled subset (``split_seed``, else ``seed``)."""
        return self.seed if self.split_seed is None else self.split_seed


@dataclass
class InferenceConfig:
    # "slabs" (the study's 4 x 16 slices) or "sliding_window"
    mode: str = param("slabs", one_of("slabs", "sliding_window"))
    overlap: float = param(0.5, between(0, 1, hi_open=True))
    sw_batch_size: int = param(2, ge(1))
    tta_flip: bool = False
    keep_largest: bool = False
    checkpoint: str = param("best", one_of("best", "last"))
    # How a prediction on a resized grid goes back to the original one: "probabilities" (linear
    # interpolation of the softmax, then argmax: smooth boundaries, as nnU-Net) or "labels" (nearest
    # neighbour of the argmax: cheaper for very large images). Same-size grids always take the cheap path.
    resample: str = param("probabilities", one_of("probabilities", "labels"))
    # Arithmetic of the S-net at prediction (see advseg.inference.engines and docs/inference.md):
    # "auto" is bf16 on a CPU with native bf16 convolutions (AVX512-BF16 / AMX), else fp32; on CUDA
    # "auto" keeps train.amp's fp16 autocast. "fp32" is the reference path.
    precision: str = param("auto", one_of("auto", "fp32", "bf16"))
    # Slabs per forward pass in the slab recipe; 0 = auto: one at a time on CPU (measured faster and
    # leaner there than the four as one batch, docs/inference.md), all as one batch on CUDA.
    slab_batch: int = param(0, ge(0))


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
        data = {"config_version": CONFIG_VERSION, **self.to_dict()}
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def _merge(obj: Any, updates: Any, source: str, problems: list[InputError], prefix: str = "") -> Any:
    """A copy of dataclass ``obj`` with ``updates`` applied recursively.

    Unknown keys and values of the wrong type are not applied: each adds one :class:`InputError`
    ``<source>: <key path>: <problem>`` to ``problems`` (all of them are reported together).
    """
    if not isinstance(updates, dict):
        section = prefix.rstrip(".") or "config"
        problems.append(InputError(source, f"{section}: expected a mapping, got {updates!r}"))
        return obj
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    changes = {}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            section = prefix.rstrip(".")
            where = f" in {section}" if section else ""
            problems.append(InputError(source, f"unknown config key '{path}' (known{where}: "
                                               f"{', '.join(sorted(names))})"))
            continue
        current = getattr(obj, key)
        if is_dataclass(current):
            changes[key] = _merge(current, {} if value is None else value, source, problems, path + ".")
            continue
        problem = type_problem(value, hints[key])
        if problem:
            problems.append(InputError(source, f"{path}: {problem}"))
            continue
        changes[key] = _coerce_value(value, hints[key])
    return dataclasses.replace(obj, **changes)


def _cross_problems(cfg: Config) -> list[tuple[str, str]]:
    """Checks that involve more than one field (each field's own range is declared with the field)."""
    out: list[tuple[str, str]] = []
    d, n, a, t = cfg.data, cfg.network, cfg.adversarial, cfg.train
    if n.spatial_dims == 3 and len(d.patch_size) != 3:
        out.append(("data.patch_size", f"a 3-D network (network.spatial_dims: 3) needs 3 sizes (Z, Y, X), "
                                       f"got {d.patch_size}"))
    if t.unlabeled_patch_size is not None and len(t.unlabeled_patch_size) != len(d.patch_size):
        out.append(("train.unlabeled_patch_size", f"needs as many sizes as data.patch_size "
                                                  f"{d.patch_size}, got {t.unlabeled_patch_size}"))
    elif a.joint_forward and t.unlabeled_patch_size not in (None, d.patch_size):
        out.append(("train.unlabeled_patch_size", "adversarial.joint_forward passes labeled and unlabeled "
                                                  "patches through S as one batch: they need one size"))
    elif (cfg.mean_teacher.enabled and cfg.mean_teacher.joint_forward
          and t.unlabeled_patch_size not in (None, d.patch_size)):
        out.append(("train.unlabeled_patch_size", "mean_teacher.joint_forward passes labeled and unlabeled "
                                                  "patches through S as one batch: they need one size "
                                                  "(set mean_teacher.joint_forward: false)"))
    if n.name == "res_unet" and "channels" not in n.kwargs:
        levels = len(n.channels)
        if levels < 2:
            out.append(("network.channels", f"res_unet needs at least 2 levels, got {n.channels}"))
        else:
            divisor = 2 ** (levels - 1)
            for key, size in (("data.patch_size", d.patch_size), ("train.unlabeled_patch_size",
                                                                    t.unlabeled_patch_size)):
                if size is None:
                    continue
                if any(s % divisor for s in network_patch(n.spatial_dims, size)):
                    out.append((key, f"every size must be divisible by {divisor} (the S-net's "
                                     f"2^(levels-1) for network.channels {n.channels}), got {size}"))
            if n.aux and not 1 <= len(n.aux_weights) <= levels - 1:
                out.append(("network.aux_weights", f"must have 1 to {levels - 1} entries for {levels} "
                                                   f"levels, got {n.aux_weights}"))
    if t.fold >= t.folds:
        out.append(("train.fold", f"must be < train.folds ({t.folds}), got {t.fold}"))
    # (a run that is all D warm-up never trains S, so it has no semi-supervised phase to miss)
    if a.enabled and a.semi and a.pretrain_iterations >= t.iterations > a.d_warmup_iterations:
        out.append(("adversarial.pretrain_iterations",
                     f"must be < train.iterations ({t.iterations}), or the semi-supervised phase never "
                     f"starts; got {a.pretrain_iterations}"))
    if a.discriminator == "fusion" and a.d_input not in ("auto", "concat"):
        out.append(("adversarial.d_input",
                    f"the fusion discriminator needs auto or concat, got {a.d_input!r}"))
    if a.discriminator == "dcgan2d" and a.d_norm not in ("auto", "none"):
        out.append(("adversarial.d_norm",
                    f"the dcgan2d discriminator has none (auto or none), got {a.d_norm!r}"))
    if a.enabled and a.mode == "semi_adv_2d" and n.spatial_dims != 2:
        out.append(("network.spatial_dims", "adversarial.mode semi_adv_2d trains a 2-D network: must be 2, "
                                            f"got {n.spatial_dims}"))
    return out


def config_problems(cfg: Config, where: str | Path = "config") -> list[InputError]:
    """Every problem of ``cfg``: types and ranges of each field, then the cross-field checks; one
    :class:`InputError` ``<where>: <key path>: <problem>`` each (``where``: the file it came from)."""
    found = field_problems(cfg)
    if not found:  # cross-field checks assume each field is well-formed
        found = _cross_problems(cfg)
    return [InputError(where, f"{key}: {problem}") for key, problem in found]


def validate_config(cfg: Config) -> Config:
    """Return ``cfg`` if it is valid; raise :class:`InputErrors` listing every problem otherwise.

    Runs on every way a config is made (presets, files, overrides, a config read back from a run
    folder or checkpoint) and in :func:`advseg.training.api.prepare_training`, before anything is
    written, so a bad value fails in one line instead of deep inside torch.
    """
    _raise(config_problems(cfg))
    return cfg


def _raise(problems: list[InputError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InputErrors(problems)


def _finish(cfg: Config, problems: list[InputError], validate: bool, where: str | Path = "config") -> Config:
    _raise(problems + (config_problems(cfg, where) if validate else []))
    return cfg


def _check_version(data: dict[str, Any], where: str | Path) -> None:
    """Pop ``config_version``; refuse a file written by a newer advseg (absent: the current layout)."""
    version = data.pop("config_version", CONFIG_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(where, f"config_version must be a positive integer, got {version!r}")
    if version > CONFIG_VERSION:
        raise InputError(where, f"written by a newer advseg (config version {version}; this one reads "
                                f"up to {CONFIG_VERSION}): upgrade advseg to use it")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; one-line :class:`InputError` naming the file otherwise."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a config file must be a mapping of keys")
    return data


def _resolve(
    data: dict[str, Any], where: Path, problems: list[InputError], seen: tuple[str, ...] = ()
) -> Config:
    data = dict(data)
    _check_version(data, where)
    base = data.pop("base", None)
    if base is None:
        cfg = Config()
    else:
        if not isinstance(base, str):
            raise InputError(where, f"base: expected a preset name, got {base!r}")
        if base in seen:
            raise InputError(where, f"preset cycle through '{base}'")
        cfg = _resolve(load_yaml_mapping(_preset_path(base)), _preset_path(base), problems, (*seen, base))
    return _merge(cfg, data, str(where), problems)


def _preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not name or not path.exists():
        raise InputError(None, f"unknown preset '{name}' (known: {', '.join(preset_names())})")
    return path


def load_preset(name: str, validate: bool = True) -> Config:
    """The preset ``name`` from ``advseg/configs/`` (with its ``base`` chain resolved).

    ``"a+b"`` applies the keys of preset ``b`` on top of ``a``: a method preset plus a size preset,
    e.g. ``res_unet_aux_adv_semi+cpu``. The config's ``name`` is the first part. ``validate=False``
    leaves :func:`validate_config` to the caller (who applies overrides first).
    """
    first, *rest = name.split("+")
    path = _preset_path(first)
    problems: list[InputError] = []
    cfg = _resolve(load_yaml_mapping(path), path, problems, (first,))
    for extra in rest:
        extra_path = _preset_path(extra)
        data = load_yaml_mapping(extra_path)
        data.pop("base", None)
        cfg = _merge(cfg, data, str(extra_path), problems)
    return _finish(dataclasses.replace(cfg, name=first), problems, validate)


def load_config(path: str | Path, validate: bool = True) -> Config:
    """A user's YAML config file (it may name ``base: <preset>``), or a run folder's config.yaml."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "config file not found")
    if not path.is_file():
        raise InputError(path, "expected a YAML config file, got a folder")
    problems: list[InputError] = []
    cfg = _resolve(load_yaml_mapping(path), path, problems)
    return _finish(cfg, problems, validate, path)


def config_from_dict(data: dict[str, Any], where: str | Path = "config", validate: bool = True) -> Config:
    """Rebuild a saved config (``Config.to_dict()`` output, e.g. from a checkpoint named ``where``)."""
    if not isinstance(data, dict):
        raise InputError(where, f"config: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    _check_version(data, where)
    problems: list[InputError] = []
    cfg = _merge(Config(), data, str(where), problems)
    return _finish(cfg, problems, validate, where)


def apply_overrides(cfg: Config, overrides: list[str], validate: bool = True) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML), e.g. ``train.iterations=100``.

    Problems name the key once: ``--set: train.batch_size: expected an integer, got 'abc'``.
    """
    problems: list[InputError] = []
    for item in overrides:
        if "=" not in item:
            problems.append(InputError("--set", f"'{item}' is not of the form section.key=value"))
            continue
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            problems.append(InputError("--set", f"{key.strip()}: cannot parse the value {raw!r}"))
            continue
        nested: dict[str, Any] = {}
        node = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        cfg = _merge(cfg, nested, "--set", problems)
    return _finish(cfg, problems, validate)


def build_config(preset: str | None, config: str | Path | None, overrides: list[str],
                 base: str | Path | None = None) -> Config:
    """What ``advseg train`` trains with: a preset (default ``res_unet_aux+cpu``), a YAML file, or
    (``base``) a run folder's saved ``config.yaml``, then the ``--set`` overrides; validated once, at
    the end. A problem with a key the file set (not an override) names the file."""
    if preset and config:
        raise InputError(config, "give --preset or --config, not both")
    source = config or base
    if source:
        cfg = load_config(source, validate=False)
    else:
        cfg = load_preset(preset or "res_unet_aux+cpu", validate=False)
    cfg = apply_overrides(cfg, overrides, validate=False)
    overridden = {item.split("=", 1)[0].strip() for item in overrides}
    problems = []
    for exc in config_problems(cfg):
        key = exc.problem.split(":", 1)[0]
        where = source if source and key not in overridden else "config"
        problems.append(InputError(where, exc.problem))
    _raise(problems)
    return cfg
