"""One label per 3-D object: each plane's objects linked to the previous plane's by overlap.

A stack is segmented plane by plane (:func:`~napari_clipsam.inference.pipeline.iter_segment_stack`);
with instances, an object of plane ``k`` takes the label of the object of plane ``k - 1``
it overlaps most, when their intersection over union is at least ``LINK_IOU``. Pairs are
taken best first and each object links at most once, so an object that splits in two
keeps its label in the larger overlap and the other part gets a new one; an object with
no partner (it starts in this plane) gets a new label. Only two planes are ever held, so
memory does not grow with the stack. Planes are linked along the last leading axis (z in
a (Z, Y, X) or (T, Z, Y, X) stack, t in a (T, Y, X) series); in a (T, Z, Y, X) stack each
time point's 3-D objects are then linked to the previous time point's the same way, by
their 3-D overlap (:func:`link_in_place` over the volume, one z-plane at a time).
"""

from __future__ import annotations

import numpy as np

# Objects of consecutive planes overlapping at least this much (IoU) are one object. A
# nucleus moves or changes outline a little between planes; 0.3 links a disc shifted by a
# third of its radius and never links two neighbours that merely touch.
LINK_IOU = 0.3


def _overlaps(plane: np.ndarray, previous: np.ndarray) -> dict[tuple[int, int], int]:
    """Pixels shared by each (object of ``plane``, object of ``previous``) pair."""
    both = (plane > 0) & (previous > 0)
    pairs, counts = np.unique(np.stack([plane[both], previous[both]]), axis=1, return_counts=True)
    return {(int(a), int(b)): int(n) for a, b, n in zip(pairs[0], pairs[1], counts)}


def _areas(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts)}


def _add(total: dict, part: dict) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value


def _links(overlaps: dict, areas: dict[int, int], previous_areas: dict[int, int], min_iou: float) -> dict[int, int]:
    """Object of this plane -> object of the previous plane it continues: best IoU first, each once."""
    scored = sorted(((n / (areas[a] + previous_areas[b] - n), a, b) for (a, b), n in overlaps.items()),
                    key=lambda item: -item[0])
    links, taken = {}, set()
    for iou, current, previous in scored:
        if iou < min_iou:
            break
        if current not in links and previous not in taken:
            links[current] = previous
            taken.add(previous)
    return links


def _lookup(values, links: dict[int, int], next_label: int) -> tuple[np.ndarray, int, int]:
    """(table indexed by value - low, low, next label): linked values -> their partner, others -> new labels."""
    values = sorted(values)
    low = values[0] if values else 0
    table = np.zeros((values[-1] - low + 1) if values else 1, dtype=np.int64)
    for value in values:
        if value in links:
            table[value - low] = links[value]
        else:
            table[value - low] = next_label
            next_label += 1
    return table, low, next_label


def _apply(labels: np.ndarray, table: np.ndarray, low: int) -> np.ndarray:
    out = np.zeros(labels.shape, dtype=np.int32)
    inside = labels > 0
    out[inside] = table[labels[inside] - low]
    return out


def link_to_previous(plane: np.ndarray, previous: np.ndarray | None, next_label: int,
                     min_iou: float = LINK_IOU) -> tuple[np.ndarray, int]:
    """``plane``'s objects (labels of one plane) relabelled to continue ``previous``'s.

    Args:
        plane: (H, W) int labels of this plane (0 background).
        previous: (H, W) int labels of the previous plane, already linked (None: the first plane).
        next_label: the first label no object has yet.

    Returns:
        (the relabelled plane as int32, the next unused label).
    """
    plane = np.asarray(plane)
    areas = _areas(plane)
    links = {}
    if previous is not None and areas:
        previous = np.asarray(previous)
        links = _links(_overlaps(plane, previous), areas, _areas(previous), min_iou)
    table, low, next_label = _lookup(areas, links, next_label)
    return _apply(plane, table, low), next_label


def link_in_place(plane, previous, next_label: int, rows: int = 1024, min_iou: float = LINK_IOU) -> int:
    """:func:`link_to_previous` for planes too large for memory (zarr, or views of them), ``rows`` rows at a time.

    ``plane`` holds objects numbered from ``next_label`` on (the tiled pipeline's); they
    are rewritten in place to continue ``previous``'s (None: renumbered from ``next_label``).
    Returns the next unused label.
    """
    height = plane.shape[0]
    overlaps, areas, previous_areas = {}, {}, {}
    for r0 in range(0, height, rows):
        block = np.asarray(plane[r0 : r0 + rows])
        _add(areas, _areas(block))
        if previous is not None:
            before = np.asarray(previous[r0 : r0 + rows])
            _add(overlaps, _overlaps(block, before))
            _add(previous_areas, _areas(before))
    links = _links(overlaps, areas, previous_areas, min_iou) if previous is not None else {}
    table, low, after = _lookup(areas, links, next_label)
    for r0 in range(0, height, rows):
        block = np.asarray(plane[r0 : r0 + rows])
        plane[r0 : r0 + rows] = _apply(block, table, low)
    return after


__all__ = ["LINK_IOU", "link_in_place", "link_to_previous"]
