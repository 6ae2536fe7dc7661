"""Objects of an outline concept: a mask of thin lines that part the image into regions.

A concept such as "cell membrane" in a packed tissue is a network of lines, and its
objects are the outlines of the regions (cells) the lines enclose; each line between two
cells is half one cell's outline, half the other's (how the generated scenes label them,
and what a membrane stain shows). Seeds cannot find such objects: the network is one
connected region, thin everywhere, and every stretch of it a seed's click decodes to the
whole network (the demo model, 6 selection tissue scenes, instance F1 at IoU 0.5: seeds
0.001, 1879 false objects; connected components 0.004). Here each pixel of the lines goes
to the enclosed region nearest it: 0.38 from the demo model's text mask (where a gap in
its lines merges two cells), 0.98 from the true mask.

A mask is taken for outlines when its gaps are regions rather than background: at least
``MIN_REGIONS`` regions of the mask's complement, none of them holding ``DOMINANT_SHARE``
of it or more (a mask of blobs or rods leaves one background around them), and lines thin
beside the regions (the mask's width at most ``THIN`` times their median diameter).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .basins import object_width
from .instances import remove_small_labels

MIN_REGIONS = 8
DOMINANT_SHARE = 0.75  # a region of the complement this large is background, not a cell
THIN = 0.4
_MIN_REGION_SIDE = 4  # px: gaps smaller than a square this wide are breaks in a line, not regions


def outline_objects(mask: np.ndarray, min_area: int = 0) -> Optional[np.ndarray]:
    """(H, W) int32 labels 1..N of the outlines in a (H, W) bool mask of lines, or None when the
    mask is not one of outlines (see the module's rule).

    Each enclosed region (a part of the complement at least ``_MIN_REGION_SIDE`` px on a
    side's worth of pixels and as wide as the lines) owns the mask's pixels nearer it than any
    other region: its outline. Outlines under ``min_area`` pixels are dropped.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any() or mask.all():
        return None
    regions, count = ndimage.label(~mask)
    if count < MIN_REGIONS:
        return None
    areas = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    if areas.max() >= DOMINANT_SHARE * areas.sum():  # a background: blobs or rods, the common case
        return None
    # The lines' width, never a length: straight fragments of broken lines are elongated
    # single regions, whose length estimate_diameter would give.
    width = object_width(mask)
    kept = np.flatnonzero(areas >= max(_MIN_REGION_SIDE, width) ** 2) + 1
    if len(kept) < MIN_REGIONS:
        return None
    if width > THIN * float(np.median(2 * np.sqrt(areas[kept - 1] / np.pi))):
        return None
    regions = np.where(np.isin(regions, kept), regions, 0)
    # Each line pixel to its nearest region: the index of the nearest region pixel.
    _, (rows, cols) = ndimage.distance_transform_edt(regions == 0, return_indices=True)
    return remove_small_labels(np.where(mask, regions[rows, cols], 0).astype(np.int32), min_area)


__all__ = ["DOMINANT_SHARE", "MIN_REGIONS", "THIN", "outline_objects"]
