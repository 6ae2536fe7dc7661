"""Images larger than SAM's input, segmented at native resolution in overlapping tiles.

Without tiles an image is resized to SAM's input (1024 px for the published models), and
objects of a few pixels in a large field vanish. With tiles (micro-sam's terms):

- ``tile_shape`` is the (height, width) of each tile's **core**; the cores cover the image
  exactly, without overlap. Each tile is read with a **halo** of ``halo`` pixels on every
  side (clipped at the image's border), so that an object near a core's edge is seen whole.
  A tile larger than SAM's input is resized to it, trading detail for speed.
- Semantic masks: each pixel is taken from the tile whose core holds it; the halo gives
  that core the context around it.
- Instances: an object belongs to the tile whose core holds its centre (of mass), and is
  painted whole (into the halo too) where no earlier object is; a copy of it from the
  neighbouring tile then finds its pixels taken and is dropped (less than
  ``KEEP_FRACTION`` of it free). An object on a seam is one label, never split or doubled,
  as long as the halo is at least about its diameter.
- Points and boxes: one window (SAM's input size, or larger to hold them with a halo)
  around the prompts; the rest of the image stays 0.

Tiles are read one at a time (``image[rows, cols]``), so numpy, dask and zarr images work
without loading the image, and the labels can be written into ``out`` (a zarr array, say):
memory is then bounded by the tile, not the image. Coordinates are (row, col) here;
prompts stay XY pixels as everywhere in the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .._jobs import Job, Progress, relay
from ..model.build_sam import DEFAULT_AUTO_DOWNSCALE
from .seeds import KEEP_FRACTION

if TYPE_CHECKING:
    from .pipeline import SegmentOptions
    from .predictor import ClipSamPredictor

AUTO = "auto"
# "auto" halo: this part of SAM's input on each side (256 px at 1024, 64 at 256), so a tile's
# core is half the input. On a 640 px field of generated nuclei (demo model, seeds) instance
# F1 was 0.27 with an eighth (32 px; nuclei reach 60 px), 0.32 with a quarter, against 0.34
# for the same field cut into independent 256 px crops.
AUTO_HALO_FRACTION = 1 / 4


@dataclass(frozen=True)
class Tile:
    """One tile: ``outer`` (core and halo, clipped to the image) and ``inner`` (its core), image (row, col) slices."""

    index: int
    outer: tuple[slice, slice]
    inner: tuple[slice, slice]

    @property
    def origin(self) -> tuple[int, int]:
        """(row, col) of the outer region's top-left pixel in the image."""
        return self.outer[0].start, self.outer[1].start

    @property
    def core(self) -> tuple[slice, slice]:
        """The core as slices of the outer region."""
        r0, c0 = self.origin
        return (slice(self.inner[0].start - r0, self.inner[0].stop - r0),
                slice(self.inner[1].start - c0, self.inner[1].stop - c0))


def _pair(value, name: str) -> tuple[int, int]:
    values = (value, value) if np.isscalar(value) else tuple(value)
    if len(values) != 2 or not all(float(v).is_integer() and v > 0 for v in values):
        raise ValueError(f"{name} must be a positive number of pixels or (height, width) of them, got {value!r}.")
    return int(values[0]), int(values[1])


def _halo_pair(halo, input_size: int) -> tuple[int, int]:
    if halo == AUTO:
        return (round(input_size * AUTO_HALO_FRACTION),) * 2
    values = (halo, halo) if np.isscalar(halo) else tuple(halo)
    if len(values) != 2 or not all(float(v).is_integer() and v >= 0 for v in values):
        raise ValueError(f"halo must be 0 or more pixels, or (height, width) of them, got {halo!r}.")
    return int(values[0]), int(values[1])


def check_tiling(tile_shape=AUTO, halo=AUTO) -> None:
    """Refuse ``tile_shape`` and ``halo`` values that mean nothing (ValueError), before any image is seen."""
    _halo_pair(halo, input_size=0)
    if isinstance(tile_shape, str) and tile_shape != AUTO:
        raise ValueError(f"tile_shape must be 'auto', None or (height, width) in pixels, got {tile_shape!r}.")
    if tile_shape is not None and not isinstance(tile_shape, str):
        _pair(tile_shape, "tile_shape")


