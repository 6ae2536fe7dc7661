"""Objects that touch kept apart: seeds inside the concept's mask, one SAM click per seed, overlaps resolved.

The concept's (semantic) mask says where the concept is; the peaks of its distance
transform say where objects are (a quarter of a diameter apart at least, one per
connected region at least); each seed is decoded as ONE positive click, exactly the
prompts a user's click gets from :meth:`ClipSamPredictor.predict`, many clicks per
decoder call on one image embedding. Masks are then ranked by score (SAM's predicted
IoU times the mask's stability) and painted best first, each only where no better mask
is. Coordinates are XY pixels of the image; masks and labels (H, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .._jobs import Job, Progress
from .instances import masks_to_instances

if TYPE_CHECKING:
    from .predictor import ClipSamPredictor

# Objects scoring less (SAM's predicted IoU times stability) are dropped by default. Chosen on
# the demo model's validation scenes (docs/quality.md): its predicted IoUs of right masks
# lie around 0.3-0.6, so a threshold of 0.5 dropped nearly every object.
DEFAULT_SCORE_THRESHOLD = 0.2
# A mask must keep at least this part of itself where no better mask is (and, when
# restricted, inside the concept's mask); less means it mostly repeats another object.
KEEP_FRACTION = 0.5
# Stability: IoU of the mask at logit +offset and at -offset; a mask whose outline moves
# a lot with the threshold is one SAM is unsure of.
STABILITY_OFFSET = 1.0
# Seeds closer than this part of the diameter, in one connected region, are one object's.
# On generated nuclei (true masks, a perfect decoder) spacings of 0.5, 0.35 and 0.25
# found 80, 94 and 97 % of the objects, with 0.8, 0.95 and 1.0 seeds per object.
_SEED_SPACING = 0.25
# Peaks lower than this part of the expected radius lie on thin bridges and edges.
_MIN_PEAK = 0.2
# The second pass seeds what no object took where it holds a disc of this part of the
# expected radius: slivers between objects do not.
_LEFTOVER_RADIUS = 0.35

# (y0, x0, crop): a mask as its bounding box's top-left corner and the bool crop there.
_Crop = tuple[int, int, np.ndarray]


def _distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each mask pixel to the nearest background pixel; the border counts as background."""
    # Padding: an object cut by the border gets its seed inside the part that is seen.
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _check_mask(mask) -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"The mask must be 2-D (H, W), got shape {mask.shape}.")
    return mask


def estimate_diameter(mask) -> float:
    """The typical object diameter in pixels in a (H, W) bool mask; 0.0 for an empty mask.

    Twice the median height of the distance transform's peaks: each object, touching
    others or not, has a peak at its centre as high as its inscribed radius.
    """
    mask = _check_mask(mask)
    if not mask.any():
        return 0.0
    distance = _distance(mask)
    # Peaks are found on a lightly smoothed copy: ragged outlines make flat, low ridges
    # whose every pixel would otherwise count as a peak.
    smooth = ndimage.gaussian_filter(distance, 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=3)) & mask & (distance >= 1)
    heights = distance[peaks] if peaks.any() else distance[mask]
    return float(2 * np.median(heights))


