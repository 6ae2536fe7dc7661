"""The training loss on SAM's low-resolution mask logits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def low_res_target(mask: np.ndarray, input_size: tuple[int, int], frame: int, size: tuple[int, int], device) -> torch.Tensor:
    """The ground truth in SAM's padded input frame at the low-resolution logits' size."""
    tensor = torch.as_tensor(mask, dtype=torch.float32, device=device)[None, None]
    tensor = F.interpolate(tensor, size=input_size, mode="bilinear", align_corners=False)
    tensor = F.pad(tensor, (0, frame - input_size[1], 0, frame - input_size[0]))
    return (F.interpolate(tensor, size=size, mode="area") > 0.5).float()


def segmentation_loss(logits: torch.Tensor, predicted_iou: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """BCE + Dice on the mask logits, plus MSE of SAM's IoU prediction against the true IoU."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (probability * target).sum(dims) + 1) / (probability.sum(dims) + target.sum(dims) + 1)
    with torch.no_grad():
        hard = (logits > 0).float()
        union = ((hard + target) > 0).float().sum(dims)
        true_iou = torch.where(union > 0, (hard * target).sum(dims) / union.clamp_min(1), torch.ones_like(union))
    iou = F.mse_loss(predicted_iou.reshape(-1).float(), true_iou.reshape(-1))
    total = bce + dice.mean() + iou
    return {"loss": total, "bce": bce.detach(), "dice": dice.mean().detach(), "iou": iou.detach()}