def resolve_tiling(image_shape: tuple[int, int], input_size: int, tile_shape=AUTO, halo=AUTO,
                   max_downscale: float = DEFAULT_AUTO_DOWNSCALE):
    """The ((core h, core w), (halo h, halo w)) to segment an image of ``image_shape`` with, or None for one pass.

    Args:
        input_size: SAM's input side in pixels (the predictor's).
        tile_shape: ``"auto"`` (tiles when the image's longer side exceeds ``max_downscale``
            inputs: cores of ``input - 2 * halo`` so that a tile with its halo is exactly one
            input, read at native resolution), None (never: the whole image resized to the
            input) or the core's (height, width) in pixels.
        halo: pixels of context on each side (``"auto"``: a quarter of the input), or (h, w).
        max_downscale: how many times "auto" may shrink an image to the input instead
            (the model's ``max_auto_downscale``: 2 for the published SAM, whose one pass is
            much faster and loses at most half the detail; 1 for the demo model).
    """
    check_tiling(tile_shape, halo)
    height, width = (int(n) for n in image_shape)
    halo_pair = _halo_pair(halo, input_size)
    if tile_shape is None:
        return None
    if isinstance(tile_shape, str):
        if max(height, width) <= max_downscale * input_size:
            return None
        core = tuple(max(input_size - 2 * h, input_size // 2) for h in halo_pair)
        return (core[0], core[1]), halo_pair
    core = _pair(tile_shape, "tile_shape")
    if core[0] >= height and core[1] >= width:
        return None  # one tile holds the image: the same as no tiling
    return core, halo_pair


def sam_side(predictor: ClipSamPredictor) -> int:
    """The SAM input side ``predictor`` runs at: its own, else the adapters' training size, else SAM's."""
    return predictor.image_size or predictor.model.image_size


def tiling_for(predictor: ClipSamPredictor, image_shape, options: SegmentOptions):
    """:func:`resolve_tiling` for a plane of ``image_shape`` ((H, W, ...)) at ``predictor``'s SAM input."""
    return resolve_tiling(tuple(image_shape)[:2], sam_side(predictor), options.tile_shape, options.halo,
                          predictor.model.max_auto_downscale)


def plan_tiles(image_shape: tuple[int, int], tile_shape: tuple[int, int], halo: tuple[int, int]) -> list[Tile]:
    """Tiles whose cores cover ``image_shape`` exactly (row-major), each with its halo clipped to the image."""
    height, width = image_shape
    tiles = []
    for r0 in range(0, height, tile_shape[0]):
        for c0 in range(0, width, tile_shape[1]):
            r1, c1 = min(r0 + tile_shape[0], height), min(c0 + tile_shape[1], width)
            outer = (slice(max(r0 - halo[0], 0), min(r1 + halo[0], height)),
                     slice(max(c0 - halo[1], 0), min(c1 + halo[1], width)))
            tiles.append(Tile(len(tiles), outer, (slice(r0, r1), slice(c0, c1))))
    return tiles


def prompt_window(image_shape: tuple[int, int], input_size: int, halo: tuple[int, int], points, box) -> Tile:
    """One tile around the prompts (XY points, XYXY box): SAM's input in size, or larger to hold them with the halo."""
    xy = [np.asarray(points, float).reshape(-1, 2)] if points is not None else []
    if box is not None:
        xy.append(np.asarray(box, float).reshape(2, 2))
    xy = np.concatenate(xy)
    low, high = xy.min(axis=0)[::-1], xy.max(axis=0)[::-1]  # (row, col)
    bounds = []
    for axis in range(2):
        size = min(max(input_size, int(np.ceil(high[axis] - low[axis])) + 1 + 2 * halo[axis]), image_shape[axis])
        centre = (low[axis] + high[axis]) / 2
        start = int(np.clip(round(centre - size / 2), 0, image_shape[axis] - size))
        bounds.append(slice(start, start + size))
    window = (bounds[0], bounds[1])
    return Tile(0, window, window)


def tiles_for(predictor: ClipSamPredictor, image_shape, tiling, points=None, box=None) -> list[Tile]:
    """The tiles :func:`iter_segment_tiled` segments: one window around the prompts, else the grid."""
    shape = tuple(int(n) for n in image_shape[:2])
    tile_shape, halo = tiling
    if points is not None or box is not None:
        return [prompt_window(shape, sam_side(predictor), halo, points, box)]
    return plan_tiles(shape, tile_shape, halo)


def _read(image, region: tuple[slice, slice]) -> np.ndarray:
    return np.asarray(image[region])


def _stitch_objects(labels, tile: Tile, tile_labels: np.ndarray, next_label: int, min_area: int) -> int:
    """Paint the tile's objects whose centre lies in its core into ``labels`` (where free); returns the next label."""
    count = int(tile_labels.max(initial=0))
    if count == 0:
        return next_label
    values = np.arange(1, count + 1)
    areas = np.bincount(tile_labels.ravel(), minlength=count + 1)[1:]
    centres = ndimage.center_of_mass(tile_labels > 0, tile_labels, values)
    core = tile.core
    region = np.array(labels[tile.outer])  # a copy: labels may be a zarr array
    boxes = ndimage.find_objects(tile_labels)
    changed = False
    for value, area, centre, found in zip(values, areas, centres, boxes):
        if found is None or not area:
            continue
        row, col = (int(np.floor(c)) for c in centre)
        if not (core[0].start <= row < core[0].stop and core[1].start <= col < core[1].stop):
            continue  # the neighbouring tile whose core holds its centre paints it
        crop = tile_labels[found] == value
        target = region[found]
        free = crop & (target == 0)
        kept = int(free.sum())
        if kept < max(min_area, 1) or kept < KEEP_FRACTION * area:
            continue  # mostly taken: another tile's copy of the same object
        target[free] = next_label
        next_label += 1
        changed = True
    if changed:
        labels[tile.outer] = region
    return next_label


def iter_segment_tiled(
    predictor: ClipSamPredictor,
    image,
    concept: str | None,
    points,
    point_labels,
    box,
    options: SegmentOptions,
    tiling: tuple[tuple[int, int], tuple[int, int]],
    out=None,
    first_label: int = 1,
) -> Job[tuple[np.ndarray, int]]:
    """Segment one 2-D image (H, W[, C]) tile by tile at native resolution.

    ``tiling`` is :func:`resolve_tiling`'s answer. ``out``: an (H, W) integer array to write
    into (numpy, zarr, or a view of a plane of either), else a new one; it is written tile
    by tile, never read or held whole. With instances, objects are numbered from
    ``first_label``. Yields per stage of each tile; closing the job between tiles stops it,
    leaving what was written. With ``options.encoder_batch`` above 1 the tiles go through
    the encoders that many at a time (``inference/encode_ahead.py``), each then segmented.

    Returns:
        (the labels: ``out`` or a new (H, W) int32 array, the next unused label).
    """
    from .encode_ahead import ReadAhead
    from .pipeline import iter_segment

    shape = tuple(int(n) for n in image.shape[:2])
    tiles = tiles_for(predictor, shape, tiling, points, box)
    labels = np.zeros(shape, dtype=np.int32) if out is None else out
    if tuple(labels.shape) != shape:
        raise ValueError(f"out has shape {tuple(labels.shape)}; the image's planes are {shape}.")
    next_label = first_label
    with ReadAhead(predictor, lambda number: _read(image, tiles[number].outer), len(tiles), concept, options,
                   "tiles") as ahead:
        for number, tile in enumerate(tiles):
            r0, c0 = tile.origin
            shift = np.array([c0, r0], dtype=float)
            tile_points = None if points is None else np.asarray(points, float) - shift
            tile_box = None if box is None else np.asarray(box, float) - np.tile(shift, 2)
            tile_image = yield from ahead.iter_item(number)
            job = iter_segment(predictor, tile_image, concept, tile_points, point_labels, tile_box, options)
            prefix = f"tile {tile.index + 1}/{len(tiles)}: "
            result = yield from relay(job, lambda event: Progress(prefix + event.stage, tile.index, len(tiles)))
            if options.instances:
                next_label = _stitch_objects(labels, tile, result.labels, next_label, options.min_area)
            else:
                labels[tile.inner] = result.labels[tile.core]
    return labels, next_label


class PlaneView:
    """One plane of a stack (or labels array), read and written region by region, never whole."""

    def __init__(self, array, index: tuple[int, ...]) -> None:
        self.array, self.index = array, index
        self.shape = tuple(array.shape)[len(index):]

    def _key(self, region) -> tuple:
        return self.index + (region if isinstance(region, tuple) else (region,))

    def __getitem__(self, region):
        return np.asarray(self.array[self._key(region)])

    def __setitem__(self, region, values) -> None:
        self.array[self._key(region)] = values


__all__ = ["AUTO", "PlaneView", "Tile", "iter_segment_tiled", "plan_tiles", "prompt_window", "resolve_tiling", "sam_side",
           "tiles_for", "tiling_for"]
