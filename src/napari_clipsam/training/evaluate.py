"""Evaluation: IoU and Dice per concept, with prompts made as the inference mode makes them.

The text mode is scored on the whole concept mask; the manual mode on one object, the one
its prompts were drawn from (a click means "this object").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .._jobs import Job, Progress, run
from ..inference.predictor import ClipSamPredictor
from ..inference.prompts import box_from_mask, points_from_mask
from ..model.clipsam import ClipSamModel
from .config import MODES
from .data import Sample
from .results import EvaluationReport


def _iou_dice(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    intersection = float(np.logical_and(prediction, truth).sum())
    union = float(np.logical_or(prediction, truth).sum())
    total = float(prediction.sum() + truth.sum())
    return (intersection / union if union else 1.0), (2 * intersection / total if total else 1.0)


def choose_object(objects: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool mask of one object of ``objects`` (int labels, 0 elsewhere), drawn uniformly.

    An image without objects gives an empty mask.
    """
    present = np.unique(objects)
    present = present[present > 0]
    if present.size == 0:
        return np.zeros(objects.shape, dtype=bool)
    return objects == present[int(rng.integers(0, present.size))]


# A neighbour is an object within this many pixels of the target (touching, or all but).
NEIGHBOUR_REACH = 2

# How many positive clicks a manual-mode prompt has: one most often, as users (and the
# seeded instance segmentation) click once per object.
_POSITIVE_COUNT_WEIGHTS = (0.5, 0.3, 0.2)


def touching_objects(objects: np.ndarray, target: np.ndarray, reach: int = NEIGHBOUR_REACH) -> np.ndarray:
    """(H, W) bool: the pixels of the objects of ``objects`` (int labels) that come within
    ``reach`` px of ``target`` (bool), the target itself left out."""
    ring = ndimage.binary_dilation(target, iterations=reach) & ~target
    near = np.unique(objects[ring])
    return np.isin(objects, near[near > 0]) & ~target


def manual_prompts(mask: np.ndarray, rng: np.random.Generator, max_positive: int = 3, max_negative: int = 2,
                   box_probability: float = 0.5, lone_click_probability: float = 0.0,
                   objects: np.ndarray | None = None, neighbour_negative_probability: float = 0.0,
                   box_only_probability: float = 0.0,
                   ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Manual-mode prompts sampled from a ground-truth mask: points (XY) with labels, and maybe a box (XYXY).

    The mask is the one object the prompts point at (see :func:`choose_object`). With
    ``lone_click_probability`` p, a prompt is one positive click and nothing else with
    probability p (a user's commonest prompt, and what seeded instances decode), else
    drawn from the usual mix (1 to ``max_positive`` clicks, 0 to ``max_negative``
    negatives, a box with ``box_probability``); at 0 no extra random number is drawn, so
    earlier runs' draws stay the same. With ``neighbour_negative_probability`` q and the
    concept's ``objects`` (int labels), a prompt of the usual mix has its negatives (at
    least one) on the objects touching the target with probability q, as a user clicks a
    neighbour that the mask spread onto (:func:`touching_objects`; a target without such
    neighbours keeps its draw); at 0 no extra random number is drawn. With
    ``box_only_probability`` b, a prompt that is not a lone click is the object's box alone
    (no click: a user draws a box), drawn before anything else; at 0 no extra number is drawn.
    """
    lone = lone_click_probability > 0 and rng.random() < lone_click_probability
    if not lone and box_only_probability > 0 and rng.random() < box_only_probability:
        box = box_from_mask(mask)
        if box is not None:
            return None, None, box
    if lone:
        positives, negatives = 1, 0
    else:
        weights = np.array(_POSITIVE_COUNT_WEIGHTS if max_positive == len(_POSITIVE_COUNT_WEIGHTS)
                           else [1.0] * max_positive)
        positives = int(rng.choice(np.arange(1, max_positive + 1), p=weights / weights.sum()))
        negatives = int(rng.integers(0, max_negative + 1))
    negative_region = None
    if (not lone and objects is not None and neighbour_negative_probability > 0
            and rng.random() < neighbour_negative_probability):
        neighbours = touching_objects(objects, mask)
        if neighbours.any():
            # A click a pixel inside the neighbour, as a user aims: its eroded pixels where it has any.
            inner = ndimage.binary_erosion(neighbours)
            negative_region, negatives = (inner if inner.any() else neighbours), max(negatives, 1)
    coords, labels = points_from_mask(mask, positives, negatives, rng, negative_region)
    box = None
    if not lone and rng.random() < box_probability:
        box = box_from_mask(mask)
    return (coords if len(coords) else None), (labels if len(labels) else None), box


def iter_evaluate(
    model: ClipSamModel, dataset: Sequence[Sample], mode: str = "text", seed: int = 0, image_size: int | None = None
) -> Job[EvaluationReport]:
    """Evaluate as the chosen inference mode would run; yields per sample, returns the report.

    ``"both"`` scores every sample in the text mode and in the manual mode.

    ``image_size`` is SAM's input side (None: the model's own), as for the predictor.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
    if len(dataset) == 0:
        raise ValueError("Nothing to evaluate: the dataset is empty.")
    predictor = ClipSamPredictor(model, image_size=image_size)
    scores: dict[str, list[tuple[float, float]]] = {}
    was_training = model.training
    model.eval()
    try:
        for index, sample in enumerate(dataset):
            yield Progress(f"evaluating {index + 1}/{len(dataset)}", index, len(dataset))
            predictor.set_image(sample.image)
            predictor.set_concept(sample.concept)
            if mode in ("text", "both") or not sample.mask.any():  # an absent concept: text only, as trained
                masks, _, _ = predictor.predict()
                scores.setdefault(sample.concept, []).append(_iou_dice(masks[0], sample.mask))
            if mode in ("manual", "both") and sample.mask.any():  # an absent concept has no object to click
                # The same object and prompts for every evaluation of this sample: comparable runs.
                rng = np.random.default_rng([seed, index])
                target = choose_object(sample.object_labels(), rng)
                coords, labels, box = manual_prompts(target, rng)
                masks, _, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box)
                scores.setdefault(sample.concept, []).append(_iou_dice(masks[0], target))
    finally:
        model.train(was_training)
    per_concept = {
        concept: {"iou": float(np.mean([s[0] for s in values])), "dice": float(np.mean([s[1] for s in values])),
                  "count": len(values)}
        for concept, values in sorted(scores.items())
    }
    every = [s for values in scores.values() for s in values]
    return EvaluationReport(
        per_concept=per_concept,
        iou=float(np.mean([s[0] for s in every])),
        dice=float(np.mean([s[1] for s in every])),
        mean_concept_iou=float(np.mean([v["iou"] for v in per_concept.values()])),
    )


def evaluate(
    model: ClipSamModel, dataset: Sequence[Sample], mode: str = "text", seed: int = 0, image_size: int | None = None
) -> EvaluationReport:
    """IoU and Dice per concept and overall, with prompts made as ``mode`` makes them."""
    return run(iter_evaluate(model, dataset, mode, seed, image_size))
