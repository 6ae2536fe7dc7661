"""One-call segmentation of an image by concept."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._model import ClipSamModel
from ._predictor import ClipSamPredictor


def masks_to_instances(mask: np.ndarray, min_area: int = 0) -> np.ndarray:
    """Split a binary mask into connected components with labels 1..N (int32).

    Components smaller than ``min_area`` pixels are dropped; labels stay consecutive.
    """
    components, count = ndimage.label(mask)
    if count == 0:
        return components.astype(np.int32)
    if min_area > 0:
        areas = np.bincount(components.ravel(), minlength=count + 1)
        keep = areas >= min_area
        keep[0] = False
        relabel = np.zeros(count + 1, dtype=np.int32)
        relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        return relabel[components]
    return components.astype(np.int32)


def _interior_point(component: np.ndarray) -> np.ndarray:
    """(1, 2) XY of the pixel deepest inside a component (farthest from its edge)."""
    distance = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([[x, y]], dtype=np.float64)


def refine_instances(predictor: ClipSamPredictor, instances: np.ndarray) -> np.ndarray:
    """Re-segment each instance with SAM, prompted by its box and an interior point.

    The concept stays set, so the encoder stays conditioned. Where refined masks
    overlap, the earlier label keeps the pixel; an instance whose refined mask is
    empty keeps its original pixels.
    """
    refined = np.zeros_like(instances)
    for label, slices in enumerate(ndimage.find_objects(instances), start=1):
        if slices is None:
            continue
        component = instances == label
        rows, cols = slices
        box = np.array([cols.start, rows.start, cols.stop - 1, rows.stop - 1], dtype=np.float64)
        if box[2] <= box[0] or box[3] <= box[1]:
            box = None
        masks, _, _ = predictor.predict(
            point_coords=_interior_point(component),
            point_labels=np.array([1]),
            box=box,
            use_similarity_prompt=False,
        )
        mask = masks[0] if masks[0].any() else component
        refined[mask & (refined == 0)] = label
    return refined


def segment(
    image,
    concept: str,
    model: ClipSamModel | None = None,
    instances: bool = False,
    refine: bool = False,
    min_area: int = 0,
    channel: int | None = None,
    predictor: ClipSamPredictor | None = None,
) -> np.ndarray:
    """Segment ``concept`` in ``image`` from text alone and return a label image.

    Args:
        image: (H, W) or (H, W, C) array, any numeric dtype.
        concept: what to segment, e.g. ``"nucleus"``.
        model: a model from :func:`load_model`; default: ``load_model()`` (published
            weights, downloaded on first use).
        instances: split the mask into connected components with distinct labels.
        refine: with ``instances``, re-prompt SAM at each component (box + point).
        min_area: with ``instances``, drop components smaller than this many pixels.
        channel: channel to use for multi-channel images.
        predictor: re-use a predictor (and its caches) instead of making one.

    Returns:
        (H, W) int32 labels: 0 background, 1 the concept (semantic) or 1..N (instances).
    """
    if predictor is None:
        if model is None:
            from ._model import load_model

            model = load_model()
        predictor = ClipSamPredictor(model)
    predictor.set_image(image, channel=channel)
    predictor.set_concept(concept)
    if predictor.concept is None:
        raise ValueError("segment() needs a non-empty concept, e.g. 'nucleus'.")
    masks, _, _ = predictor.predict()
    mask = masks[0]
    if not instances:
        return mask.astype(np.int32)
    labels = masks_to_instances(mask, min_area=min_area)
    if refine:
        labels = refine_instances(predictor, labels)
        labels = masks_to_instances(labels > 0, min_area=min_area) if min_area else labels
    return labels
