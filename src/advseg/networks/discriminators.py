"""Discriminators D and the construction of their inputs.

Every network takes ``(spatial_dims, in_channels, ...)`` and returns LOGITS; ``sigmoid`` of the output is
D's confidence that its input is real (ground truth) rather than fake (a segmentation by S). Train them
with ``BCE-with-logits`` (:mod:`advseg.losses.adversarial`): numerically stable where ``sigmoid`` saturates.

* :class:`FCDiscriminator` - the pelvic study's fully convolutional D-net: a per-voxel confidence map.
* :class:`ImageLevelDiscriminator` - Kohl et al. 2017: one logit per sample.
* :class:`DCGANDiscriminator` - Tan et al. 2022: DCGAN-style, six 4x4 stride-2 convs, confidence map.
* :class:`FusionDiscriminator` - Pan et al. (FLARE 2022): which of two segmentations of an image is better.

Input construction (tensors are ``(B, C, *spatial)``):

* :func:`discriminator_input` - the pelvic study's ``x * y``: the image times the label map, per class.
* :func:`concat_input` - ``cat(x, y)`` along channels (Kohl et al.; Tan et al. optionally).
* :func:`onehot_straight_through` - one-hot(argmax S(x)) with the soft probabilities' gradient.
* :func:`onehot` - integer labels to one-hot (the "real" label map).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from advseg.ops import channel_argmax, onehot_channels

if TYPE_CHECKING:
    from advseg.config import AdversarialConfig

_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_INSTANCE = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BATCH = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_NORMS = (None, "instance", "batch")
D_INPUTS = ("product", "concat", "label")


# ---------------------------------------------------------------------------------------------- inputs
def onehot(target: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer label map ``(B, *spatial)``, values in ``[0, num_classes)`` -> one-hot ``(B, C, *spatial)``."""
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"onehot expects an integer label map, got dtype {target.dtype}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"label values must lie in [0, {num_classes}), found [{int(target.min())}, {int(target.max())}]"
        )
    return onehot_channels(target, num_classes, dtype)


def onehot_straight_through(probs: torch.Tensor) -> torch.Tensor:
    """One-hot of ``argmax`` over channels in the forward pass, the soft probabilities' gradient backward.

    ``probs``: ``(B, C, *spatial)`` class probabilities (softmax of S's logits). Returns ``(B, C, *spatial)``
    equal to ``onehot(argmax_c probs)`` exactly in value, computed as ``hard + (probs - probs.detach())``:
    the bracket is exactly 0 in the forward pass and has Jacobian identity in the backward pass, so
    ``dL/dprobs = dL/d(output)`` (straight-through estimator, Bengio et al. 2013). The gradient is that of
    the soft path evaluated at the one-hot point: biased, but it lets the pelvic study feed D a one-hot
    prediction, which D cannot tell from one-hot ground truth by its softness alone, while S still learns.
    """
    if probs.ndim < 2:
        raise ValueError(f"expected (B, C, ...) probabilities, got shape {tuple(probs.shape)}")
    hard = onehot_channels(channel_argmax(probs), probs.shape[1], probs.dtype)
    return hard + (probs - probs.detach())


def _check_pair(image: torch.Tensor, labels: torch.Tensor) -> None:
    if image.ndim != labels.ndim or image.shape[0] != labels.shape[0] or image.shape[2:] != labels.shape[2:]:
        raise ValueError(
            f"image {tuple(image.shape)} and label map {tuple(labels.shape)} "
            "must share batch and spatial size"
        )


