"""A concept's mask into objects: seeds where objects are, basins where touching objects meet.

Seeds are the peaks of the mask's distance transform (:func:`find_seeds`). Each seed owns a basin: the part of the concept's mask that the watershed of its distance
transform gives that seed (touching round objects meet where the mask narrows). Given
the logits the mask was thresholded from, both follow :func:`depth_field` instead, the
distance transform averaged over the logits' levels: a decoder's mask of small touching
objects fills the necks between them, its logits still dip there (the demo model's
touching nuclei, 8 "nuclei" validation scenes: instance F1 0.72 on the mask alone, 0.85
with its logits). SAM's
masks of the seeds say which seeds are one object: a seed whose mask repeats a better
one (IoU >= ``DUPLICATE_IOU``, as SAM's automatic mask generator drops repeated masks)
joins that object, so an elongated or irregular object with several seeds stays whole.
Each pixel of the concept's mask then goes to the one object whose masks cover it; where
several objects' masks overlap, or none covers it, to the object owning its basin.

So a decoder that returns each object exactly gives exactly the objects, and one whose
masks spread into their neighbours (a small or little-trained model) still parts touching
objects along the mask's narrowing. Measured on 8 generated "nuclei" scenes (674 nuclei,
most touching), instance F1 at IoU 0.5 with the demo model's text-only mask: clicks painted
best first 0.43; basins joined by masks 0.70; with a true concept mask 0.49 and 0.96.

The seeds' masks come from SAM (:mod:`.seeds` decodes each seed as a click); here they
are crops: ``(y0, x0, bool crop)`` of a (H, W) mask (:func:`crop_mask`), or None.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .instances import distance_to_background, remove_small_labels

# Two seeds' masks this alike are one object's (the IoU SAM's automatic mask generator
# removes duplicates at is 0.7; 0.8 merged fewer neighbours of the demo model's spreading masks).
DUPLICATE_IOU = 0.8

# (y0, x0, crop): a mask as its bounding box's top-left corner and the bool crop there.
Crop = tuple[int, int, np.ndarray]

# Seeds closer than this part of the diameter, in one connected region, are one object's.
# On generated nuclei (true masks, a perfect decoder) spacings of 0.5, 0.35 and 0.25
# found 80, 94 and 97 % of the objects, with 0.8, 0.95 and 1.0 seeds per object.
SEED_SPACING = 0.25
# Peaks lower than this part of the expected radius lie on thin bridges and edges.
_MIN_PEAK = 0.2
# Objects are elongated, and their diameter is their length (:func:`object_length`), when the
# major axis of their separate convex regions is at least this many times their minor axis
# (median). Generated nuclei, elliptic, have a median of 1.2; rods (bacteria) 2 to 6. Demo model,
# 10 selection scenes per kind (seeds 1,070,000 on), instance F1 at IoU 0.5 from text alone, the
# width as diameter -> the length: bacteria 0.22 -> 0.46 ("bacteria" scenes), 0.44 -> 0.58
# ("mixed"; seeds a width apart along a rod gave it several objects); nuclei 0.869 -> 0.877.
ELONGATION = 1.5
_SINGLE_SOLIDITY = 0.9
_MIN_SHAPE_AREA = 10
_MIN_SHAPES = 3
_MAX_SHAPES = 256
# Logit levels of :func:`depth_field`.
DEPTH_LEVELS = 12
# :func:`depth_field` smooths the logits by this part of the object diameter (Gaussian sigma)
# before it thresholds them: a refined mask's logits (``ClipSamConfig.mask_refiner``) follow the
# image's texture inside large objects, and their every dip would part an object. Demo model,
# 20 selection "nuclei" scenes, instance F1 at IoU 0.5: 0 0.864 (351 false objects), 0.04 0.886,
# 0.06 0.891, 0.08 0.893 (174), 0.1 0.898, 0.13 0.878 (small nuclei start to merge); a fixed
# sigma of 1 px 0.886 (large nuclei still split). 0.08: inside the plateau, away from its edge.
LOGIT_SMOOTHING = 0.08


def check_mask(mask) -> np.ndarray:
    """``mask`` as a (H, W) bool array; other shapes refused."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"The mask must be 2-D (H, W), got shape {mask.shape}.")
    return mask


