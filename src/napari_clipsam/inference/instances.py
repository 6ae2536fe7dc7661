"""Objects from masks: connected components, small-object removal, per-object refinement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .._jobs import Job, Progress
from .prompts import box_from_mask

if TYPE_CHECKING:
    from .predictor import ClipSamPredictor


def remove_small_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop objects smaller than ``min_area`` pixels and number the rest 1..N in their order (int32).

    Objects are never merged: two touching objects stay two.
    """
    labels = np.asarray(labels)
    count = int(labels.max(initial=0))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= max(min_area, 1)
    keep[0] = False
    relabel = np.zeros(count + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[labels]


def masks_to_instances(mask: np.ndarray, min_area: int = 0) -> np.ndarray:
    """Split a binary mask into connected components with labels 1..N (int32).

    Components smaller than ``min_area`` pixels are dropped; labels stay consecutive.
    """
    components, _ = ndimage.label(mask)
    return remove_small_labels(components, min_area)


def regions_holding(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The connected regions (8-connected) of a (H, W) bool ``mask`` that hold one of the (N, 2) XY ``points``.

    A click means "the object here": a part of its mask that nothing connects to the click
    is not that object (for the demo model, a spot's click mask lost 0.04 of its pixels
    outside the spot so). A mask that holds none of the points is returned as it is.
    """
    mask = np.asarray(mask, dtype=bool)
    xy = _pixels(points, mask.shape)
    regions, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    held = np.unique(regions[xy[:, 1], xy[:, 0]])
    held = held[held > 0]
    return np.isin(regions, held) if held.size else mask


def clicked_object(
    mask: np.ndarray, points: np.ndarray, point_labels: np.ndarray, *, keep_unclicked: bool = False,
) -> np.ndarray:
    """What clicks mean in SAM's (H, W) bool ``mask`` of them: the regions holding a positive click
    (:func:`regions_holding`), and of those only the pixels nearer a positive click than a negative one.

    A negative click on a touching neighbour says "not this one", but the mask of a little-trained
    decoder often still spreads over it. Nearness is measured along the mask (a watershed on a flat
    surface, flooded from every click at once), so touching objects part halfway between their clicks.
    Negative clicks outside the mask change nothing. On 16 generated scenes (``--seed 1070000``), a
    click on a touching nucleus with a negative click on each neighbour: IoU 0.46 -> 0.59 (one click
    alone 0.47), with the mask's share outside the object 0.50 -> 0.34; flooding by the distance
    transform parted less (0.51).

    ``keep_unclicked`` (with a box, which may frame several parts of its object): the regions
    holding no click stay as well, so that only a negative click changes the mask: its region
    is parted from the positive clicks, or dropped when it holds none. Without a positive
    click on the mask, the mask is returned as it is.
    """
    mask = np.asarray(mask, dtype=bool)
    labels = np.asarray(point_labels).reshape(-1)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    held = regions_holding(mask, points[labels == 1])
    positive, negative = (_pixels(points[labels == value], held.shape) for value in (1, 0))
    unclicked = np.zeros_like(mask)
    if keep_unclicked and mask[positive[:, 1], positive[:, 0]].any():
        unclicked = mask & ~regions_holding(mask, points)
    positive, negative = (xy[held[xy[:, 1], xy[:, 0]]] for xy in (positive, negative))
    if not len(positive) or not len(negative):
        return held | unclicked
    from skimage.segmentation import watershed  # a heavy import, needed only here

    rows, cols = ndimage.find_objects(held.astype(np.int8))[0]
    crop = held[rows, cols]
    markers = np.zeros(crop.shape, dtype=np.int32)
    for value, xy in ((2, negative), (1, positive)):  # a pixel clicked both ways stays the object's
        markers[xy[:, 1] - rows.start, xy[:, 0] - cols.start] = value
    kept = np.zeros_like(held)
    kept[rows, cols] = watershed(np.zeros(crop.shape), markers, mask=crop, connectivity=2) == 1  # 8-connected
    return kept | unclicked


def _pixels(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) XY ``points`` rounded to the pixels of a (H, W) image, those outside it dropped (int64)."""
    height, width = shape
    xy = np.rint(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    return xy[(xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)]


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each mask pixel to the nearest background pixel; the border counts as background."""
    # Padding: an object cut by the border gets its seed inside the part that is seen.
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(2,) XY of the pixel deepest inside a non-empty mask: the distance transform's maximum,
    the image border counting as outside; the first in raster order of equally deep ones.

    The click a user would give an object; the quality benchmark and tests click there too.
    """
    if not mask.any():
        raise ValueError("interior_point needs a mask with at least one pixel.")
    rows, cols = ndimage.find_objects(mask.astype(np.int8))[0]
    distance = distance_to_background(mask[rows, cols])  # the crop's edge is outside the mask too
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([cols.start + x, rows.start + y], dtype=np.float64)


def iter_refine_instances(predictor: ClipSamPredictor, instances: np.ndarray) -> Job[np.ndarray]:
    """Re-segment each object with SAM, prompted by its box and an interior point; yields per object.

    The concept stays set, so the encoder stays conditioned. Where refined masks
    overlap, the earlier label keeps the pixel; an object whose refined mask is empty
    keeps its original pixels. Returns labels of the same values (int32).
    """
    refined = np.zeros(instances.shape, dtype=np.int32)
    objects = ndimage.find_objects(instances)
    for label, slices in enumerate(objects, start=1):
        yield Progress("refining objects", label - 1, len(objects))
        if slices is None:
            continue
        component = instances == label
        masks, _, _ = predictor.predict(
            point_coords=interior_point(component)[None], point_labels=np.array([1]), box=box_from_mask(component),
            use_similarity_prompt=False,
        )
        mask = masks[0] if masks[0].any() else component
        refined[mask & (refined == 0)] = label
    return refined


def refine_instances(predictor: ClipSamPredictor, instances: np.ndarray) -> np.ndarray:
    """:func:`iter_refine_instances` run to the end."""
    from .._jobs import run

    return run(iter_refine_instances(predictor, instances))


__all__ = ["clicked_object", "distance_to_background", "interior_point", "iter_refine_instances", "masks_to_instances", "refine_instances",
           "regions_holding", "remove_small_labels"]
