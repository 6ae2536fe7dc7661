"""Objects that touch kept apart: seeds inside the concept's mask, one SAM click per seed, overlaps resolved.

The concept's (semantic) mask says where the concept is; the peaks of its distance
transform, averaged over the levels of the logits it was thresholded from
(:func:`.basins.depth_field`), say where objects are (a quarter of a diameter apart at
least, one per connected region at least); each seed is decoded as ONE positive click, exactly the
prompts a user's click gets from :meth:`ClipSamPredictor.predict`, many clicks per
decoder call on one image embedding, and ranked by score (SAM's predicted IoU times
the mask's stability). Seeds found in a concept's mask then share it out
(:mod:`.basins`: repeated masks are one object; overlaps go by the watershed basins of
the distance transform); a user's clicks are painted best first, each only where no
better mask is. Coordinates are XY pixels of the image; masks and labels (H, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .._jobs import Job, Progress
from .basins import (
    LOGIT_SMOOTHING,
    SEED_SPACING,
    Crop,
    assemble,
    check_mask,
    crop_mask,
    depth_field,
    distance_to_background,
    estimate_diameter,
    find_seeds,
    group_seeds,
    seed_basins,
)
from .instances import clicked_object, masks_to_instances
from .outlines import outline_objects
from .prompts import inside_box

if TYPE_CHECKING:
    from .predictor import ClipSamPredictor

# Objects scoring less (SAM's predicted IoU times stability) are dropped by default. Chosen on
# the demo model's validation scenes (docs/quality.md): its predicted IoUs of right masks
# lie around 0.3-0.6, so a threshold of 0.5 dropped nearly every object; on 8 "nuclei"
# validation scenes (925 nuclei) instance F1 was 0.663 at 0 and 0.1, 0.629 at 0.2.
DEFAULT_SCORE_THRESHOLD = 0.1
# A mask must keep at least this part of itself where no better mask is (and, when
# restricted, inside the concept's mask); less means it mostly repeats another object.
KEEP_FRACTION = 0.5
# Stability: IoU of the mask at logit +offset and at -offset; a mask whose outline moves
# a lot with the threshold is one SAM is unsure of.
STABILITY_OFFSET = 1.0
# The second pass seeds what no object took where it holds a disc of this part of the
# expected radius: slivers between objects do not.
_LEFTOVER_RADIUS = 0.35

def _paint(shape: tuple[int, int], crops: list[Crop], scores: np.ndarray, min_area: int,
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
        crop = crop_mask(mask)
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
        masks, iou, low_res = predictor.predict_torch(points, None, mask_prompt, refine=False)  # many masks: cheaper
    low_res = low_res[:, 0].float()
    inner = (low_res > STABILITY_OFFSET).sum(dim=(-1, -2)).float()
    outer = (low_res > -STABILITY_OFFSET).sum(dim=(-1, -2)).float()
    stability = torch.where(outer > 0, inner / outer.clamp(min=1), torch.zeros_like(outer))
    return masks[:, 0].cpu().numpy(), iou[:, 0].float().cpu().numpy(), stability.cpu().numpy()


def _iter_decode(predictor: ClipSamPredictor, seeds: np.ndarray, negatives: np.ndarray, restrict_to,
                 batch_size: int, stage: str, keep_fraction: float = KEEP_FRACTION
                 ) -> Job[tuple[list[Optional[Crop]], np.ndarray]]:
    """Each seed's mask, cropped, and its score, in the seeds' order.

    A mask that is empty, or (when ``restrict_to`` is given) has less than
    ``keep_fraction`` of itself or nothing inside it, is None; the rest are clipped to
    ``restrict_to``.
    """
    crops: list[Optional[Crop]] = []
    scores: list[np.ndarray] = []
    starts = range(0, len(seeds), batch_size)
    for number, start in enumerate(starts):
        yield Progress(stage, number, len(starts))
        masks, iou, stability = _decode_clicks(predictor, seeds[start : start + batch_size], negatives)
        scores.append(np.clip(iou, 0, 1) * stability)
        for mask in masks:
            crop = crop_mask(mask)
            if crop is not None and restrict_to is not None:
                y0, x0, pixels = crop
                inside = pixels & restrict_to[y0 : y0 + pixels.shape[0], x0 : x0 + pixels.shape[1]]
                crop = (y0, x0, inside) if inside.any() and inside.sum() >= keep_fraction * pixels.sum() else None
            crops.append(crop)
    return crops, (np.concatenate(scores) if scores else np.zeros(0)).astype(np.float64)


def _held_by(crop: Optional[Crop], seed: np.ndarray, others: np.ndarray) -> Optional[Crop]:
    """A seed's cropped mask, only the part that is the seed's object (:func:`clicked_object`):
    its regions holding the seed, parted from the ``others`` (M, 2) XY clicks (negatives, other seeds)."""
    if crop is None:
        return None
    y0, x0, pixels = crop
    clicks = np.concatenate([np.asarray(seed, dtype=np.float64).reshape(1, 2), others]) - (x0, y0)
    return y0, x0, clicked_object(pixels, clicks, (np.arange(len(clicks)) == 0).astype(np.int64))


def _fraction_in(crop: Crop, region: np.ndarray) -> float:
    """The part of a cropped mask's pixels inside the (H, W) bool ``region``."""
    y0, x0, pixels = crop
    return float((pixels & region[y0 : y0 + pixels.shape[0], x0 : x0 + pixels.shape[1]]).sum()) / max(1, int(pixels.sum()))


