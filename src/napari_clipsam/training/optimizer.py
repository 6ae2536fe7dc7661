"""The training engine's optimiser and learning-rate schedule."""

from __future__ import annotations

import math

import torch

from ..model.clipsam import ClipSamModel
from .config import TrainingConfig


def learning_rate_factor(step: int, total: int, warmup_fraction: float) -> float:
    warmup = max(1, int(round(total * warmup_fraction)))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: ClipSamModel, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only, CLIP's attention in its own low-lr group.

    Training from scratch (``train_base``) puts every weight in one group; a mask refiner has a
    group of its own when ``config.refiner_learning_rate`` is set.
    """
    clip_parameters, refiner, other = [], [], []
    for name, parameter in model.trainable_parameters():
        if name.startswith("clip.") and not config.train_base:
            clip_parameters.append(parameter)
        else:
            (refiner if ".refiner." in name and config.refiner_learning_rate is not None else other).append(parameter)
    groups = [{"params": other, "lr": config.learning_rate, "weight_decay": config.weight_decay}]
    if clip_parameters:
        groups.append({"params": clip_parameters, "lr": config.clip_learning_rate, "weight_decay": 0.0})
    if refiner:
        groups.append({"params": refiner, "lr": config.refiner_learning_rate, "weight_decay": config.weight_decay})
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.AdamW(groups)