def find_seeds(mask, diameter: float | None = None) -> np.ndarray:
    """Seeds for the objects in a (H, W) bool mask: (N, 2) XY float64 pixels, in raster order.

    Seeds are the peaks of the distance transform, at least ``diameter / 4`` apart within
    a connected region, and every region has at least one (its deepest pixel). More
    seeds than objects is harmless (a mask that repeats a better one is dropped when
    overlaps are resolved); a missing seed is a missing object, hence the close spacing:
    a small object touching a large one has its peak less than half a diameter away.

    Args:
        diameter: expected object diameter in pixels; None: :func:`estimate_diameter`.
    """
    mask = _check_mask(mask)
    if not mask.any():
        return np.zeros((0, 2), dtype=np.float64)
    if diameter is None:
        diameter = estimate_diameter(mask)
    if not (np.isfinite(diameter) and diameter > 0):
        raise ValueError(f"diameter must be a positive number of pixels, got {diameter}.")
    # Not smoothed: on generated nuclei smoothing by a tenth of the diameter lost 3 to 8 %
    # of the objects (a small object's peak merges into its large neighbour's).
    distance = _distance(mask)
    spacing = max(_SEED_SPACING * diameter, 1.0)
    # A square window keeps the filter separable (fast for large diameters); the
    # greedy pass below enforces the round spacing.
    window = 2 * int(np.ceil(spacing)) + 1
    peaks = (distance == ndimage.maximum_filter(distance, size=window)) & mask
    peaks &= distance >= _MIN_PEAK * diameter / 2
    regions, count = ndimage.label(mask)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-distance[rows, cols], kind="stable")  # highest first; ties in raster order
    kept: dict[int, list[tuple[int, int]]] = {}
    for row, col in zip(rows[order], cols[order]):
        others = kept.setdefault(int(regions[row, col]), [])
        if all((row - r) ** 2 + (col - c) ** 2 >= spacing**2 for r, c in others):
            others.append((int(row), int(col)))
    # Every region gets an object, however small or thin.
    deepest = ndimage.maximum_position(distance, regions, np.arange(1, count + 1))
    for region, (row, col) in enumerate(deepest, start=1):
        if not kept.get(region):
            kept[region] = [(int(row), int(col))]
    seeds = sorted(point for points in kept.values() for point in points)
    return np.array([[col, row] for row, col in seeds], dtype=np.float64).reshape(-1, 2)


def _crop(mask: np.ndarray) -> _Crop | None:
    """A (H, W) bool mask as (y0, x0, crop of its bounding box); None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return int(y0), int(x0), mask[y0:y1, x0:x1].copy()


def _paint(shape: tuple[int, int], crops: list[_Crop], scores: np.ndarray, min_area: int,
           keep_fraction: float) -> np.ndarray:
    """Labels 1..N (int32, best score first) from cropped masks; see :func:`resolve_overlaps`."""
    labels = np.zeros(shape, dtype=np.int32)
    count = 0
    for k in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        y0, x0, crop = crops[k]
        region = labels[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        free = crop & (region == 0)
        area = int(free.sum())
        if area < max(min_area, 1) or area < keep_fraction * int(crop.sum()):
            continue
        count += 1
        region[free] = count
    return labels


def resolve_overlaps(masks, scores, min_area: int = 0, keep_fraction: float = KEEP_FRACTION) -> np.ndarray:
    """One label per pixel from overlapping masks: (K, H, W) bool masks, (K,) scores -> (H, W) int32.

    Masks are painted best score first (ties: the earlier mask), each only where no
    better mask is; a mask of which less than ``keep_fraction`` (or fewer than
    ``min_area`` pixels) is left is dropped. Labels are 1..N in score order.
    """
    masks = np.asarray(masks).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if masks.ndim != 3 or len(masks) != len(scores):
        raise ValueError(f"Need (K, H, W) masks and (K,) scores, got {masks.shape} and {scores.shape}.")
    crops, kept = [], []
    for mask, score in zip(masks, scores):
        crop = _crop(mask)
        if crop is not None:
            crops.append(crop)
            kept.append(score)
    return _paint(masks.shape[1:], crops, np.asarray(kept), min_area, keep_fraction)


def _decode_clicks(predictor: ClipSamPredictor, clicks: np.ndarray,
                   negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode each click (B, 2) XY as its own prompt, with every negative point; one decoder call.

    Each prompt is what ``predictor.predict(point_coords=[click, *negatives],
    point_labels=[1, 0, ...])`` gives SAM: the same frame conversion and, when the
    configuration uses it, the similarity mask prompt (training's manual mode is
    trained on exactly these).

    Returns:
        masks (B, H, W) bool, predicted IoU (B,), stability (B,).
    """
    import torch  # here, not at the top: the pipeline (and the CLI's --help) stays light to import

    from .sam_frame import to_sam_frame

    model, batch = predictor.model, len(clicks)
    coords = np.concatenate([clicks[:, None, :], np.broadcast_to(negatives, (batch, *negatives.shape))], axis=1)
    labels = np.zeros(coords.shape[:2], dtype=np.int64)
    labels[:, 0] = 1
    with torch.no_grad(), model.at_resolution(predictor.image_size):
        # One conversion for all points; each row of the batch is then one click's prompt.
        (frame_coords, frame_labels), _ = to_sam_frame(
            coords.reshape(-1, 2), labels.reshape(-1), None, predictor.original_size, model.image_size, model.device
        )
        points = (frame_coords.reshape(*coords.shape), frame_labels.reshape(*labels.shape))
        mask_prompt = predictor.similarity_mask_prompt()
        if mask_prompt is not None:
            mask_prompt = mask_prompt.expand(batch, -1, -1, -1)
        masks, iou, low_res = predictor.predict_torch(points, None, mask_prompt)
    low_res = low_res[:, 0].float()
    inner = (low_res > STABILITY_OFFSET).sum(dim=(-1, -2)).float()
    outer = (low_res > -STABILITY_OFFSET).sum(dim=(-1, -2)).float()
    stability = torch.where(outer > 0, inner / outer.clamp(min=1), torch.zeros_like(outer))
    return masks[:, 0].cpu().numpy(), iou[:, 0].float().cpu().numpy(), stability.cpu().numpy()


