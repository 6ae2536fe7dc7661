"""napari layers in, napari layer data out: the segmentation pipeline for scripts that use napari.

Duck-typed on the layer (``data``, ``rgb``, ``scale``, ``translate``, ``name``), so this
module imports no napari and no Qt. Prompts are napari data coordinates of the image
layer, (row, col) as a script reads them from a Points or Shapes layer; the pipeline's
XY frame is made here, in one place, for the dock widget and for :func:`segment_layer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import pipeline
from .pipeline import segment
from .seeds import DEFAULT_SCORE_THRESHOLD

if TYPE_CHECKING:
    from ..model.clipsam import ClipSamModel
    from .predictor import ClipSamPredictor

# What napari_clipsam writes into a Labels layer's metadata: concept -> its label value
# in semantic (non-instance) writes, so that later runs of a concept reuse its value.
CONCEPTS_METADATA_KEY = "clipsam_concepts"


def spatial_shape(layer) -> tuple[int, ...]:
    """The shape of an image layer without its channel axis (RGB layers): the shape its labels have."""
    shape = tuple(layer.data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def spatial(layer, values) -> tuple[float, ...]:
    """``values`` (the layer's scale or translate) for the axes of :func:`spatial_shape`."""
    return tuple(float(value) for value in values)[: len(spatial_shape(layer))]


def leading_ndim(layer) -> int:
    """How many axes (z, t, ...) come before the layer's 2-D planes."""
    return pipeline.leading_ndim(tuple(layer.data.shape), bool(getattr(layer, "rgb", False)))


def rows_cols_to_xy(points) -> np.ndarray | None:
    """(N, 2) XY pixels (the pipeline's frame) from (N, 2) napari (row, col) data coordinates."""
    if points is None:
        return None
    points = np.asarray(points, dtype=np.float64)
    if points.size == 0:
        return None
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2): (row, col) per point, got {points.shape}.")
    return points[:, ::-1].copy()


def corners_to_xyxy(corners) -> np.ndarray | None:
    """A (4,) XYXY box from napari (row, col) corners: two opposite ones, or a Shapes rectangle's four.

    ``[row0, col0, row1, col1]`` is read as two corners too.
    """
    if corners is None:
        return None
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 2)
    if len(corners) < 2:
        raise ValueError(f"A box needs at least two (row, col) corners, got {len(corners)}.")
    rows, cols = corners[:, 0], corners[:, 1]
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()])


def segment_layer(
    image_layer,
    concept: str | None,
    model: ClipSamModel | None = None,
    *,
    points=None,
    point_labels=None,
    box=None,
    instances: bool = False,
    refine: bool = False,
    min_area: int = 0,
    channel: int | None = None,
    image_size: int | None = None,
    predictor: ClipSamPredictor | None = None,
    name: str | None = None,
    instance_method: str = "seeds",
    diameter: float | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """Segment ``concept`` in a napari image layer; returns a napari ``LayerDataTuple`` of labels.

    A stack (z, t, ... before the 2-D planes) is segmented plane by plane with the same
    prompts, objects distinct across planes; RGB layers are read as colour images. The
    labels carry the image's scale and translate, so they overlay it in the viewer:
    ``viewer.add_labels(data, **kwargs)``, or return the tuple from a napari function.

    Args:
        image_layer: a napari Image layer, or any object with ``data``, ``rgb``, ``scale``,
            ``translate`` and ``name``; a multiscale layer is read at full resolution.
        concept: what to segment, e.g. ``"nucleus"``; None for plain SAM with prompts.
        model: from :func:`napari_clipsam.load_model`; default ``load_model()``.
        points: (N, 2) napari data coordinates (row, col) of the image's planes.
        point_labels: (N,) 1 positive, 0 negative (default all 1).
        box: (row, col) corners of a rectangle: two opposite ones or a Shapes rectangle's four.
        instances, refine, min_area, channel, image_size, predictor, instance_method, diameter,
            score_threshold: as for :func:`napari_clipsam.segment`.
        name: the labels layer's name; default ``"<image name> <concept>"``.

    Returns:
        ``(labels, {"name", "scale", "translate", "metadata"}, "labels")``: int32 labels of
        the image's spatial shape, 0 background.
    """
    data = image_layer.data
    if getattr(image_layer, "multiscale", False):
        data = data[0]
    rgb = bool(getattr(image_layer, "rgb", False))
    labels = segment(
        data, concept, model, instances=instances, refine=refine, min_area=min_area, channel=channel,
        predictor=predictor, points=rows_cols_to_xy(points), point_labels=point_labels,
        box=corners_to_xyxy(box), image_size=image_size, rgb=rgb, instance_method=instance_method,
        diameter=diameter, score_threshold=score_threshold,
    )
    metadata: dict[str, Any] = {}
    if concept is not None and not instances:
        metadata[CONCEPTS_METADATA_KEY] = {concept: 1}
    layer_name = name or f"{getattr(image_layer, 'name', 'image')} {concept or 'objects'}"
    kwargs = {
        "name": layer_name,
        "scale": spatial(image_layer, image_layer.scale),
        "translate": spatial(image_layer, image_layer.translate),
        "metadata": metadata,
    }
    return labels, kwargs, "labels"


__all__ = ["corners_to_xyxy", "rows_cols_to_xy", "segment_layer", "spatial", "spatial_shape"]
