"""The manual mode's prompt layers: positive points, negative points and a box, per image.

Coordinates in these layers are napari data coordinates of the image (the layers carry
its scale and translate): (row, col), with the plane's indices in front for stacks.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..inference.layers import corners_to_xyxy, rows_cols_to_xy, spatial, spatial_shape

POSITIVE, NEGATIVE, BOX = "positive", "negative", "box"
_POINT_COLORS = {POSITIVE: "lime", NEGATIVE: "red"}
_POINT_VALUES = {POSITIVE: 1, NEGATIVE: 0}


class PromptLayers:
    """Creates, reads, fills and clears the prompt layers of the chosen image.

    Args:
        viewer: the napari viewer.
        on_edited: connected to each layer's ``events.data`` (and blocked while this
            class edits the layers, so that only the user's edits trigger it).
        on_created: called with each prompt layer when it is made or re-used (key bindings).
    """

    def __init__(self, viewer, on_edited: Callable[[Any], None], on_created: Callable[[Any], None]) -> None:
        self._viewer = viewer
        self._on_edited = on_edited
        self._on_created = on_created
        self._layers: dict[str, Any] = {}
        self.image_layer = None  # the image the layers belong to

    def ensure(self, image_layer) -> None:
        """Create the three layers for ``image_layer``, or re-use those of an earlier session."""
        shape = spatial_shape(image_layer)
        common = dict(ndim=len(shape), scale=spatial(image_layer, image_layer.scale),
                      translate=spatial(image_layer, image_layer.translate))
        for kind, color in _POINT_COLORS.items():
            name = f"{image_layer.name} {kind} points"
            if name not in self._viewer.layers:
                self._viewer.add_points(name=name, size=max(4, min(shape[-2:]) // 60), face_color=color,
                                        border_color="white", **common)
            self._layers[kind] = self._viewer.layers[name]
        name = f"{image_layer.name} box"
        if name not in self._viewer.layers:
            self._viewer.add_shapes(name=name, edge_color="yellow", face_color="transparent", edge_width=2, **common)
        self._layers[BOX] = self._viewer.layers[name]
        self.image_layer = image_layer
        for layer in self._layers.values():
            layer.events.data.connect(self._on_edited)  # once: napari ignores a repeated connection
            self._on_created(layer)

    def get(self, kind: str):
        """The prompt layer of ``kind`` if it is still in the viewer, else None."""
        layer = self._layers.get(kind)
        return layer if layer is not None and layer in self._viewer.layers else None

    def existing(self) -> list:
        return [layer for kind in (POSITIVE, NEGATIVE, BOX) if (layer := self.get(kind)) is not None]

    def activate(self, kind: str) -> None:
        """Select the layer of ``kind``, ready to add points (or draw a box)."""
        layer = self.get(kind)
        if layer is None:
            return
        self._viewer.layers.selection.active = layer
        layer.mode = "add_rectangle" if kind == BOX else "add"

    def toggle(self) -> str:
        """Switch the active layer between positive and negative points; returns the kind now active."""
        active = self._viewer.layers.selection.active
        kind = NEGATIVE if active is not None and active is self.get(POSITIVE) else POSITIVE
        self.activate(kind)
        return kind

    def prompts(self, plane: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(N, 2) XY points, their (N,) labels and an XYXY box, from the layers on ``plane``.

        Only points and boxes on the plane count; of the boxes, the newest with an area.
        """
        rows_cols, values = [], []
        for kind, value in _POINT_VALUES.items():
            layer = self.get(kind)
            if layer is None:
                continue
            for point in np.asarray(layer.data, dtype=np.float64):
                if _on_plane(point, plane):
                    rows_cols.append(point[-2:])
                    values.append(value)
        box = None
        shapes = self.get(BOX)
        for corners in reversed(list(shapes.data) if shapes is not None else []):
            corners = np.asarray(corners, dtype=np.float64)
            if not _on_plane(corners[0], plane):
                continue
            candidate = corners_to_xyxy(corners[:, -2:])
            if candidate[2] > candidate[0] and candidate[3] > candidate[1]:
                box = candidate
                break
        if not rows_cols:
            return None, None, box
        return rows_cols_to_xy(np.asarray(rows_cols)), np.asarray(values, dtype=np.int64), box

    def set(self, plane: tuple[int, ...], points=None, labels=None, box=None) -> None:
        """Replace the prompts (see :meth:`ClipSamWidget.set_prompts`); call :meth:`ensure` first.

        Points and box corners of 2 coordinates are put on ``plane``; longer ones are used as given.
        """
        ndim = len(plane) + 2
        points = _with_plane(points, plane, ndim, "points")
        if labels is None:
            labels = np.ones(len(points), dtype=np.int64)
        labels = np.asarray(labels).reshape(-1)
        if labels.shape != (len(points),) or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"labels must be one 1 (positive) or 0 (negative) per point, got {labels.tolist()}.")
        rectangles = []
        if box is not None:
            corners = np.asarray(box, dtype=np.float64)
            corners = _with_plane(corners.reshape(-1, 2) if corners.ndim == 1 else corners, plane, ndim, "box")
            low, high = corners.min(axis=0), corners.max(axis=0)
            rows, cols = (low[-2], high[-2]), (low[-1], high[-1])
            prefix = list(corners[0, :-2])
            rectangles.append(np.array([[*prefix, r, c] for r, c in
                                        ((rows[0], cols[0]), (rows[0], cols[1]), (rows[1], cols[1]), (rows[1], cols[0]))]))
        for kind, value in _POINT_VALUES.items():
            layer = self.get(kind)
            with layer.events.data.blocker(self._on_edited):
                layer.data = points[labels == value]
        shapes = self.get(BOX)
        with shapes.events.data.blocker(self._on_edited):
            shapes.data = []
            if rectangles:
                shapes.add_rectangles(rectangles)

    def clear(self) -> None:
        """Empty every prompt layer (the layers stay, ready for the next object)."""
        for layer in self.existing():
            with layer.events.data.blocker(self._on_edited):
                layer.data = []


def _on_plane(coordinates: np.ndarray, plane: tuple[int, ...]) -> bool:
    return not plane or tuple(int(round(c)) for c in coordinates[: len(plane)]) == plane


def _with_plane(values, plane: tuple[int, ...], ndim: int, what: str) -> np.ndarray:
    """(N, ndim) coordinates: (N, 2) (row, col) get ``plane`` in front, (N, ndim) stay."""
    values = np.zeros((0, ndim)) if values is None else np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return np.zeros((0, ndim))
    if values.ndim != 2 or values.shape[1] not in {2, ndim}:
        raise ValueError(f"{what} must have shape (N, 2) (row, col) or (N, {ndim}) data coordinates, "
                         f"got {values.shape}.")
    if values.shape[1] == ndim:
        return values
    return np.column_stack([np.tile(np.asarray(plane, dtype=np.float64), (len(values), 1)), values])
