"""Writing segmentation results into an existing label image without losing anything.

Pure numpy: the napari widget turns the plan into one undoable ``data_setitem``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelWrite:
    """Pixels to set and their new values, in the coordinates of the whole label array.

    Attributes:
        indices: tuple of index arrays, one per axis of the label array.
        values: the new value of each indexed pixel.
        new_labels: the label values this write introduces (sorted).
    """

    indices: tuple[np.ndarray, ...]
    values: np.ndarray
    new_labels: list[int]

    @property
    def empty(self) -> bool:
        return self.indices[0].size == 0


def next_free_label(labels: np.ndarray) -> int:
    """The smallest label value greater than every value in ``labels`` (1 if empty)."""
    return int(labels.max(initial=0)) + 1


def plan_label_write(
    labels: np.ndarray,
    result: np.ndarray,
    *,
    plane: tuple[int, ...] = (),
    instances: bool = False,
    replace: bool = False,
    semantic_value: int | None = None,
) -> LabelWrite:
    """Plan writing a segmentation result into a label array.

    New objects take label values above every value already in ``labels`` (all planes),
    so they never merge with existing objects. Pixels that already carry a label keep
    it unless ``replace`` is set.

    Args:
        labels: the existing label array, e.g. (Y, X) or (Z, Y, X); not modified.
        result: bool mask (semantic) or int labels 1..N (instances) for the part of
            ``labels`` at ``plane``: (Y, X) for one plane, (Z, Y, X) for a whole stack.
        plane: leading indices of ``result`` in ``labels``, e.g. ``(z,)`` for one plane
            of a stack, ``()`` for the whole array.
        instances: give each distinct value of ``result`` its own new label.
        replace: overwrite pixels that already carry a label.
        semantic_value: the label for a semantic mask (e.g. the concept's earlier
            value); default: the next free value.
    """
    if labels.ndim != len(plane) + result.ndim:
        raise ValueError(
            f"A result of shape {result.shape} at plane {plane} does not fit labels of shape {labels.shape}."
        )
    if labels.shape[len(plane) :] != result.shape:
        raise ValueError(f"Result shape {result.shape} differs from the label plane shape {labels.shape[len(plane):]}.")
    existing = np.asarray(labels[plane]) if plane else np.asarray(labels)
    target = result > 0
    if not replace:
        target &= existing == 0
    where = np.nonzero(target)
    first_free = next_free_label(np.asarray(labels))
    if instances:
        source = result[where].astype(np.int64)
        distinct = np.unique(source)
        mapping = {int(value): first_free + i for i, value in enumerate(distinct)}
        values = np.array([mapping[int(v)] for v in distinct], dtype=np.int64)
        new_values = values[np.searchsorted(distinct, source)] if source.size else source
        new_labels = sorted(mapping.values())
    else:
        value = first_free if semantic_value is None else int(semantic_value)
        new_values = np.full(where[0].size, value, dtype=np.int64)
        new_labels = [value] if where[0].size else []
    indices = tuple(np.full(where[0].size, index, dtype=np.intp) for index in plane) + where
    return LabelWrite(indices=indices, values=new_values, new_labels=new_labels)


def check_label_dtype(labels: np.ndarray, write: LabelWrite) -> None:
    """Raise if the new values do not fit the label array's integer type."""
    if write.empty:
        return
    if np.issubdtype(labels.dtype, np.integer):
        limit = np.iinfo(labels.dtype).max
        if int(write.values.max()) > limit:
            raise ValueError(
                f"The new labels go up to {int(write.values.max())}, more than the label layer's "
                f"{labels.dtype} holds ({limit}). Use a layer with a larger integer type."
            )