def discriminator_input(image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The pelvic study's D input: the voxel-wise product of the image and the label map, per class.

    ``image``: ``(B, Ci, *spatial)``; ``labels``: ``(B, C, *spatial)`` - one-hot ground truth ``y`` (real),
    or S's output (fake): soft probabilities ``S(x)`` or :func:`onehot_straight_through` of them.
    Returns ``(B, C * Ci, *spatial)`` with channel ``c * Ci + i = labels[:, c] * image[:, i]``.

    How the gradient reaches S: ``d(out_{c,i})/d(labels_c) = image_i``, so S receives D's input gradient
    multiplied by the image intensity. With soft input that is the exact gradient through softmax; with the
    straight-through one-hot it is the same expression evaluated at the one-hot point. Voxels where the
    (normalised) image is 0 pass no gradient to S; ``image`` itself is data and gets none that matters.
    """
    _check_pair(image, labels)
    return (labels.unsqueeze(2) * image.unsqueeze(1)).flatten(1, 2)


def concat_input(image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``cat(image, labels)`` along channels: ``(B, Ci + C, *spatial)`` (Kohl et al.; Pan et al.).

    The gradient reaches S unchanged through the label channels (identity Jacobian).
    """
    _check_pair(image, labels)
    return torch.cat([image, labels.to(image.dtype)], dim=1)


def build_discriminator_input(kind: str, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """D's input by name: ``product`` (:func:`discriminator_input`), ``concat`` (:func:`concat_input`) or
    ``label`` (the label map alone, e.g. ASDNet / Tan et al. on probability maps)."""
    if kind == "product":
        return discriminator_input(image, labels)
    if kind == "concat":
        return concat_input(image, labels)
    if kind == "label":
        return labels
    raise ValueError(f"unknown discriminator input '{kind}' (known: {', '.join(D_INPUTS)})")


def discriminator_in_channels(kind: str, image_channels: int, num_classes: int) -> int:
    """Channels of :func:`build_discriminator_input` ``(kind, ...)``."""
    sizes = {
        "product": image_channels * num_classes,
        "concat": image_channels + num_classes,
        "label": num_classes,
    }
    if kind not in sizes:
        raise ValueError(f"unknown discriminator input '{kind}' (known: {', '.join(D_INPUTS)})")
    return sizes[kind]


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze (``False``) or unfreeze D around S's step, so L_adv does not leave gradients in D."""
    for p in module.parameters():
        p.requires_grad_(flag)


# ---------------------------------------------------------------------------------------------- blocks
class _SafeInstanceNorm(nn.Module):
    """Instance norm that passes inputs with a single spatial element through unchanged.

    Four stride-2 stages take a 16-slice slab to 1 slice, and small patches to one voxel; instance norm of
    one value is undefined (PyTorch raises in training), and would output 0 anyway.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.norm = _INSTANCE[spatial_dims](channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x[0, 0].numel() == 1 else self.norm(x)


def _norm(spatial_dims: int, norm: str | None, channels: int) -> nn.Module:
    if norm is None:
        return nn.Identity()
    if norm == "instance":
        return _SafeInstanceNorm(spatial_dims, channels)
    if norm == "batch":
        return _BATCH[spatial_dims](channels)
    raise ValueError(f"unknown norm '{norm}' (known: None, 'instance', 'batch')")


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")


def _check_input(x: torch.Tensor, spatial_dims: int, in_channels: int, name: str) -> None:
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects (B, {in_channels}, {spatial_dims} spatial dims), got {tuple(x.shape)}"
        )


class _ResidualDown(nn.Module):
    """conv3 (stride 2) - norm - act - conv3 - norm, plus a 1x1 stride-2 projection skip, then act.

    Kernel 3, stride 2, padding 1 gives ``ceil(n / 2)`` voxels: every size stays >= 1.
    """

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm: str | None, slope: float) -> None:
        super().__init__()
        conv = _CONV[spatial_dims]
        bias = norm is None
        self.conv1 = conv(cin, cout, 3, stride=2, padding=1, bias=bias)
        self.norm1 = _norm(spatial_dims, norm, cout)
        self.conv2 = conv(cout, cout, 3, stride=1, padding=1, bias=bias)
        self.norm2 = _norm(spatial_dims, norm, cout)
        self.skip = conv(cin, cout, 1, stride=2, bias=bias)
        self.norm_skip = _norm(spatial_dims, norm, cout)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.norm_skip(self.skip(x)))


def _upsample_to(x: torch.Tensor, size: Sequence[int], spatial_dims: int) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode=_INTERP[spatial_dims], align_corners=False)


# ---------------------------------------------------------------------------------------------- networks
class FCDiscriminator(nn.Module):
    """The pelvic study's D-net: fully convolutional, a per-voxel confidence map.

    One residual block with stride-2 down-sampling per entry of ``channels`` (four by default), a 3x3(x3)
    1-channel classification layer, and (tri)linear up-sampling back to the input's spatial size.
    Input ``(B, in_channels, *spatial)`` - :func:`discriminator_input` (``x * y``), so
    ``in_channels = num_classes * image_channels``; any size >= 1 (padding keeps ``ceil(n/2)`` per stage,
    e.g. a 16x128x128 slab becomes 1x8x8). Output ``(B, 1, *spatial)`` LOGITS; ``sigmoid`` is the
    confidence that a voxel's label is ground truth.

    ``decoder=True`` replaces the up-sampling of the coarsest logits by a U-Net-like decoder: per
    stage, up-sample to the finer level, concatenate its features (the input itself at full
    resolution) and a 3x3(x3) conv + LeakyReLU, then the classifier at full resolution. Same
    receptive field, but the map can place an error at a single voxel.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        norm: str | None = None,
        negative_slope: float = 0.2,
        decoder: bool = False,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if not channels:
            raise ValueError("FCDiscriminator needs at least one stage in channels")
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        widths = [in_channels, *channels]
        self.stages = nn.Sequential(
            *[
                _ResidualDown(spatial_dims, a, b, norm, negative_slope)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.decoder = None
        head = widths[-1]
        if decoder:
            conv = _CONV[spatial_dims]
            outs = [widths[1], *widths[1:-1]]  # decoder width at each finer level (>= the first stage's)
            ups, cin = [], widths[-1]
            for level in reversed(range(len(channels))):  # finer level receiving the up-sampled features
                ups.append(nn.Sequential(conv(cin + widths[level], outs[level], 3, padding=1),
                                         nn.LeakyReLU(negative_slope)))
                cin = outs[level]
            self.decoder = nn.ModuleList(ups)
            head = cin
        self.classifier = _CONV[spatial_dims](head, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        if self.decoder is None:
            return _upsample_to(self.classifier(self.stages(x)), x.shape[2:], self.spatial_dims)
        feats = [x]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        h = feats[-1]
        for up, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            h = up(torch.cat([_upsample_to(h, skip.shape[2:], self.spatial_dims), skip], dim=1))
        return self.classifier(h)


class DownsampledInput(nn.Module):
    """Any per-voxel D applied to its input average-pooled by ``factor`` in every spatial dimension,
    its logits up-sampled (trilinear) back to the input's size: ``factor^3`` fewer voxels through D
    (``adversarial.d_downsample``), the cheap D of issue 10's overhead lever. ``(B, C, *spatial)`` ->
    ``(B, 1, *spatial)`` logits."""

    def __init__(self, net: nn.Module, spatial_dims: int, factor: int) -> None:
        super().__init__()
        self.net, self.spatial_dims, self.factor = net, spatial_dims, int(factor)
        self.pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial_dims]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = self.pool(x, self.factor, self.factor, ceil_mode=True)
        return _upsample_to(self.net(small), x.shape[2:], self.spatial_dims)


def spectral_normalized(module: nn.Module) -> nn.Module:
    """``module`` with spectral normalisation (Miyato et al. 2018) on every convolution and linear layer:
    each weight is divided by its largest singular value (one power iteration per forward pass), which
    bounds D's Lipschitz constant and steadies its training."""
    from torch.nn.utils.parametrizations import spectral_norm

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            setattr(module, name, spectral_norm(child))
        else:
            spectral_normalized(child)
    return module


class ImageLevelDiscriminator(nn.Module):
    """Kohl et al. 2017: conv encoder, global average pooling, dense layer -> one logit per sample.

    Each entry of ``channels`` is a stride-2 3x3(x3) conv + InstanceNorm + LeakyReLU(0.2) stage (instance norm
    is skipped where a stage has one voxel). Input ``(B, in_channels, *spatial)``: :func:`concat_input`
    of image and label channels (``in_channels = image_channels + num_classes``). Output ``(B, 1)`` logits.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        norm: str | None = "instance",
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if not channels:
            raise ValueError("ImageLevelDiscriminator needs at least one stage in channels")
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        conv = _CONV[spatial_dims]
        layers: list[nn.Module] = []
        for a, b in zip([in_channels, *channels[:-1]], channels, strict=True):
            layers += [
                conv(a, b, 3, stride=2, padding=1),
                _norm(spatial_dims, norm, b),
                nn.LeakyReLU(negative_slope),
            ]
        self.encoder = nn.Sequential(*layers)
        self.dense = nn.Linear(channels[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        features = self.encoder(x).flatten(2).mean(dim=2)  # global average pooling: (B, channels[-1])
        return self.dense(features)


def _pad_for_stride2(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Zero-pad every spatial dim so a stride-2 conv of size ``kernel`` outputs ``ceil(n / 2)``.

    Total padding ``2 * (ceil(n/2) - 1) + kernel - n``: the usual symmetric 1 for kernel 4 and even n, one
    more at the end for odd n; a 1-voxel dim stays 1 voxel instead of vanishing (``floor(n/2)`` with
    padding 1).
    """
    pads: list[int] = []
    for n in reversed(x.shape[2:]):  # F.pad lists the last dim first
        total = 2 * ((n + 1) // 2 - 1) + kernel - n
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class DCGANDiscriminator(nn.Module):
    """Tan et al. 2022 (2D, after DCGAN / Hung et al. 2018): 4x4 stride-2 convs with LeakyReLU(0.2), no batch
    norm or pooling, a 1-channel last conv, output up-sampled to the input size: a confidence map.

    ``channels`` are the hidden widths; with the default five there are six stride-2 convs in all.
    Input ``(B, in_channels, *spatial)``: probability maps (``in_channels = num_classes``), optionally
    :func:`concat_input` with the image. ``spatial_dims`` is 2 primarily; 3 works the same way.
    Output ``(B, 1, *spatial)`` logits. Padding keeps ``ceil(n/2)`` per conv, so any size >= 1 works.
    """

    kernel = 4

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        conv = _CONV[spatial_dims]
        widths = [in_channels, *channels, 1]
        self.convs = nn.ModuleList(
            [conv(a, b, self.kernel, stride=2) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        y = x
        for i, conv in enumerate(self.convs):
            y = conv(_pad_for_stride2(y, self.kernel))
            if i < len(self.convs) - 1:
                y = self.act(y)
        return _upsample_to(y, x.shape[2:], self.spatial_dims)


class FusionDiscriminator(nn.Module):
    """Pan et al. (FLARE 2022) image-label fusion discriminator: which of two segmentations is better.

    A shared :class:`ImageLevelDiscriminator` scores each image-label fusion,
    ``s(x, y) = E(cat(x, y))`` (one scalar per sample), and the output is the difference
    ``D(x, a, b) = s(x, a) - s(x, b)``: the logit that ``a`` is better than ``b`` (Bradley-Terry model).
    The difference makes D antisymmetric, ``D(x, b, a) = -D(x, a, b)``, so ``sigmoid`` of the two orders sums
    to 1 and the order in which the pair is presented cannot bias the answer.

    ``in_channels = image_channels + num_classes``; ``image`` ``(B, Ci, *spatial)``, ``seg_a`` / ``seg_b``
    ``(B, C, *spatial)`` (probabilities or one-hot). Output ``(B, 1)`` logits.
    Train D with target 1 on ``(x, ground truth, S(x))`` (the ground truth possibly mask-poisoned).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        norm: str | None = "instance",
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.scorer = ImageLevelDiscriminator(spatial_dims, in_channels, channels, norm, negative_slope)

    def score(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Quality score ``s(x, y)`` of one segmentation: ``(B, 1)``."""
        return self.scorer(concat_input(image, seg))

    def forward(self, image: torch.Tensor, seg_a: torch.Tensor, seg_b: torch.Tensor) -> torch.Tensor:
        if seg_a.shape != seg_b.shape:
            raise ValueError(f"segmentations differ in shape: {tuple(seg_a.shape)} vs {tuple(seg_b.shape)}")
        # One pass over both fusions: instance norm is per sample, so batching them changes nothing.
        scores = self.scorer(concat_input(torch.cat([image, image]), torch.cat([seg_a, seg_b])))
        score_a, score_b = scores.chunk(2)
        return score_a - score_b


# ---------------------------------------------------------------------------------------------- factory
DEFAULT_INPUT = {"fcn": "product", "image": "concat", "dcgan2d": "label", "fusion": "concat"}


def resolve_d_input(cfg: AdversarialConfig) -> str:
    """``cfg.d_input``, with ``auto`` meaning each discriminator's paper: fcn -> product (x * y),
    image -> concat, dcgan2d -> label (probability maps), fusion -> concat."""
    if cfg.discriminator not in DEFAULT_INPUT:
        raise ValueError(
            f"unknown discriminator '{cfg.discriminator}' (known: {', '.join(DEFAULT_INPUT)})"
        )
    kind = DEFAULT_INPUT[cfg.discriminator] if cfg.d_input == "auto" else cfg.d_input
    if cfg.discriminator == "fusion" and kind != "concat":
        raise ValueError("the fusion discriminator fuses image and label by concatenation (d_input: concat)")
    return kind


def resolve_d_norm(cfg: AdversarialConfig) -> str | None:
    """``cfg.d_norm`` as a norm name or None; ``auto`` is none for fcn (the study) and instance for the
    image-level and fusion discriminators (Kohl et al.); dcgan2d never normalises."""
    if cfg.d_norm == "auto":
        return None if cfg.discriminator in ("fcn", "dcgan2d") else "instance"
    if cfg.d_norm == "none":
        return None
    if cfg.d_norm not in ("instance", "batch"):
        raise ValueError(f"unknown d_norm '{cfg.d_norm}' (known: auto, none, instance, batch)")
    return cfg.d_norm


def make_discriminator(
    cfg: AdversarialConfig, spatial_dims: int, image_channels: int, num_classes: int
) -> nn.Module:
    """The discriminator named by ``cfg.discriminator`` (fcn | image | dcgan2d | fusion), with
    ``cfg.d_channels`` widths and :func:`resolve_d_norm`, sized for :func:`build_discriminator_input`
    ``(resolve_d_input(cfg), ...)`` (fusion builds its own input from ``(image, seg_a, seg_b)``)."""
    kind = resolve_d_input(cfg)
    norm = resolve_d_norm(cfg)
    cin = discriminator_in_channels(kind, image_channels, num_classes)
    channels = tuple(cfg.d_channels)
    net: nn.Module
    if cfg.discriminator == "fcn":
        net = FCDiscriminator(spatial_dims, cin, channels, norm=norm, decoder=cfg.d_decoder)
    elif cfg.discriminator == "image":
        net = ImageLevelDiscriminator(spatial_dims, cin, channels, norm=norm)
    elif cfg.discriminator == "dcgan2d":
        if norm is not None:
            raise ValueError("the DCGAN discriminator has no normalisation (d_norm: auto or none)")
        net = DCGANDiscriminator(spatial_dims, cin, channels)
    else:
        net = FusionDiscriminator(spatial_dims, cin, channels, norm=norm)
    if cfg.d_decoder and cfg.discriminator != "fcn":
        raise ValueError(f"d_decoder is an option of the fcn discriminator, not of '{cfg.discriminator}'")
    if cfg.d_spectral_norm:
        net = spectral_normalized(net)
    if cfg.d_downsample > 1:
        if cfg.discriminator not in ("fcn", "dcgan2d"):
            raise ValueError(f"d_downsample is an option of the per-voxel discriminators, not of "
                             f"'{cfg.discriminator}'")
        net = DownsampledInput(net, spatial_dims, cfg.d_downsample)
    return net
