"""One object followed through a stack: its mask in one plane prompts SAM in the next.

In the spirit of micro-sam's volumetric annotator: from the plane where the object is
known, each neighbouring plane is prompted with the previous plane's mask as SAM prompts
it best, its bounding box (with a small margin) and its deepest interior point, the
concept still conditioning the encoder. The object is followed plane after plane, up and
down, until it ends: the new mask is empty, shrinks or grows more than ``AREA_CHANGE``
times, or overlaps the previous mask less than ``MIN_OVERLAP`` (it is another object, or
the object moved out). Planes are read one at a time and each plane's embedding is the
predictor's (revisited planes cost nothing, see ``recent_images.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._jobs import Job, Progress
from .instances import interior_point

if TYPE_CHECKING:
    from .predictor import ClipSamPredictor

# The object ends where its mask changes area by more than this factor from one plane to the next.
AREA_CHANGE = 3.0
# ... or overlaps the previous plane's mask less than this (intersection over the smaller area).
MIN_OVERLAP = 0.3
# The box prompt grows by this part of its size on each side: an object grows between planes.
BOX_MARGIN = 0.1


def _prompts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point (1, 2) XY, box (4,) XYXY with a margin) of a mask, for the next plane."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    dy, dx = BOX_MARGIN * (y1 - y0 + 1), BOX_MARGIN * (x1 - x0 + 1)
    height, width = mask.shape
    box = np.array([max(x0 - dx, 0), max(y0 - dy, 0), min(x1 + dx, width - 1), min(y1 + dy, height - 1)])
    return interior_point(mask)[None], box


def _continues(mask: np.ndarray, previous: np.ndarray) -> bool:
    area, before = int(mask.sum()), int(previous.sum())
    if area == 0 or not 1 / AREA_CHANGE <= area / before <= AREA_CHANGE:
        return False
    return int((mask & previous).sum()) / min(area, before) >= MIN_OVERLAP


def iter_propagate(predictor: ClipSamPredictor, stack, plane: int, mask, concept: str | None = None,
                   channel: int | None = None) -> Job[np.ndarray]:
    """Follow the object ``mask`` (H, W) of plane ``plane`` of ``stack`` (Z, H, W[, C]) through the other planes.

    Yields per plane decoded; returns (Z, H, W) bool masks of the object (False where it is not).
    """
    depth = int(stack.shape[0])
    if not 0 <= plane < depth:
        raise ValueError(f"plane {plane} is outside the stack's {depth} planes.")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(stack.shape[1:3]):
        raise ValueError(f"The mask has shape {mask.shape}; the stack's planes are {tuple(stack.shape[1:3])}.")
    if not mask.any():
        raise ValueError("The mask is empty: there is no object to follow.")
    masks = np.zeros((depth, *mask.shape), dtype=bool)
    masks[plane] = mask
    done, total = 0, depth - 1
    for step in (-1, 1):
        previous, index = mask, plane + step
        while 0 <= index < depth:
            yield Progress(f"plane {index + 1}/{depth}", done, total)
            done += 1
            predictor.set_image(np.asarray(stack[index]), channel=channel)
            predictor.set_concept(concept)
            point, box = _prompts(previous)
            found = predictor.predict(point_coords=point, point_labels=[1], box=box)[0][0]
            if not _continues(found, previous):
                break
            masks[index] = previous = found
            index += step
    return masks


__all__ = ["iter_propagate"]