def _above(crops: list[Optional[Crop]], scores: np.ndarray, score_threshold: float):
    """The masks (and their scores) that exist and score at least ``score_threshold``."""
    kept = [k for k, crop in enumerate(crops) if crop is not None and scores[k] >= score_threshold]
    return [crops[k] for k in kept], scores[kept]


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
    """One object per seed: each seed decoded as one positive click (the part of its mask that holds
    the seed and is nearer it than the negatives and the other seeds), overlaps resolved; yields per batch.

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
    crops, scores = yield from _iter_decode(predictor, seeds, negatives, restrict_to, batch_size, "separating objects")
    # One click, one object: each seed's mask parted from the negatives and from the other seeds.
    crops = [_held_by(crop, seed, np.concatenate([negatives, np.delete(seeds, k, axis=0)]))
             for k, (crop, seed) in enumerate(zip(crops, seeds))]
    return _paint(shape, *_above(crops, scores, score_threshold), min_area, KEEP_FRACTION)


def iter_mask_instances(
    predictor: ClipSamPredictor,
    mask: np.ndarray,
    negative_points=None,
    *,
    diameter: float | None = None,
    min_area: int = 0,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    batch_size: int = 64,
    logits: np.ndarray | None = None,
) -> Job[np.ndarray]:
    """The objects in the concept's (H, W) bool mask, touching ones apart; yields per batch of seeds.

    A mask of outlines (a network of thin lines enclosing regions, as cell membranes in a
    tissue) gives one object per enclosed region, its outline (:mod:`.outlines`), with no
    seeds. Otherwise seeds from :func:`find_seeds` (regions under ``min_area`` left out), each decoded as
    one click, its mask clipped to ``mask``. A second pass seeds what no object's
    mask took, where it is wide enough to hold an object (a small object squeezed between
    large ones has no peak of its own). The seeds of both passes then share out the mask
    (:mod:`.basins`): seeds whose masks repeat a better one's are one object, each pixel
    goes to the one object whose masks cover it, and where several or none do, to the
    object whose seed's watershed basin holds it. Objects start from seeds scoring at
    least ``score_threshold``; objects under ``min_area`` pixels are dropped.

    Args:
        diameter: expected object diameter in pixels; None: :func:`estimate_diameter`.
        logits: (H, W) the logits ``mask`` was thresholded from: seeds and basins then
            follow :func:`depth_field` (objects part where their logits dip, where the mask
            may not narrow; the logits smoothed by ``LOGIT_SMOOTHING`` x ``diameter``);
            None: the mask's distance transform.
    """
    mask = check_mask(mask)
    shape, negatives, _ = _checked_inputs(predictor, negative_points, mask, batch_size)
    outlines = outline_objects(mask, min_area)
    if outlines is not None:  # a network of lines: its objects are the outlines of the regions it encloses
        return outlines
    seedable = masks_to_instances(mask, min_area) > 0
    diameter = estimate_diameter(seedable) if diameter is None else diameter
    crops: list[Optional[Crop]] = []
    scores = np.zeros(0)
    leftover = seedable.copy()
    smoothing = LOGIT_SMOOTHING * diameter
    depth = depth_field(seedable, logits, smoothing=smoothing)  # the first pass's and the basins'
    tried = kept = np.zeros((0, 2))
    for stage in ("separating objects", "separating objects (second pass)"):
        if len(tried):
            for crop in _above(crops, scores, score_threshold)[0]:
                y0, x0, pixels = crop
                leftover[y0 : y0 + pixels.shape[0], x0 : x0 + pixels.shape[1]] &= ~pixels
            regions, count = ndimage.label(leftover)
            radii = ndimage.maximum(distance_to_background(leftover), regions, np.arange(1, count + 1))
            wide = np.flatnonzero(np.asarray(radii) >= _LEFTOVER_RADIUS * diameter / 2) + 1
            leftover = masks_to_instances(np.isin(regions, wide), min_area) > 0
        seeds = find_seeds(leftover, diameter, depth_field(leftover, logits, smoothing=smoothing) if len(tried) else depth)
        if len(tried) and len(seeds):
            # A seed next to one of the first pass would repeat a click whose mask was dropped.
            near, _ = cKDTree(tried).query(seeds, distance_upper_bound=max(SEED_SPACING * diameter, 1.0))
            seeds = seeds[~np.isfinite(near)]
        if not len(seeds):
            break
        # Kept however much of a mask spreads outside: the seed lies in the concept's mask, so an
        # object is there; the mask's score decides (a spreading mask still parts its basin).
        more_crops, more_scores = yield from _iter_decode(predictor, seeds, negatives, mask, batch_size, stage, 0.0)
        new = np.ones(len(seeds), dtype=bool)
        if len(tried):
            # A second-pass seed is an object only if its mask is mostly what no object took;
            # otherwise it repeats a neighbour, and its basin would cut a sliver off that one.
            new = np.array([crop is not None and _fraction_in(crop, leftover) >= KEEP_FRACTION
                            for crop in more_crops], dtype=bool)
        tried = np.concatenate([tried, seeds])
        kept = np.concatenate([kept, seeds[new]])
        crops += [crop for crop, is_new in zip(more_crops, new) if is_new]
        scores = np.concatenate([scores, more_scores[new]])
    if not len(kept):
        return np.zeros(shape, dtype=np.int32)
    basins = seed_basins(seedable, kept, depth)
    return assemble(seedable, basins, crops, group_seeds(crops, scores, score_threshold), min_area)


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
    logits: np.ndarray | None = None,
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
        logits: (H, W) the logits ``mask`` was thresholded from (see :func:`iter_mask_instances`).
    """
    positives = negatives = None
    if points is not None:
        labels = np.ones(len(points), dtype=np.int64) if point_labels is None else np.asarray(point_labels)
        positives, negatives = points[labels == 1], points[labels == 0]
    if positives is not None and len(positives):
        restrict_to = None if box is None else inside_box(mask.shape, box)
        return (yield from iter_seeded_instances(
            predictor, positives, negatives, restrict_to=restrict_to, min_area=min_area, score_threshold=0.0,
            batch_size=batch_size,
        ))
    return (yield from iter_mask_instances(
        predictor, mask, negatives, diameter=diameter, min_area=min_area, score_threshold=score_threshold,
        batch_size=batch_size, logits=logits,
    ))


__all__ = [
    "estimate_diameter", "find_seeds", "iter_concept_instances", "iter_mask_instances", "iter_seeded_instances",
    "resolve_overlaps",
]