def _iter_decode(predictor: ClipSamPredictor, seeds: np.ndarray, negatives: np.ndarray, restrict_to,
                 score_threshold: float, batch_size: int, stage: str) -> Job[tuple[list[_Crop], list[float]]]:
    """Each seed's mask, cropped, and its score: those below the threshold or mostly outside ``restrict_to`` left out."""
    crops: list[_Crop] = []
    scores: list[float] = []
    starts = range(0, len(seeds), batch_size)
    for number, start in enumerate(starts):
        yield Progress(stage, number, len(starts))
        masks, iou, stability = _decode_clicks(predictor, seeds[start : start + batch_size], negatives)
        for mask, score in zip(masks, np.clip(iou, 0, 1) * stability):
            if score < score_threshold:
                continue
            crop = _crop(mask)
            if crop is not None and restrict_to is not None:
                y0, x0, pixels = crop
                inside = pixels & restrict_to[y0 : y0 + pixels.shape[0], x0 : x0 + pixels.shape[1]]
                crop = (y0, x0, inside) if inside.any() and inside.sum() >= KEEP_FRACTION * pixels.sum() else None
            if crop is not None:
                crops.append(crop)
                scores.append(float(score))
    return crops, scores


def _checked_inputs(predictor: ClipSamPredictor, negative_points, restrict_to, batch_size: int):
    """(H, W) of the predictor's image, (M, 2) negatives, the restricting mask; refusals with the fix."""
    if predictor.original_size is None:
        raise RuntimeError("Set an image with set_image(...) before decoding seeds.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, got {batch_size}.")
    shape = tuple(predictor.original_size)
    negatives = np.zeros((0, 2)) if negative_points is None else np.asarray(negative_points, np.float64).reshape(-1, 2)
    if restrict_to is not None:
        restrict_to = np.asarray(restrict_to).astype(bool)
        if restrict_to.shape != shape:
            raise ValueError(f"restrict_to must have the image's shape {shape}, got {restrict_to.shape}.")
    return shape, negatives, restrict_to


def iter_seeded_instances(
    predictor: ClipSamPredictor,
    seeds,
    negative_points=None,
    *,
    restrict_to: np.ndarray | None = None,
    min_area: int = 0,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    batch_size: int = 64,
) -> Job[np.ndarray]:
    """One object per seed: each seed decoded as one positive click, overlaps resolved; yields per batch.

    The image and concept must be set on ``predictor``. A mask's score is SAM's
    predicted IoU (clipped to [0, 1]) times its stability; masks below
    ``score_threshold`` are dropped, the rest painted best first (:func:`resolve_overlaps`).
    The batch size changes the speed and memory, not the labels.

    Args:
        seeds: (N, 2) XY pixels, one per object.
        negative_points: (M, 2) XY pixels given with every seed as background clicks.
        restrict_to: (H, W) bool; masks mostly outside are dropped, the rest clipped to it.
        min_area: drop objects with fewer pixels (after overlaps are resolved).

    Returns:
        (H, W) int32 labels 1..N (best score first), at most one object per seed.
    """
    shape, negatives, restrict_to = _checked_inputs(predictor, negative_points, restrict_to, batch_size)
    seeds = np.asarray(seeds, dtype=np.float64).reshape(-1, 2)
    crops, scores = yield from _iter_decode(
        predictor, seeds, negatives, restrict_to, score_threshold, batch_size, "separating objects"
    )
    return _paint(shape, crops, np.asarray(scores), min_area, KEEP_FRACTION)


