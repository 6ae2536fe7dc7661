"""How to train: :class:`TrainingConfig` and the inference modes training can target.

No torch here: the napari panel builds its configuration on the GUI thread, and the
model code is imported only by the job, in a worker thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..weights.adapters_file import TRAINING_IMAGE_SIZE_MULTIPLE, TRAINING_IMAGE_SIZE_RANGE

# "both": each training sample is drawn in one of the two modes at random, so one model
# serves text-only segmentation and clicks (the demo model is trained so).
MODES = ("text", "manual", "both")


@dataclass(frozen=True)
class TrainingConfig:
    """How to train. Defaults follow the paper (AdamW, lr 5e-5, weight decay 1e-3).

    Attributes:
        mode: the inference mode the model will be used in, ``"text"``, ``"manual"`` or
            ``"both"``; training prompts are produced exactly as that mode produces them
            (text: CLIP's points, target all objects of the concept; manual: clicks and
            boxes drawn from one object, target that object).
        steps: optimiser steps at most.
        batch_size: samples per step.
        learning_rate: for adapters, prompt encoder and mask decoder.
        clip_learning_rate: for CLIP's vision attention when the model trains it.
        weight_decay: for adapters, prompt encoder and mask decoder (none on CLIP).
        warmup_fraction: linear warm-up over this part of the steps, then cosine decay.
        eval_every: validate every this many steps (and at the end).
        patience: stop after this many validations without improvement (0: never).
        augment: flips, rotations, crops, intensity jitter, blur.
        gradient_checkpointing: recompute encoder blocks in backward to save memory.
        image_size: SAM input side for training and validation (None: the model's own,
            1024); a multiple of 16 from 64 to 4096, the sizes an adapters file may record.
            512 makes a CPU step several times cheaper. The size is recorded in the
            adapters file and in ``model.preferred_image_size``, so predictors made
            afterwards segment at it.
        seed: for sampling, augmentation and prompts.
        train_base: train every weight (SAM's backbone, both CLIP towers) as well, with
            ``learning_rate``, and supervise the similarity map with the mask: training
            a model from scratch, as the demo model is (``napari_clipsam.synthetic``).
            Adapting pretrained weights leaves this off (the paper's setting).
        similarity_weight: with ``train_base``, the weight of the similarity map's loss
            beside the mask's (1: the two summed as they are).
        lone_click_share: in the manual mode, the share of prompts that are one positive
            click alone (no box, no negative click); the rest are drawn from the usual mix
            of 1-3 clicks, 0-2 negatives and a box half the time (which has lone clicks
            too, 1 in 12). Validation keeps the usual mix.
        box_only_share: in the manual mode, the share of prompts (of those not lone clicks)
            that are the object's box alone, with no click, as a user draws a box; the
            usual mix always has a click. Validation keeps the usual mix.
        neighbour_negative_share: in the manual mode, the share of the usual mix's prompts
            (not the lone clicks) whose negative clicks (one or two) lie on the objects
            touching the target, as a user clicks a neighbour that the mask spread onto;
            the rest lie anywhere outside it. Needs instance labels (touching objects of a
            semantic mask are one object).
        neighbour_weight: in the manual mode, the cross-entropy weight of the pixels of the
            concept's other objects (a click's mask spreading onto touching neighbours is
            its commonest error); 1: every pixel alike.
        other_concept_weight: in both modes, the cross-entropy weight of the pixels the
            labels give to another concept (``Sample.others``: a mask for "cell membrane"
            painted over spots is a confusion of concepts); 1: every pixel alike. Only
            images labelled with several concepts have such pixels.
        full_resolution_loss: compute the mask loss on the logits upsampled to SAM's input
            frame, as inference upsamples them before its threshold, against the ground
            truth at that resolution (the default). Off: on SAM's 4x smaller logits (2x for
            the demo model) against the truth averaged down (a block is foreground only
            where more than half of it is), which teaches masks about a pixel too small and
            loses thin lines and small spots; the demo model's stages 1-10 trained so. A
            model with a mask refiner (``ClipSamConfig.mask_refiner``) always trains so.
        refiner_learning_rate: for the mask refiner, if the model has one; None: the
            ``learning_rate``. A refiner added to a trained model starts as the identity
            and may need a higher rate than the weights around it.
    """

    mode: str = "text"
    steps: int = 200
    batch_size: int = 1
    learning_rate: float = 5e-5
    clip_learning_rate: float = 1e-7
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.1
    eval_every: int = 25
    patience: int = 4
    augment: bool = True
    gradient_checkpointing: bool = True
    image_size: int | None = None
    seed: int = 0
    train_base: bool = False
    similarity_weight: float = 1.0
    lone_click_share: float = 0.0
    box_only_share: float = 0.0
    neighbour_negative_share: float = 0.0
    neighbour_weight: float = 1.0
    other_concept_weight: float = 1.0
    full_resolution_loss: bool = True
    refiner_learning_rate: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; use one of {MODES}.")
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.patience < 0:
            raise ValueError(f"patience must be 0 (never stop early) or more, got {self.patience}.")
        for name in ("learning_rate", "clip_learning_rate", "weight_decay", "similarity_weight", "neighbour_weight",
                     "other_concept_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number, 0 or more, got {value}.")
        if self.refiner_learning_rate is not None and not (
            math.isfinite(self.refiner_learning_rate) and self.refiner_learning_rate >= 0
        ):
            raise ValueError(f"refiner_learning_rate must be None or a finite number, 0 or more, "
                             f"got {self.refiner_learning_rate}.")
        for name in ("warmup_fraction", "lone_click_share", "box_only_share", "neighbour_negative_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be from 0 to 1, got {getattr(self, name)}.")
        low, high = TRAINING_IMAGE_SIZE_RANGE
        if self.image_size is not None and not (
            low <= self.image_size <= high and self.image_size % TRAINING_IMAGE_SIZE_MULTIPLE == 0
        ):
            raise ValueError(
                f"image_size must be a multiple of {TRAINING_IMAGE_SIZE_MULTIPLE} from {low} to {high} "
                f"(or None for the model's own), got {self.image_size}."
            )
