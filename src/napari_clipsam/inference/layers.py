"""napari layers in, napari layer data out: the segmentation pipeline for scripts that use napari.

Duck-typed on the layer (``data``, ``rgb``, ``scale``, ``translate``, ``name``), so this
module imports no napari and no Qt. Prompts are napari data coordinates of the image
layer, (row, col) as a script reads them from a Points or Shapes layer; the pipeline's
XY frame is made here, in one place, for the dock widget and for :func:`segment_layer`.

Large and multiscale (pyramid) layers: :class:`LayerPlane` reads one plane of one level
region by region, and :func:`iter_segment_plane` segments it through the tiled pipeline,
with prompts given and labels returned in the layer's data coordinates (level 0). A
coarser level maps to level 0 as napari draws it: level pixel ``i`` sits at level-0
coordinate ``i * factor`` (``factor`` = level-0 size / level size, napari's
``downsample_factors``), so labels come back nearest-neighbour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .._jobs import Job, run
from . import pipeline
from .pipeline import SegmentOptions, SegmentResult, iter_segment, iter_segment_stack, predictor_for
from .rescale import MAX_DIAMETER_PX, check_diameter_unit, diameter_unused, read_length, scale_for, scale_points
from .seeds import DEFAULT_SCORE_THRESHOLD
from .tiling import AUTO, tiles_for, tiling_for

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
    level: int = 0,
    diameter_unit: str = "px",
    tile_shape=AUTO,
    halo=AUTO,
    scale="auto",
    link_planes: bool = True,
    other_concepts="auto",
    augment="auto",
) -> tuple[np.ndarray, dict[str, Any], str]:
    """Segment ``concept`` in a napari image layer; returns a napari ``LayerDataTuple`` of labels.

    A stack (z, t, ... before the 2-D planes) is segmented plane by plane with the same
    prompts, objects distinct across planes; RGB layers are read as colour images. The
    labels carry the image's scale and translate, so they overlay it in the viewer:
    ``viewer.add_labels(data, **kwargs)``, or return the tuple from a napari function.

    Args:
        image_layer: a napari Image layer, or any object with ``data``, ``rgb``, ``scale``,
            ``translate`` and ``name`` (and ``multiscale`` for a pyramid).
        concept: what to segment, e.g. ``"nucleus"``; None for plain SAM with prompts.
        model: from :func:`napari_clipsam.load_model`; default ``load_model()``.
        points: (N, 2) napari data coordinates (row, col) of the image's planes.
        point_labels: (N,) 1 positive, 0 negative (default all 1).
        box: (row, col) corners of a rectangle: two opposite ones or a Shapes rectangle's four.
        instances, refine, min_area, channel, image_size, predictor, instance_method, diameter,
            score_threshold, tile_shape, halo, scale, link_planes, other_concepts, augment: as for
            :func:`napari_clipsam.segment`. ``scale`` is image pixels per pixel the model reads, not the
            layer's physical scale (which the labels carry, as below).
        diameter_unit: ``"px"``, or ``"um"``: ``diameter`` in micrometres, turned into the layer's
            pixels by its scale and units (:func:`layer_diameter_px`; napari's default units refused).
        level: the resolution level of a multiscale layer to segment (0: full resolution);
            prompts stay in level-0 data coordinates and the labels have level 0's shape, as
            in the widget. A stack at a coarser level takes no prompts.
        name: the labels layer's name; default ``"<image name> <concept>"``.

    Returns:
        ``(labels, {"name", "scale", "translate", "metadata"}, "labels")``: int32 labels of
        the image's spatial shape, 0 background.
    """
    multiscale = bool(getattr(image_layer, "multiscale", False))
    rgb = bool(getattr(image_layer, "rgb", False))
    points, box = rows_cols_to_xy(points), corners_to_xyxy(box)
    if check_diameter_unit(diameter_unit) == "um" and diameter is not None:  # a wrong unit refused, diameter or not
        diameter = layer_diameter_px(image_layer, diameter)
    # Checked first: a mistake must not wait for a model to load (or download).
    options = SegmentOptions(instances=instances, refine=refine, min_area=min_area, channel=channel,
                             instance_method=instance_method, diameter=diameter, score_threshold=score_threshold,
                             tile_shape=tile_shape, halo=halo, scale=scale, link_planes=link_planes,
                             other_concepts=other_concepts, augment=augment)
    plane = layer_plane(image_layer.data, rgb=rgb, multiscale=multiscale, level=level) if level else None
    predictor = predictor_for(model, predictor, image_size)
    with predictor:  # one thread drains the whole job, as in segment()
        if plane is None:
            data = image_layer.data[0] if multiscale else image_layer.data
            labels = run(iter_segment_stack(predictor, data, concept, points, point_labels, box, options, rgb))
        elif leading_ndim(image_layer) == 0:
            labels = run(iter_segment_plane(predictor, plane, concept, points, point_labels, box, options)).labels
        elif points is None and box is None:
            labels = run(iter_segment_layer_stack(predictor, image_layer.data, concept, options, rgb=rgb,
                                                  multiscale=True, level=level))
        else:
            raise ValueError("Prompts in a stack are taken at level 0 only: give level=0, or segment one "
                             "plane (a 2-D layer of it) at the coarser level.")
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


def level_shapes(data, multiscale: bool, rgb: bool) -> list[tuple[int, ...]]:
    """The spatial shape (no channel axis) of each level of a layer's data, largest first."""
    levels = list(data) if multiscale else [data]
    return [tuple(int(n) for n in level.shape)[: -1 if rgb else None] for level in levels]


def _nearest(size0: int, size: int) -> np.ndarray:
    """For each of ``size0`` level-0 pixels along an axis, the nearest of ``size`` level pixels (napari's placement)."""
    factor = size0 / size
    return np.clip(np.floor(np.arange(size0) / factor + 0.5), 0, size - 1).astype(np.intp)


def upsample_nearest(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``labels`` of a coarser level (any ndim) at the level-0 ``shape``, nearest-neighbour; the same array if equal."""
    labels = np.asarray(labels)
    if tuple(labels.shape) == tuple(shape):
        return labels
    return labels[np.ix_(*(_nearest(n0, n) for n0, n in zip(shape, labels.shape)))]


@dataclass(frozen=True, eq=False)
class LayerPlane:
    """One 2-D plane of an image layer at one resolution level, read region by region.

    Indexing and :attr:`shape` are in the level's pixels, relative to :attr:`rows` and
    :attr:`cols` (the part of the plane to segment): the pipeline reads ``plane[rows, cols]``
    tile by tile, and the array (numpy, dask, zarr) is never read whole.

    Attributes:
        array: the level's data (*leading, H, W[, C]).
        index: the plane's leading indices in that level.
        rows, cols: the region of the level's plane to segment (level pixels).
        plane_shape: the level-0 plane (H, W): the shape of the labels a result fills.
        rgb: whether the last axis holds channels.
        level: 0 for full resolution.
    """

    array: Any
    index: tuple[int, ...]
    rows: slice
    cols: slice
    plane_shape: tuple[int, int]
    rgb: bool = False
    level: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        channels = tuple(self.array.shape[-1:]) if self.rgb else ()
        return (self.rows.stop - self.rows.start, self.cols.stop - self.cols.start, *channels)

    @property
    def level_plane_shape(self) -> tuple[int, int]:
        """The whole plane (H, W) at this level."""
        return tuple(int(n) for n in self.array.shape[len(self.index): len(self.index) + 2])

    @property
    def factor(self) -> tuple[float, float]:
        """Level-0 pixels per pixel of this level, (rows, cols)."""
        return tuple(n0 / n for n0, n in zip(self.plane_shape, self.level_plane_shape))

    def __getitem__(self, region=()) -> np.ndarray:
        region = tuple(region) if isinstance(region, tuple) else (region,)
        region = region + (slice(None),) * (2 - len(region))
        sides = []
        for part, outer in zip(region, (self.rows, self.cols)):
            start, stop, _ = part.indices(outer.stop - outer.start)
            sides.append(slice(outer.start + start, outer.start + stop))
        return np.asarray(self.array[self.index + tuple(sides)])

    def to_level_xy(self, xy: np.ndarray | None) -> np.ndarray | None:
        """(N, 2) XY in level-0 pixels to XY in this plane's region; XYXY boxes as (N, 4) too."""
        if xy is None:
            return None
        xy = np.asarray(xy, dtype=np.float64)
        factor, origin = np.array(self.factor[::-1]), np.array([self.cols.start, self.rows.start])
        pairs = xy.reshape(-1, 2) / factor - origin
        return pairs.reshape(xy.shape)

    def to_level0_xy(self, xy: np.ndarray | None) -> np.ndarray | None:
        """The inverse of :meth:`to_level_xy`."""
        if xy is None:
            return None
        xy = np.asarray(xy, dtype=np.float64)
        factor, origin = np.array(self.factor[::-1]), np.array([self.cols.start, self.rows.start])
        return ((xy.reshape(-1, 2) + origin) * factor).reshape(xy.shape)

    def to_level0(self, values: np.ndarray) -> np.ndarray:
        """A (h, w) result of this region as the (H, W) level-0 plane: nearest-neighbour, 0 outside the region."""
        if self.level_plane_shape == self.plane_shape and tuple(values.shape) == self.plane_shape:
            return values  # the whole plane at full resolution
        rows = _nearest(self.plane_shape[0], self.level_plane_shape[0])
        cols = _nearest(self.plane_shape[1], self.level_plane_shape[1])
        inside_rows = (rows >= self.rows.start) & (rows < self.rows.stop)
        inside_cols = (cols >= self.cols.start) & (cols < self.cols.stop)
        full = np.zeros(self.plane_shape, dtype=values.dtype)
        full[np.ix_(inside_rows, inside_cols)] = values[
            np.ix_(rows[inside_rows] - self.rows.start, cols[inside_cols] - self.cols.start)]
        return full


def layer_plane(data, *, rgb: bool = False, multiscale: bool = False, plane: tuple[int, ...] = (), level: int = 0,
                region: tuple[slice, slice] | None = None) -> LayerPlane:
    """The plane of a layer's data at ``plane`` (level-0 leading indices), read at ``level``.

    Args:
        data: the layer's data: an array, or the list of levels of a multiscale layer.
        region: (rows, cols) slices of the level-0 plane to segment; None: all of it.
    """
    shapes = level_shapes(data, multiscale, rgb)
    if not 0 <= level < len(shapes):
        raise ValueError(f"The image has {len(shapes)} resolution level(s) (0 to {len(shapes) - 1}), not {level}.")
    array = list(data)[level] if multiscale else data
    shape0, shape = shapes[0], shapes[level]
    lead = len(shape0) - 2
    # A coarser level may be coarser along the leading axes too (3-D pyramids).
    index = tuple(int(np.clip(round(i * n / n0), 0, n - 1)) for i, n, n0 in zip(plane, shape[:lead], shape0[:lead]))
    sides = []
    for axis in (0, 1):
        size0, size = shape0[lead + axis], shape[lead + axis]
        part = slice(None) if region is None else region[axis]
        start, stop, _ = part.indices(size0)
        low = int(np.clip(np.floor(start * size / size0), 0, size))
        high = int(np.clip(np.ceil(stop * size / size0), low, size))
        sides.append(slice(low, high))
    return LayerPlane(array, index, sides[0], sides[1], (shape0[lead], shape0[lead + 1]), rgb, level)


@dataclass
class PlaneResult(SegmentResult):
    """A :class:`SegmentResult` in the layer's level-0 plane, with how it was made.

    Attributes:
        tiles: how many tiles the plane was segmented in; 0: one pass, resized to SAM's input.
        level: the resolution level read.
        scale: image pixels per pixel the model read (``inference/rescale.py``).
        diameter_unused: a diameter was given to pick the scale, and the model lists no sizes to pick it by.
    """

    tiles: int = 0
    level: int = 0
    scale: float = 1.0
    diameter_unused: bool = False

    @property
    def summary(self) -> str:
        """How it was made, for a status line: SAM's score, or the tiles; the scale and a coarser level read."""
        made = f"in {self.tiles} tile(s)" if self.tiles else f"score {self.score:.2f}"
        made += f", read at scale {self.scale:g}" if self.scale != 1 else ""
        made += (", object diameter not used: the model lists no object sizes to pick the scale by (set Scale)"
                 if self.diameter_unused else "")
        return f"{made}, resolution level {self.level}" if self.level else made


def layer_diameter_px(layer, micrometres: float) -> float:
    """A diameter in µm in ``layer``'s pixels, by its scale and units (geometric mean of its last
    two axes); ValueError where its units are not lengths (napari's default, "pixel": a scale alone
    does not say micrometres) or make it no image's size."""
    units = tuple(getattr(layer, "units", ()))[-2:]
    try:
        factors = [float((1 * unit).to("micrometer").magnitude) for unit in units]
    except Exception:  # pint: "pixel" is no length
        factors = []
    name = getattr(layer, "name", "image")
    if len(factors) != 2:
        raise ValueError(f"the layer {name!r} gives no physical pixel size (its units are "
                         f"{', '.join(map(str, units)) or 'none'}): give the object diameter in px, or set the "
                         "layer's units (layer.units = 'um') and scale.")
    scale = [float(s) for s in layer.scale[-2:]]
    pixels = micrometres / math.sqrt(scale[0] * factors[0] * scale[1] * factors[1])
    if not 1 <= pixels <= MAX_DIAMETER_PX:
        raise ValueError(f"{micrometres:g} µm is {pixels:g} pixels of the layer {name!r} by its scale "
                         f"{tuple(scale)}: check the layer's scale and units, or give the diameter in px.")
    return pixels


def iter_segment_plane(predictor: ClipSamPredictor, plane: LayerPlane, concept: str | None, points=None,
                       point_labels=None, box=None, options: SegmentOptions = SegmentOptions()) -> Job[PlaneResult]:
    """Segment one :class:`LayerPlane` through the pipeline, tiled as ``options`` say; returns a :class:`PlaneResult`.

    Prompts are XY (points) and XYXY (box) pixels of the level-0 plane; the result's
    labels, mask, points and similarity map are (H, W) of the level-0 plane (0 outside the
    region). One pass (no tiles, scale 1) gives SAM's score and the similarity map; tiles or
    another scale give neither (score NaN, similarity None).
    """
    level_points, level_box = plane.to_level_xy(points), plane.to_level_xy(box)
    scale = scale_for(options, predictor.model, concept)
    unused = diameter_unused(options, predictor.model, concept)
    read_shape = tuple(read_length(n, scale) for n in plane.shape[:2])  # what the model reads (rescale.py)
    tiling = tiling_for(predictor, read_shape, options)
    if tiling is None and scale == 1:
        result = yield from iter_segment(predictor, plane[()], concept, level_points, point_labels, level_box,
                                         options)
        similarity = None if result.similarity is None else plane.to_level0(result.similarity)
        return PlaneResult(plane.to_level0(result.mask), plane.to_level0(result.labels), result.score,
                           plane.to_level0_xy(result.points), result.point_labels, result.logits, similarity,
                           tiles=0, level=plane.level, diameter_unused=unused)
    options = replace(options, with_similarity=False)  # per tile only: not worth computing
    job = iter_segment_stack(predictor, plane, concept, level_points, point_labels, level_box, options,
                             rgb=plane.rgb)
    labels = plane.to_level0((yield from job))
    # No one pass of SAM: no score, no low-resolution logits; the points are the user's.
    return PlaneResult(labels > 0, labels, float("nan"), points, point_labels, np.zeros((0, 0), np.float32),
                       None, tiles=len(tiles_for(predictor, read_shape, tiling, scale_points(level_points, scale),
                                                 scale_points(level_box, scale))) if tiling else 1,
                       level=plane.level, scale=scale, diameter_unused=unused)


def iter_segment_layer_stack(predictor: ClipSamPredictor, data, concept: str | None, options: SegmentOptions,
                             *, rgb: bool = False, multiscale: bool = False, level: int = 0) -> Job[np.ndarray]:
    """Every plane of a layer's data (its ``level`` if multiscale) with :func:`iter_segment_stack`;
    returns labels of the level-0 shape (nearest-neighbour from a coarser level)."""
    shape0 = level_shapes(data, multiscale, rgb)[0]
    array = list(data)[level] if multiscale else data
    labels = yield from iter_segment_stack(predictor, array, concept, options=options, rgb=rgb)
    return upsample_nearest(labels, shape0)


__all__ = [
    "LayerPlane", "PlaneResult", "corners_to_xyxy", "iter_segment_layer_stack", "iter_segment_plane",
    "layer_diameter_px", "layer_plane",
    "level_shapes", "rows_cols_to_xy", "segment_layer", "spatial", "spatial_shape", "upsample_nearest",
]
