"""Semi-supervised losses on unlabeled volumes: D's confidence selects which self-taught labels to trust.

* :func:`semi_supervised_loss` - the pelvic study (after Hung et al. 2018): masked self-training;
  :func:`masked_self_training_loss` the same for any confidence map, e.g. S's own max-softmax
  (:func:`softmax_confidence`, ``adversarial.mask_source: softmax``).
* :func:`region_attention_loss` - ASDNet (Nie et al. 2018): the same form with threshold gamma.
* :func:`fusion_pseudo_label` - Pan et al. 2022: the fusion D picks the better of two segmentations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advseg.ops import channel_argmax


def semi_supervised_loss(
    seg_logits: torch.Tensor, d_logits_fake: torch.Tensor, t_semi: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_semi on an unlabeled batch (pelvic study, eq. of Hung et al. 2018)::

        L_semi = - sum_v M_v sum_c Y^_{v,c} log S(x)_{v,c} / max(1, sum_v M_v)
        Y^ = onehot(argmax_c S(x)),   M_v = [sigmoid(D(x * S(x)))_v > T_semi]

    ``seg_logits``: S's logits ``(B, C, *spatial)``; ``d_logits_fake``: D's logits ``(B, 1, *spatial)`` on
    S's output of the same batch. The cross-entropy is averaged over the voxels that pass the mask (all
    samples pooled). The target ``Y^`` and the mask ``M`` are computed from DETACHED tensors, so L_semi
    sends gradient only into ``seg_logits`` and only at voxels with ``M_v = 1``; none into D.
    If no voxel passes, the loss is an exact 0 that is still attached to the graph (``backward`` works and
    gives zero gradients). Returns ``(loss, mask_fraction)``: the scalar loss and the detached fraction of
    voxels passing ``T_semi`` (a 0-dim tensor, for logging; ``float()`` it).
    """
    _check_confidence_shape(seg_logits, d_logits_fake)
    with torch.no_grad():
        confidence = torch.sigmoid(d_logits_fake.detach().float())
    return masked_self_training_loss(seg_logits, confidence, t_semi)


def softmax_confidence(seg_logits: torch.Tensor) -> torch.Tensor:
    """S's own confidence: the max-softmax probability per voxel, ``(B, 1, *spatial)`` in [1/C, 1],
    detached (``adversarial.mask_source: softmax``)."""
    with torch.no_grad():
        return torch.softmax(seg_logits.detach().float(), dim=1).amax(dim=1, keepdim=True)


def masked_self_training_loss(
    seg_logits: torch.Tensor, confidence: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-training on the confident voxels: ``CE(S(x), argmax S(x))`` averaged over the voxels with
    ``confidence > threshold``, the form of :func:`semi_supervised_loss` for any confidence map
    ``(B, 1, *spatial)`` in [0, 1] (D's ``sigmoid(D(.))`` or :func:`softmax_confidence`). Same gradients
    and return value ``(loss, fraction of voxels passing)``.
    """
    _check_confidence_shape(seg_logits, confidence)
    with torch.no_grad():
        mask = confidence.detach()[:, 0] > threshold
        target = channel_argmax(seg_logits.detach())
    ce = F.cross_entropy(seg_logits, target, reduction="none")  # (B, *spatial)
    # where() instead of multiplying: a masked-out voxel then passes exactly zero gradient.
    loss = torch.where(mask, ce, torch.zeros_like(ce)).sum() / mask.sum().clamp_min(1)
    return loss, mask.float().mean()


def _check_confidence_shape(seg_logits: torch.Tensor, conf: torch.Tensor) -> None:
    if conf.ndim != seg_logits.ndim or conf.shape[1] != 1 or (
        conf.shape[0] != seg_logits.shape[0] or conf.shape[2:] != seg_logits.shape[2:]
    ):
        raise ValueError(
            f"D's confidence map {tuple(conf.shape)} must be (B, 1, *spatial) of the segmentation "
            f"{tuple(seg_logits.shape)}"
        )


def region_attention_loss(
    seg_logits: torch.Tensor, d_logits_fake: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ASDNet's region-attention semi-supervised loss (Nie et al. 2018)::

        L_semi = - sum_v [F(S(x))_v > gamma] sum_c Y^_{v,c} log S(x)_{v,c} / max(1, #confident voxels)

    with ``F`` the confidence network (sigmoid of D's logits on the probability map) and ``Y^`` the one-hot
    argmax of S's prediction: only the confident regions of an unlabeled prediction serve as targets.
    Same form, gradients and return value as :func:`semi_supervised_loss` (threshold ``gamma``); the caller
    weights it with lambda2 = 0.3.
    """
    return semi_supervised_loss(seg_logits, d_logits_fake, gamma)


def fusion_pseudo_label(
    seg_a_logits: torch.Tensor, seg_b_logits: torch.Tensor, d_logit_a_better: torch.Tensor
) -> torch.Tensor:
    """Pan et al. 2022: per sample, the argmax of the segmentation the fusion D prefers.

    ``seg_a_logits`` / ``seg_b_logits``: ``(B, C, *spatial)`` (e.g. S on x and on a Gaussian-noised copy);
    ``d_logit_a_better``: ``(B, 1)`` (or ``(B,)``) logits of "a is better than b". Sample i takes
    ``argmax_c a_i`` where ``sigmoid(logit_i) >= 0.5`` (ties go to a), else ``argmax_c b_i``. Returns a
    ``(B, *spatial)`` int64 label map without gradient.
    """
    if seg_a_logits.shape != seg_b_logits.shape:
        raise ValueError(
            f"segmentations differ in shape: {tuple(seg_a_logits.shape)} vs {tuple(seg_b_logits.shape)}"
        )
    choose_a = d_logit_a_better.detach().reshape(-1) >= 0
    if choose_a.numel() != seg_a_logits.shape[0]:
        raise ValueError(f"need one preference logit per sample, got {tuple(d_logit_a_better.shape)}")
    with torch.no_grad():
        label_a, label_b = channel_argmax(seg_a_logits), channel_argmax(seg_b_logits)
        choose = choose_a.view(-1, *([1] * (label_a.ndim - 1)))
        return torch.where(choose, label_a, label_b)


def gaussian_noise_copy(
    image: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pan et al. 2022: the second view of an unlabeled image, ``x + std * n`` with ``n ~ N(0, 1)`` per voxel
    (``std`` in the normalised intensity units of ``image``)."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    return image + std * noise