def estimate_diameter(mask) -> float:
    """The typical object diameter in pixels in a (H, W) bool mask (an elongated object's
    length); 0.0 for an empty mask.

    The objects' width (:func:`object_width`); where the mask's separate convex regions
    (single objects) are elongated, rods such as bacteria, their length instead
    (:func:`object_length`): seeds a width apart along a rod would each make an object of
    their own wherever the decoder's masks of one rod differ.
    """
    mask = check_mask(mask)
    return max(object_width(mask), object_length(mask))  # both 0.0 for an empty mask


def object_width(mask) -> float:
    """The typical width in pixels of the objects (or lines) of a (H, W) bool mask; 0.0 for
    an empty mask.

    Twice the median height of the distance transform's peaks: each object, touching
    others or not, has a peak at its centre as high as its inscribed radius.
    """
    mask = check_mask(mask)
    if not mask.any():
        return 0.0
    distance = distance_to_background(mask)
    # Peaks are found on a lightly smoothed copy: ragged outlines make flat, low ridges
    # whose every pixel would otherwise count as a peak.
    smooth = ndimage.gaussian_filter(distance, 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=3)) & mask & (distance >= 1)
    heights = distance[peaks] if peaks.any() else distance[mask]
    return float(2 * np.median(heights))


def object_length(mask) -> float:
    """The median length in pixels of the elongated single objects of a (H, W) bool mask; 0.0
    when its objects are not elongated or too few stand alone to tell.

    Single objects are the connected regions that are convex (solidity, the area over the
    convex hull's, at least ``_SINGLE_SOLIDITY``; touching objects make concave regions) of
    at least ``_MIN_SHAPE_AREA`` pixels; at least ``_MIN_SHAPES`` of them, at most
    ``_MAX_SHAPES`` read (evenly over the regions). Elongated: the median ratio of their major
    to minor axis (of the ellipse with the same second moments) is at least ``ELONGATION``.
    A length is the longest distance across the region (its largest Feret diameter).
    """
    from skimage.measure import regionprops  # a heavy import, needed only here

    regions, count = ndimage.label(check_mask(mask), structure=np.ones((3, 3)))
    if count < _MIN_SHAPES:
        return 0.0
    areas = np.bincount(regions.ravel(), minlength=count + 1)
    candidates = np.flatnonzero(areas >= _MIN_SHAPE_AREA)
    candidates = candidates[candidates > 0]
    if len(candidates) > _MAX_SHAPES:
        candidates = candidates[np.linspace(0, len(candidates) - 1, _MAX_SHAPES).round().astype(np.int64)]
    shapes = [(region.feret_diameter_max, region.axis_major_length, region.axis_minor_length)
              for region in regionprops(np.where(np.isin(regions, candidates), regions, 0))
              if region.solidity >= _SINGLE_SOLIDITY]
    if len(shapes) < _MIN_SHAPES:
        return 0.0
    length, major, minor = np.array(shapes, dtype=np.float64).T
    if np.median(major / np.maximum(minor, 1.0)) < ELONGATION:
        return 0.0
    return float(np.median(length))


def depth_field(mask, logits=None, levels: int = DEPTH_LEVELS, smoothing: float = 0.0) -> np.ndarray:
    """How deep each pixel lies in a (H, W) bool mask: (H, W) float64, 0 outside it.

    Without ``logits``, the distance transform. With the (H, W) logits the mask was
    thresholded from, the mean of the distance transforms of the mask and of its parts
    where the logits, smoothed by a Gaussian of sigma ``smoothing`` px, exceed ``levels - 1``
    thresholds evenly spaced from 0 to the mask's highest logit: two touching objects whose
    logits dip where they meet are two peaks even where the mask does not narrow between
    them (a decoder's mask fills the neck). :mod:`.seeds` smooths by ``LOGIT_SMOOTHING`` x
    the object diameter.
    """
    mask = check_mask(mask)
    if levels < 1:
        raise ValueError(f"levels must be 1 or more, got {levels}.")
    field = distance_to_background(mask).astype(np.float64)
    if logits is None or not mask.any():
        return field
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != mask.shape:
        raise ValueError(f"The logits must have the mask's shape {mask.shape}, got {logits.shape}.")
    if smoothing < 0:
        raise ValueError(f"smoothing is a Gaussian sigma in pixels, 0 or more; got {smoothing}.")
    if smoothing > 0:
        logits = ndimage.gaussian_filter(logits, smoothing)
    top = float(logits[mask].max())
    if top <= 0:  # no level above the mask's own
        return field
    for threshold in np.linspace(0.0, top, levels, endpoint=False)[1:]:
        field += distance_to_background(mask & (logits > threshold))
    return field / levels


