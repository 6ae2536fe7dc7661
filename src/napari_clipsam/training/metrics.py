"""Segmentation quality against ground truth: semantic IoU, confusion between concepts,
one-to-one instance matching, the quality of a click's mask, and where a mask's errors lie.
Plain numpy and scipy.

Masks are (H, W) bool (anything else is read as "nonzero"); instance maps are (H, W) int
labels with 0 as background. Every function takes arrays of one shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def _same_shape(*arrays: np.ndarray) -> None:
    shapes = {np.shape(array) for array in arrays}
    if len(shapes) != 1:
        raise ValueError(f"arrays must have one shape, got {sorted(shapes)}")


def semantic_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two (H, W) masks; 1.0 when both are empty."""
    _same_shape(prediction, truth)
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    union = np.count_nonzero(prediction | truth)
    if union == 0:
        return 1.0
    return np.count_nonzero(prediction & truth) / union


def cross_overlap(prediction: np.ndarray, other_truth: np.ndarray, own_truth: np.ndarray) -> float:
    """Fraction of another concept's pixels that a concept's prediction covers.

    Only pixels of `other_truth` outside `own_truth` count (where the two concepts' truths
    share pixels, covering them is not a confusion). 0.0 when none are left.
    """
    _same_shape(prediction, other_truth, own_truth)
    other = np.asarray(other_truth, bool) & ~np.asarray(own_truth, bool)
    total = np.count_nonzero(other)
    if total == 0:
        return 0.0
    return np.count_nonzero(np.asarray(prediction, bool) & other) / total


def click_quality(mask: np.ndarray, object_mask: np.ndarray) -> tuple[float, float]:
    """(IoU of a click's `mask` with the clicked object, fraction of the mask outside it).

    An empty mask is 0.0 outside (and IoU 0.0 unless the object is empty too).
    """
    _same_shape(mask, object_mask)
    mask, object_mask = np.asarray(mask, bool), np.asarray(object_mask, bool)
    area = np.count_nonzero(mask)
    outside = np.count_nonzero(mask & ~object_mask) / area if area else 0.0
    return semantic_iou(mask, object_mask), outside


def rim_errors(prediction: np.ndarray, truth: np.ndarray, width: float = 1.0) -> dict[str, int]:
    """A semantic mask's wrong pixels, and how many of them lie on the truth's rim.

    ``"missed"``: truth pixels not predicted, ``"missed_at_rim"`` those of them within
    ``width`` px of the background; ``"false"``: predicted pixels outside the truth,
    ``"false_at_rim"`` those within ``width`` px of the truth. Errors mostly at the rim
    mean the objects are found but their outlines are off (a mask a pixel too small
    misses rims only).
    """
    _same_shape(prediction, truth)
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    missed, false = truth & ~prediction, prediction & ~truth
    # Distance to the nearest pixel of the other side; an image with no such pixel has none near.
    to_background = ndimage.distance_transform_edt(truth) if (~truth).any() else np.full(truth.shape, np.inf)
    to_truth = ndimage.distance_transform_edt(~truth) if truth.any() else np.full(truth.shape, np.inf)
    return {"missed": int(missed.sum()), "missed_at_rim": int((missed & (to_background <= width)).sum()),
            "false": int(false.sum()), "false_at_rim": int((false & (to_truth <= width)).sum())}


@dataclass(frozen=True)
class InstanceMatch:
    """Predicted objects matched one-to-one with true objects at an IoU threshold.

    Precision is 1.0 when nothing was predicted (nothing found was wrong), recall 1.0 when
    there was nothing to find, F1 1.0 when both; `mean_matched_iou` is the mean IoU of the
    matched pairs, 0.0 when there are none.
    """

    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 1.0


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels as 0..n with 0 kept for background, pixel count of each of the n objects)."""
    values, inverse = np.unique(np.asarray(labels).ravel(), return_inverse=True)
    if values.size and values[0] == 0:
        counts = np.bincount(inverse, minlength=values.size)[1:]
        return inverse, counts
    # No background pixels at all: shift so that object ids start at 1.
    return inverse + 1, np.bincount(inverse, minlength=values.size)


def pair_ious(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """IoU of every overlapping (predicted object, true object) pair, from a contingency table.

    Returns (predicted index, true index, IoU) for each overlapping pair, 0-based indices
    into the objects in label order, and the numbers of predicted and true objects.
    """
    _same_shape(predicted, truth)
    predicted_ids, predicted_areas = _consecutive(predicted)
    true_ids, true_areas = _consecutive(truth)
    both = (predicted_ids > 0) & (true_ids > 0)
    # One code per (predicted, true) pair; counting the codes counts each intersection.
    codes = (predicted_ids[both] - 1).astype(np.int64) * max(true_areas.size, 1) + (true_ids[both] - 1)
    pairs, intersections = np.unique(codes, return_counts=True)
    rows, columns = np.divmod(pairs, max(true_areas.size, 1))
    unions = predicted_areas[rows] + true_areas[columns] - intersections
    return rows, columns, intersections / unions, predicted_areas.size, true_areas.size


def match_instances(predicted: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> InstanceMatch:
    """Match (H, W) instance maps one-to-one: pairs with IoU >= `iou_threshold`, best first.

    Greedy by IoU; above 0.5 an object can overlap at most one other that much, so there
    the greedy matching is the only one.
    """
    rows, columns, ious, n_predicted, n_true = pair_ious(predicted, truth)
    candidates = np.flatnonzero(ious >= iou_threshold)
    candidates = candidates[np.argsort(-ious[candidates], kind="stable")]
    used_predicted = np.zeros(n_predicted, dtype=bool)
    used_true = np.zeros(n_true, dtype=bool)
    matched = []
    for pair in candidates:  # only the pairs above the threshold: at most min(n_predicted, n_true) at 0.5
        if not used_predicted[rows[pair]] and not used_true[columns[pair]]:
            used_predicted[rows[pair]] = used_true[columns[pair]] = True
            matched.append(ious[pair])
    true_positives = len(matched)
    false_positives = n_predicted - true_positives
    false_negatives = n_true - true_positives
    return InstanceMatch(
        true_positives=true_positives,
        false_positives=false_positives,
        false_negatives=false_negatives,
        precision=_ratio(true_positives, n_predicted),
        recall=_ratio(true_positives, n_true),
        f1=_ratio(2 * true_positives, n_predicted + n_true),
        mean_matched_iou=float(np.mean(matched)) if matched else 0.0,
    )


def pooled_f1(matches) -> dict:
    """F1 over the objects of several images (:class:`InstanceMatch` each), every object
    counted once: {"f1", "true_positives", "false_positives", "false_negatives"}; 1.0 when
    there are no objects at all."""
    tp, fp, fn = (sum(getattr(m, field) for m in matches) for field in
                  ("true_positives", "false_positives", "false_negatives"))
    return {"f1": _ratio(2 * tp, 2 * tp + fp + fn), "true_positives": tp, "false_positives": fp,
            "false_negatives": fn}