def iter_mask_instances(
    predictor: ClipSamPredictor,
    mask: np.ndarray,
    negative_points=None,
    *,
    diameter: float | None = None,
    min_area: int = 0,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    batch_size: int = 64,
) -> Job[np.ndarray]:
    """The objects in the concept's (H, W) bool mask, touching ones apart; yields per batch of seeds.

    Seeds from :func:`find_seeds` (regions under ``min_area`` left out), decoded by
    :func:`iter_seeded_instances`' rules with objects kept mostly inside ``mask``. Then a
    second pass seeds what no object took, where it is wide enough to hold an object
    (a small object squeezed between large ones has no peak of its own), and the
    overlaps of both passes are resolved together.

    Args:
        diameter: expected object diameter in pixels; None: :func:`estimate_diameter`.
    """
    mask = _check_mask(mask)
    shape, negatives, _ = _checked_inputs(predictor, negative_points, mask, batch_size)
    seedable = masks_to_instances(mask, min_area) > 0
    diameter = estimate_diameter(seedable) if diameter is None else diameter
    crops: list[_Crop] = []
    scores: list[float] = []
    labels = np.zeros(shape, dtype=np.int32)
    tried = np.zeros((0, 2))
    for stage in ("separating objects", "separating objects (second pass)"):
        if len(tried):
            seedable &= labels == 0
            regions, count = ndimage.label(seedable)
            radii = ndimage.maximum(_distance(seedable), regions, np.arange(1, count + 1))
            wide = np.flatnonzero(np.asarray(radii) >= _LEFTOVER_RADIUS * diameter / 2) + 1
            seedable = masks_to_instances(np.isin(regions, wide), min_area) > 0
        seeds = find_seeds(seedable, diameter)
        if len(tried) and len(seeds):
            # A seed next to one of the first pass would repeat a click whose mask was dropped.
            near, _ = cKDTree(tried).query(seeds, distance_upper_bound=max(_SEED_SPACING * diameter, 1.0))
            seeds = seeds[~np.isfinite(near)]
        if not len(seeds):
            break
        tried = np.concatenate([tried, seeds])
        more_crops, more_scores = yield from _iter_decode(
            predictor, seeds, negatives, mask, score_threshold, batch_size, stage
        )
        crops += more_crops
        scores += more_scores
        labels = _paint(shape, crops, np.asarray(scores), min_area, KEEP_FRACTION)
    return labels


def iter_concept_instances(
    predictor: ClipSamPredictor,
    mask: np.ndarray,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    *,
    diameter: float | None = None,
    min_area: int = 0,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    batch_size: int = 64,
) -> Job[np.ndarray]:
    """Objects of one prediction that keep touching objects apart; yields per batch of seeds.

    With the user's positive points, each is one object's seed (one object per click,
    kept whatever its score: the user asked for it; a box keeps objects inside it).
    Otherwise :func:`iter_mask_instances` finds the objects in ``mask``. Negative points
    go with every seed.

    Args:
        mask: (H, W) bool, the concept's mask SAM predicted for these prompts.
        points, point_labels, box: the user's prompts (checked; XY, 1/0, XYXY), or None
            in the text-only mode (CLIP's points are not objects).
    """
    positives = negatives = None
    if points is not None:
        labels = np.ones(len(points), dtype=np.int64) if point_labels is None else np.asarray(point_labels)
        positives, negatives = points[labels == 1], points[labels == 0]
    if positives is not None and len(positives):
        restrict_to = None
        if box is not None:
            restrict_to = np.zeros(mask.shape, dtype=bool)
            x0, y0, x1, y1 = np.round(box).astype(int)
            restrict_to[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
        return (yield from iter_seeded_instances(
            predictor, positives, negatives, restrict_to=restrict_to, min_area=min_area, score_threshold=0.0,
            batch_size=batch_size,
        ))
    return (yield from iter_mask_instances(
        predictor, mask, negatives, diameter=diameter, min_area=min_area, score_threshold=score_threshold,
        batch_size=batch_size,
    ))


__all__ = [
    "estimate_diameter", "find_seeds", "iter_concept_instances", "iter_mask_instances", "iter_seeded_instances",
    "resolve_overlaps",
]