def find_seeds(mask, diameter: float | None = None, field: np.ndarray | None = None) -> np.ndarray:
    """Seeds for the objects in a (H, W) bool mask: (N, 2) XY float64 pixels, in raster order.

    Seeds are the peaks of the distance transform, at least ``diameter / 4`` apart within
    a connected region, and every region has at least one (its deepest pixel). More
    seeds than objects is harmless (a seed whose mask repeats a better one's joins that
    object, :func:`group_seeds`); a missing seed is a missing object, hence the close spacing:
    a small object touching a large one has its peak less than half a diameter away.

    Args:
        diameter: expected object diameter in pixels; None: :func:`estimate_diameter`.
        field: (H, W) heights whose peaks are the seeds (:func:`depth_field`); None: the
            distance transform. A peak still needs a distance to the background of
            a tenth of the diameter.
    """
    mask = check_mask(mask)
    if not mask.any():
        return np.zeros((0, 2), dtype=np.float64)
    if diameter is None:
        diameter = estimate_diameter(mask)
    if not (np.isfinite(diameter) and diameter > 0):
        raise ValueError(f"diameter must be a positive number of pixels, got {diameter}.")
    # Not smoothed: on generated nuclei smoothing by a tenth of the diameter lost 3 to 8 %
    # of the objects (a small object's peak merges into its large neighbour's).
    distance = distance_to_background(mask)
    height = distance
    if field is not None:
        field = np.asarray(field, dtype=np.float64)
        if field.shape != mask.shape:
            raise ValueError(f"The field must have the mask's shape {mask.shape}, got {field.shape}.")
        height = np.where(mask, field, 0.0)
    spacing = max(SEED_SPACING * diameter, 1.0)
    # A square window keeps the filter separable (fast for large diameters); the
    # greedy pass below enforces the round spacing.
    window = 2 * int(np.ceil(spacing)) + 1
    peaks = (height == ndimage.maximum_filter(height, size=window)) & mask
    peaks &= distance >= _MIN_PEAK * diameter / 2
    regions, count = ndimage.label(mask)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-height[rows, cols], kind="stable")  # highest first; ties in raster order
    kept: dict[int, list[tuple[int, int]]] = {}
    for row, col in zip(rows[order], cols[order]):
        others = kept.setdefault(int(regions[row, col]), [])
        if all((row - r) ** 2 + (col - c) ** 2 >= spacing**2 for r, c in others):
            others.append((int(row), int(col)))
    # Every region gets an object, however small or thin.
    deepest = ndimage.maximum_position(height, regions, np.arange(1, count + 1))
    for region, (row, col) in enumerate(deepest, start=1):
        if not kept.get(region):
            kept[region] = [(int(row), int(col))]
    seeds = sorted(point for points in kept.values() for point in points)
    return np.array([[col, row] for row, col in seeds], dtype=np.float64).reshape(-1, 2)


