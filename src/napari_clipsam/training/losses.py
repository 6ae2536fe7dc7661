"""The training loss on SAM's low-resolution mask logits."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def target_in_frame(mask: np.ndarray, input_size: tuple[int, int], frame: int, size: tuple[int, int], device) -> torch.Tensor:
    """The ground truth in SAM's padded ``frame x frame`` input, averaged down to ``size``.

    ``size``: the low-resolution logits' (SAM's loss), or ``(frame, frame)`` for the loss on
    the logits upsampled as inference upsamples them (``TrainingConfig.full_resolution_loss``);
    a pixel (block) is foreground where more than half of it is.
    """
    tensor = torch.as_tensor(mask, dtype=torch.float32, device=device)[None, None]
    tensor = F.interpolate(tensor, size=input_size, mode="bilinear", align_corners=False)
    tensor = F.pad(tensor, (0, frame - input_size[1], 0, frame - input_size[0]))
    return (F.interpolate(tensor, size=size, mode="area") > 0.5).float()


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - Dice of sigmoid(logits) and the target, per sample; +1 smoothed."""
    probability = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = (2 * (probability * target).sum(dims) + 1) / (probability.sum(dims) + target.sum(dims) + 1)
    return (1 - dice).mean()


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``1 - sum(p*g) / sum(p + g - p*g)`` with ``p = sigmoid(logits)``, per sample.

    The paper's "IoU" term (BCE + Dice + IoU, its Table 9). Soft IoU is a function of
    soft Dice D, ``D / (2 - D)``, whose slope grows from 1/2 to 2 as the overlap
    improves: it presses harder than Dice on the last errors of a nearly right mask.
    """
    probability = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    intersection = (probability * target).sum(dims)
    union = (probability + target - probability * target).sum(dims)
    # sigmoid is never 0, so the union is positive unless every logit underflows.
    return (1 - intersection / union.clamp_min(1e-6)).mean()


def iou_prediction_loss(logits: torch.Tensor, predicted_iou: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error of SAM's IoU-prediction head against the IoU of the thresholded mask.

    SAM ranks and reports masks by this head; training it keeps those scores honest.
    Its gradient reaches the head only, never the mask logits.
    """
    dims = tuple(range(1, logits.ndim))
    with torch.no_grad():
        hard = (logits > 0).float()
        union = ((hard + target) > 0).float().sum(dims)
        true_iou = torch.where(union > 0, (hard * target).sum(dims) / union.clamp_min(1), torch.ones_like(union))
    return F.mse_loss(predicted_iou.reshape(-1).float(), true_iou.reshape(-1))


def pixel_weights(weighted: Sequence[tuple[np.ndarray | None, float]], input_size: tuple[int, int],
                  frame: int, size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, *size) cross-entropy weights in SAM's frame: 1, and ``weight`` on a (H, W) mask's pixels.

    Masks that are None or weigh 1 change nothing; where masks meet, the later one's weight
    holds. The masks are placed as the target is (:func:`target_in_frame`).
    """
    weights = torch.ones((1, 1, *size))
    for mask, weight in weighted:
        if mask is not None and weight != 1:
            inside = target_in_frame(mask, input_size, frame, size, "cpu") > 0
            weights = torch.where(inside, float(weight), weights)
    return weights


def _bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over the batch of each sample's (weighted) mean binary cross-entropy of its pixels."""
    if weight is None:
        return F.binary_cross_entropy_with_logits(logits, target)  # all samples one size: the same mean
    dims = tuple(range(1, logits.ndim))
    weighted = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    return (weighted.sum(dims) / weight.sum(dims).clamp_min(1e-6)).mean()


def segmentation_loss(logits: torch.Tensor, predicted_iou: torch.Tensor, target: torch.Tensor,
                      bce_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """BCE + Dice + soft IoU on the mask logits (the paper's loss), plus the IoU head's regression.

    Args:
        logits: (B, 1, h, w) SAM's low-resolution mask logits.
        predicted_iou: (B, 1) SAM's IoU prediction.
        target: (B, 1, h, w) 0/1 ground truth (see :func:`target_in_frame`).
        bce_weight: (B, 1, h, w) per-pixel weights of the BCE term (None: all 1); each
            sample's BCE is then the weighted mean of its pixels (the scale of the unweighted
            loss), and the batch's the mean of the samples', as for the other terms.

    Returns:
        ``"loss"``, the sum of the terms, to minimise; and each term, detached:
        ``"bce"``, ``"dice"``, ``"soft_iou"``, ``"iou_prediction"``.
    """
    terms = {
        "bce": _bce(logits, target, bce_weight),
        "dice": dice_loss(logits, target),
        "soft_iou": soft_iou_loss(logits, target),
        "iou_prediction": iou_prediction_loss(logits, predicted_iou, target),
    }
    total = torch.stack(list(terms.values())).sum()
    return {"loss": total, **{name: term.detach() for name, term in terms.items()}}


def similarity_loss(similarity: torch.Tensor, masks: Sequence[np.ndarray]) -> torch.Tensor:
    """Per sample (B,), the squared error of (B, g, g) similarity maps against each concept's share of each patch.

    Supervises CLIP (both towers) when a model is trained from scratch: the text-only mode
    draws its points and mask prompt from this map, so it must point at the concept. An
    empty mask (the concept is absent) gives 0: its map has nothing to point at. The B
    (H_i, W_i) bool ``masks`` become targets on the CPU, sent to the maps' device at once.
    """
    size = tuple(similarity.shape[-2:])
    targets = torch.cat([F.interpolate(torch.as_tensor(mask, dtype=torch.float32)[None, None], size=size, mode="area")
                         for mask in masks])[:, 0].to(similarity.device, non_blocking=True)
    present = torch.tensor([bool(mask.any()) for mask in masks]).to(similarity.device, non_blocking=True)
    return torch.where(present, (similarity.float() - targets).square().mean(dim=(1, 2)), 0.0)
