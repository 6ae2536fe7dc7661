"""One label per 3-D object: each plane's objects linked to the previous plane's by overlap.

A stack is segmented plane by plane (:func:`~napari_clipsam.inference.pipeline.iter_segment_stack`);
with instances, an object of plane ``k`` takes the label of the object of plane ``k - 1``
it overlaps most, when their intersection over union is at least ``LINK_IOU``. Pairs are
taken best first and each object links at most once, so an object that splits in two
keeps its label in the larger overlap and the other part gets a new one; an object with
no partner (it starts in this plane) gets a new label. Only two planes are ever held, so
memory does not grow with the stack. Planes are linked along the last leading axis (z in
a (Z, Y, X) or (T, Z, Y, X) stack, t in a (T, Y, X) series); a new position on an
earlier axis (another time point of a (T, Z, Y, X) stack) starts afresh.
"""

from __future__ import annotations

import numpy as np

# Objects of consecutive planes overlapping at least this much (IoU) are one object. A
# nucleus moves or changes outline a little between planes; 0.3 links a disc shifted by a
# third of its radius and never links two neighbours that merely touch.
LINK_IOU = 0.3


def link_to_previous(plane: np.ndarray, previous: np.ndarray | None, next_label: int,
                     min_iou: float = LINK_IOU) -> tuple[np.ndarray, int]:
    """``plane``'s objects (labels 1..N of one plane) relabelled to continue ``previous``'s.

    Args:
        plane: (H, W) int labels of this plane (0 background).
        previous: (H, W) int labels of the previous plane, already linked (None: the first plane).
        next_label: the first label no object has yet.

    Returns:
        (the relabelled plane as int32, the next unused label).
    """
    plane = np.asarray(plane)
    values = np.unique(plane[plane > 0])
    mapping = {}
    if previous is not None and len(values):
        previous = np.asarray(previous)
        both = (plane > 0) & (previous > 0)
        pairs, inter = np.unique(np.stack([plane[both], previous[both]]), axis=1, return_counts=True)
        if len(inter):
            cur_values, cur_areas = np.unique(plane[plane > 0], return_counts=True)
            prev_values, prev_areas = np.unique(previous[previous > 0], return_counts=True)
            area_cur = cur_areas[np.searchsorted(cur_values, pairs[0])]
            area_prev = prev_areas[np.searchsorted(prev_values, pairs[1])]
            iou = inter / (area_cur + area_prev - inter)
            taken = set()
            for k in np.argsort(-iou, kind="stable"):
                if iou[k] < min_iou:
                    break
                cur, prev = int(pairs[0, k]), int(pairs[1, k])
                if cur in mapping or prev in taken:
                    continue
                mapping[cur] = prev
                taken.add(prev)
    lookup = np.zeros(int(values.max(initial=0)) + 1, dtype=np.int64)
    for value in values:
        value = int(value)
        if value in mapping:
            lookup[value] = mapping[value]
        else:
            lookup[value] = next_label
            next_label += 1
    return lookup[plane].astype(np.int32), next_label


__all__ = ["LINK_IOU", "link_to_previous"]
