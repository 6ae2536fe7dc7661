"""The part of an image layer's plane that napari's canvas shows (for "Visible region only")."""

from __future__ import annotations

import numpy as np

from ..inference.layers import spatial_shape


def visible_region(viewer, layer) -> tuple[slice, slice] | None:
    """(rows, cols) slices of ``layer``'s level-0 plane that the 2-D canvas shows; None when it shows all of it.

    From the camera (its centre and zoom, screen pixels per world unit) and the canvas's
    size, through the layer's world-to-data transform; a rotated layer gets the
    rectangle around the visible part.

    Raises:
        ValueError: the canvas shows none of the image.
    """
    camera = _camera(viewer)
    half = np.array(_canvas_size(viewer), dtype=float) / float(camera.zoom) / 2
    centre = np.asarray(camera.center, dtype=float)[-2:]
    displayed = list(viewer.dims.displayed)[-2:]
    corners = []
    for row_sign in (-1, 1):
        for col_sign in (-1, 1):
            point = np.asarray(viewer.dims.point, dtype=float).copy()
            point[displayed] = centre + half * (row_sign, col_sign)
            corners.append(np.asarray(layer.world_to_data(point), dtype=float)[-2:])
    corners = np.array(corners)
    plane = spatial_shape(layer)[-2:]
    sides = []
    for axis in (0, 1):
        low = int(np.clip(np.floor(corners[:, axis].min() + 0.5), 0, plane[axis]))
        high = int(np.clip(np.ceil(corners[:, axis].max() + 0.5), 0, plane[axis]))
        if high <= low:
            raise ValueError("The canvas shows none of the image: pan or zoom out to it, or uncheck "
                             "'Visible region only'.")
        sides.append(slice(low, high))
    if all(side.start == 0 and side.stop == size for side, size in zip(sides, plane)):
        return None
    return sides[0], sides[1]


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _canvas_size(viewer) -> tuple[float, float]:
    """(height, width) in screen pixels of the canvas's view (one grid cell in grid mode)."""
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None and hasattr(canvas, "viewbox_size"):
        return tuple(canvas.viewbox_size(viewer.layers))
    return tuple(viewer._canvas_size)  # napari before 0.9
