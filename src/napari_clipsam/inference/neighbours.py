"""A click's mask without the concept's other objects it spread onto.

The mask a click gives often takes part of the touching objects of its concept as well
(the demo model's: a sixth of a nucleus click's mask lies on its neighbours). The text
mode already knows those objects: from the concept alone, its mask cut into objects by
the seeds (:func:`.seeds.iter_mask_instances`, guided by the mask's logits). An object
that holds no positive click and that the click's mask covers less than half of is a
neighbour the mask spread onto, and its pixels leave the mask; an object the mask covers
mostly stays (it may be a piece of the clicked object that the text mode cut off, as in
a long rod). The concept's objects are computed once per image and concept (kept with the
image's features) and reused by every later click.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._jobs import Job, Progress
from .instances import _pixels, clicked_object
from .other_concepts import image_logits
from .prompts import inside_box
from .seeds import iter_mask_instances

if TYPE_CHECKING:
    from .predictor import ClipSamPredictor

# An object holding no click leaves the mask when the mask covers less than this part of it.
# Chosen on generated validation scenes (seeds 1,070,000 on; one click at the interior point of
# up to 5 objects per concept): on 6 scenes per kind, nucleus clicks IoU 0.789 -> 0.819 / 0.837 /
# 0.846 and share outside 0.155 -> 0.116 / 0.096 / 0.086 at 0.3 / 0.5 / 0.7, bacterium IoU
# 0.558 -> 0.551 / 0.548 / 0.548; on 10 other scenes per kind at 0.5 / 0.7: nucleus 0.780 ->
# 0.830 / 0.833, outside 0.157 -> 0.092 / 0.087, bacterium 0.607 -> 0.608 / 0.594, spots and
# cell outlines level. The text mode's objects with the other concepts competing did the same.
NEIGHBOUR_COVER = 0.5


def iter_concept_objects(predictor: ClipSamPredictor) -> Job[np.ndarray]:
    """(H, W) int32 labels of the predictor's concept from its text alone (no other concept
    competing; seeds with the default settings); computed once per image and concept."""
    concept, features = predictor.concept, predictor.features
    if concept is None:
        raise ValueError("The concept's objects need a concept: set one with set_concept(...).")
    objects = features.objects.get(concept)
    if objects is None:
        yield Progress("finding the concept's objects", 0, 1)
        points, point_labels = predictor.text_prompts()
        masks, _, low_res = predictor.predict(point_coords=points, point_labels=point_labels)
        objects = yield from iter_mask_instances(predictor, masks[0], logits=image_logits(predictor, low_res[0]))
        features.objects[concept] = objects
    return objects


def without_neighbours(mask: np.ndarray, objects: np.ndarray, points, point_labels,
                       cover: float = NEIGHBOUR_COVER) -> np.ndarray:
    """``mask`` (H, W) bool less the ``objects`` (H, W labels) that hold no positive click
    (XY ``points`` with ``point_labels`` 1) and of which the mask covers less than ``cover``."""
    mask, objects = np.asarray(mask, dtype=bool), np.asarray(objects)
    if objects.shape != mask.shape:
        raise ValueError(f"The objects must have the mask's shape {mask.shape}, got {objects.shape}.")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    count = int(objects.max(initial=0))
    areas = np.bincount(objects.ravel(), minlength=count + 1)
    covered = np.bincount(objects[mask], minlength=count + 1) / np.maximum(areas, 1)
    drop = covered < cover
    xy = _pixels(points[np.asarray(point_labels).reshape(-1) == 1], mask.shape)
    drop[objects[xy[:, 1], xy[:, 0]]] = False  # the clicked objects stay
    drop[0] = False
    return mask & ~drop[objects]


def iter_without_neighbours(predictor: ClipSamPredictor, mask: np.ndarray, points,
                            point_labels) -> Job[np.ndarray]:
    """:func:`without_neighbours` with the concept's objects (:func:`iter_concept_objects`);
    the mask as it is when it is empty or no point is positive."""
    if not mask.any() or not (np.asarray(point_labels) == 1).any():
        return mask
    objects = yield from iter_concept_objects(predictor)
    return without_neighbours(mask, objects, points, point_labels)


def iter_prompted_object(predictor: ClipSamPredictor, mask: np.ndarray, points, point_labels, box,
                         neighbours: bool = True) -> Job[np.ndarray]:
    """The object the user's points and box ask for in SAM's ``mask`` for them.

    Not what lies apart from a positive click (a box keeps it: a box may frame several
    parts of one object), nor past a negative click (:func:`.instances.clicked_object`);
    nothing outside the box; with ``neighbours``, a concept set and positive points and no
    box, not the concept's other objects the mask spread onto (:func:`without_neighbours`).
    """
    if points is not None:
        mask = clicked_object(mask, points, point_labels, keep_unclicked=box is not None)
    if box is not None:  # the object lies in its box, as each object of the instance mode does
        return mask & inside_box(mask.shape, box)
    if points is not None and neighbours and predictor.concept is not None:
        mask = yield from iter_without_neighbours(predictor, mask, points, point_labels)
    return mask


__all__ = ["NEIGHBOUR_COVER", "iter_concept_objects", "iter_prompted_object", "iter_without_neighbours",
           "without_neighbours"]