def crop_mask(mask: np.ndarray) -> Crop | None:
    """A (H, W) bool mask as (y0, x0, crop of its bounding box); None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return int(y0), int(x0), mask[y0:y1, x0:x1].copy()


def seed_basins(mask: np.ndarray, seeds: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """(H, W) int32: 1 + the index of the seed whose watershed basin holds the pixel, 0 outside ``mask``.

    ``seeds`` (N, 2) XY pixels inside ``mask``; ``distance`` its distance transform or
    :func:`depth_field`. Parts of the mask with no seed are 0.
    """
    from skimage.segmentation import watershed  # a heavy import, needed only here

    markers = np.zeros(mask.shape, dtype=np.int32)
    cols, rows = np.round(seeds).astype(np.int64).T
    markers[rows, cols] = np.arange(1, len(seeds) + 1, dtype=np.int32)
    markers[~mask] = 0
    return watershed(-distance, markers, mask=mask).astype(np.int32, copy=False)


def _box(crop: Crop) -> tuple[int, int, int, int]:
    y0, x0, pixels = crop
    return y0, x0, y0 + pixels.shape[0], x0 + pixels.shape[1]


def crop_iou(first: Crop, second: Crop) -> float:
    """IoU of two cropped masks of one image."""
    (ay0, ax0, ay1, ax1), (by0, bx0, by1, bx1) = _box(first), _box(second)
    y0, x0, y1, x1 = max(ay0, by0), max(ax0, bx0), min(ay1, by1), min(ax1, bx1)
    if y0 >= y1 or x0 >= x1:
        return 0.0
    a = first[2][y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
    b = second[2][y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    both = int(np.count_nonzero(a & b))
    return both / (int(first[2].sum()) + int(second[2].sum()) - both) if both else 0.0


def group_seeds(crops: list[Optional[Crop]], scores: np.ndarray, score_threshold: float,
                duplicate_iou: float = DUPLICATE_IOU) -> np.ndarray:
    """(N,) int32: each seed's object, 1.. in order of score (best first), 0 for none.

    Best score first, a seed whose mask scores at least ``score_threshold`` and is not
    yet taken starts an object; every untaken seed whose mask repeats its mask joins it,
    whatever its own score. Seeds without a mask (None) belong to no object.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    owner = np.zeros(len(crops), dtype=np.int32)
    boxes = np.array([_box(crop) if crop is not None else (0, 0, 0, 0) for crop in crops], dtype=np.int64).reshape(-1, 4)
    has_mask = np.array([crop is not None for crop in crops], dtype=bool)
    count = 0
    for k in np.argsort(-scores, kind="stable"):
        if owner[k] or not has_mask[k] or scores[k] < score_threshold:
            continue
        count += 1
        owner[k] = count
        y0, x0, y1, x1 = boxes[k]
        near = np.flatnonzero(has_mask & (owner == 0) & (boxes[:, 0] < y1) & (boxes[:, 2] > y0)
                              & (boxes[:, 1] < x1) & (boxes[:, 3] > x0))
        for j in near:
            if crop_iou(crops[k], crops[j]) >= duplicate_iou:
                owner[j] = count
    return owner


def assemble(mask: np.ndarray, basins: np.ndarray, crops: list[Optional[Crop]], owner: np.ndarray,
             min_area: int = 0) -> np.ndarray:
    """(H, W) int32 labels 1..M (in the objects' order) from the seeds' objects (:func:`group_seeds`).

    A pixel of ``mask`` covered by the masks of exactly one object is that object's;
    one covered by several objects' masks, or by none, is the object owning its basin.
    Objects of fewer than ``min_area`` pixels are dropped.
    """
    owner = np.asarray(owner, dtype=np.int32)
    objects = int(owner.max()) if len(owner) else 0
    territory = np.concatenate([[0], owner])[basins]
    covers = np.zeros(mask.shape, dtype=np.int32)  # how many objects' masks cover a pixel
    first = np.zeros(mask.shape, dtype=np.int32)  # the one object, where only one does
    for number in range(1, objects + 1):
        members = [crops[k] for k in np.flatnonzero(owner == number)]
        y0, x0 = min(c[0] for c in members), min(c[1] for c in members)
        y1, x1 = max(_box(c)[2] for c in members), max(_box(c)[3] for c in members)
        union = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for cy, cx, pixels in members:
            union[cy - y0 : cy - y0 + pixels.shape[0], cx - x0 : cx - x0 + pixels.shape[1]] |= pixels
        covers[y0:y1, x0:x1] += union
        first[y0:y1, x0:x1][union & (first[y0:y1, x0:x1] == 0)] = number
    labels = np.where(covers == 1, first, territory)
    labels[~mask] = 0
    return remove_small_labels(labels, min_area)  # numbered 1..M in the objects' order


__all__ = [
    "DEPTH_LEVELS", "DUPLICATE_IOU", "ELONGATION", "SEED_SPACING", "assemble", "check_mask", "crop_iou", "crop_mask",
    "depth_field", "distance_to_background", "estimate_diameter", "find_seeds", "group_seeds", "object_length",
    "object_width", "seed_basins",
]
