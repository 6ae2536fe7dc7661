"""Reading an image at another scale: objects larger (or smaller) than those the model knows.

A model reads objects of the sizes it was trained on best. The demo model saw nuclei 8-60 px
across; a field of 120 px nuclei read at its own pixels gives it halves and rims
(docs/quality.md, "the samples at another scale"). ``scale`` is how many of the image's pixels
make one pixel of what the model reads: 2 reads the image at half its size (objects half as
wide, and a quarter of the tiles), 0.5 at twice its size. Labels come back at the image's size.

``"auto"`` is 1 unless ``diameter`` is given (with or without instances) and the model lists the object diameters each of
its concepts was trained at (``model.concept_diameters``: the demo model's come from the scene
generator), and ``diameter`` lies outside that range (by more than ``SLACK``): then the scale
that brings it to the range's middle (geometric mean), where the model is surest, as Cellpose
brings every diameter to its model's mean. Inside the range the image's own pixels stay: the
model reads objects of any of its sizes at the image's own noise and blur best. Measured in
``benchmarks/bench_scale.py`` (docs/quality.md): to the range's nearer end instead, enlarged
scenes kept much of their loss (membranes 2x: text IoU 0.06, against 0.72 to the middle).

The pixel map is fixed per pixel, never per region, so that tiles read the same values
whichever region they ask for: read pixel ``i`` of an axis lies at ``(i + 0.5) s - 0.5`` on the
image's, where the image, smoothed by a Gaussian of ``(s - 1) / 2`` px when shrunk (against
aliasing, as scikit-image's resize), is interpolated linearly; a region is read with the
Gaussian's reach around it. (Averaging bins of 1 or 2 pixels instead, at a scale such as
1.08, jagged 3 px membranes: held-out text IoU 0.27 against 0.33 smoothly resized.) Image
pixel ``j`` takes the label of read pixel ``floor((j + 0.5) / s)``. The image is read region
by region as the pipeline asks (numpy, dask, zarr), never whole; the labels are made at the
read's size (held whole: 1/scale^2 of the image's) and written into the caller's array in
bands of rows once every plane is done, so a job stopped before then writes nothing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from scipy import ndimage

AUTO = "auto"
# Rows of the image's labels written per band when the read's labels are brought back.
_BAND_ROWS = 1024
# "auto" leaves a diameter this close to the model's range as it is: a user's estimate is rough,
# and a small resampling costs more than it brings (a held-out 448 px tissue scene: membrane text
# IoU 0.40 at scale 1, 0.33 at 1.08 smoothly resized; outlines' Feret diameters reach 56 px, cells 28-52).
SLACK = 1.25
# A diameter in micrometres that the pixel size makes larger than this many pixels is refused.
MAX_DIAMETER_PX = 100_000
PIXEL_WORDS = ("px", "pixel", "pixels")  # a diameter's unit words for pixels (SegmentOptions, the CLI)
# The anti-aliasing Gaussian reaches this many sigmas (scipy's default).
TRUNCATE = 4.0


def check_scale(scale) -> float | str:
    """``scale`` as given, refused (ValueError) unless ``"auto"`` or a positive finite number."""
    if isinstance(scale, str) and scale == AUTO:
        return AUTO
    if isinstance(scale, (bool, str)) or not isinstance(scale, (int, float, np.number)) \
            or not (math.isfinite(scale) and scale > 0):
        raise ValueError(
            f"scale must be 'auto' or how many image pixels make one pixel the model reads (more than 0; "
            f"2 reads the image at half its size), got {scale!r}."
        )
    return float(scale)


def check_diameter_unit(unit) -> str:
    """``unit`` as :class:`~.pipeline.SegmentOptions` keeps it: ``"px"`` (pixels) or ``"um"`` (micrometres)."""
    text = unit.strip().lower().replace("µ", "u").replace("μ", "u") if isinstance(unit, str) else None
    if text in PIXEL_WORDS:
        return "px"
    if text in ("um", "micrometre", "micrometer", "micron", "microns"):
        return "um"
    raise ValueError(f"diameter_unit must be 'px' (pixels) or 'um' (micrometres), got {unit!r}.")


def diameter_in_pixels(options, pixel_size: Mapping[str, float], name: str):
    """``options`` with a diameter in micrometres given in the image's pixels, by its ``pixel_size``
    (micrometres per pixel along ``"Y"`` and ``"X"``, as ``_image_files`` reads a file's metadata).

    Each file of a batch taken at another magnification gets its own diameter in pixels, so
    its own scale. A diameter in pixels is returned as it is. Raises ValueError, naming
    ``name``, when the pixel size is unknown or makes the diameter no image's size (a
    resolution tag that is not the microscope's, such as a default 72 dpi).
    """
    if options.diameter is None or options.diameter_unit == "px":
        return replace(options, diameter_unit="px")
    micrometres = options.diameter
    if "X" not in pixel_size or "Y" not in pixel_size:
        raise ValueError(
            f"{name} gives no pixel size (OME PhysicalSizeX/Y, a TIFF or ImageJ resolution, an OME-Zarr scale), "
            f"so a diameter of {micrometres:g} µm cannot be turned into pixels: give the diameter in pixels "
            f"(--diameter 24, or diameter_unit='px')."
        )
    size = math.sqrt(pixel_size["X"] * pixel_size["Y"])
    pixels = micrometres / size
    if not 1 <= pixels <= MAX_DIAMETER_PX:
        raise ValueError(
            f"{name}: its pixel size, {size:g} µm, makes a diameter of {micrometres:g} µm {pixels:g} pixels, "
            f"which cannot be its objects' size: the file's resolution is likely not the microscope's (a "
            f"default 72 dpi gives 353 µm); give the diameter in pixels (--diameter 24, or diameter_unit='px')."
        )
    return replace(options, diameter=pixels, diameter_unit="px")


def seeded(options) -> bool:
    """Whether ``options`` make seeded instances, the one use of a diameter besides picking the scale."""
    return options.instances and options.instance_method == "seeds"


def check_diameter_use(diameter: float | None, scale, seeded: bool) -> None:
    """Refuse (ValueError) a ``diameter`` that would do nothing: one given with a fixed ``scale``
    and no seeded instances (``seeded``: ``instances=True`` with the seeds method)."""
    if diameter is None or seeded or check_scale(scale) == AUTO:
        return
    raise ValueError(
        f"diameter={diameter:g} gives the seeds their objects' size (instances=True, instance_method='seeds') "
        f"and, with scale='auto', picks the reading scale; with scale={scale:g} and no seeded instances it would "
        f"do nothing: leave it out, or set scale='auto'."
    )


def known_diameters(model, concept: str | None) -> tuple[float, float] | None:
    """The (low, high) object diameters ``model`` lists for ``concept`` (``model.concept_diameters``), or None."""
    from .prompts import normalise_concept

    concept = None if concept is None else normalise_concept(concept)
    return None if concept is None else getattr(model, "concept_diameters", {}).get(concept)


def diameter_unused(options, model, concept: str | None) -> bool:
    """Whether ``options.diameter`` was given for the scale alone (no seeded instances, ``scale="auto"``)
    and ``model`` lists no diameters for ``concept`` to pick it by."""
    return options.diameter is not None and not seeded(options) and options.scale == AUTO \
        and known_diameters(model, concept) is None


def scale_for(options, model, concept: str | None) -> float:
    """The scale :class:`~.pipeline.SegmentOptions` ``options`` read ``concept`` at with ``model``.

    A ``diameter`` given for the scale alone (no seeded instances) that the model cannot use,
    listing no diameters for the concept, is reported by a warning and leaves the image's
    own pixels: it says what the objects are, not what to do, and ``diameter`` with the seeds
    means the same whatever the model.
    """
    if options.diameter is not None and options.diameter_unit != "px":
        raise ValueError(
            f"A diameter of {options.diameter:g} µm needs the image's pixel size, which an array does not carry: "
            f"files segmented by the CLI or napari_clipsam.batch are converted by their metadata; here give "
            f"diameter in pixels (micrometres / micrometres per pixel) with diameter_unit='px'."
        )
    if diameter_unused(options, model, concept):
        warnings.warn(
            f"diameter={options.diameter:g} picks the reading scale only for a model that lists the object "
            f"diameters it was trained on (model.concept_diameters: the demo model's); this one lists none "
            f"for {concept!r}, so the image is read at its own pixels: give scale yourself (2 reads it at half "
            f"its size).", UserWarning, stacklevel=2)
    return resolve_scale(options.scale, options.diameter, model, concept)


def resolve_scale(scale, diameter: float | None, model, concept: str | None) -> float:
    """The scale to read at: ``scale`` itself, or for ``"auto"`` 1, unless ``diameter`` lies outside
    the range the model lists for ``concept`` by more than ``SLACK``: then the scale that brings it
    to the range's geometric middle."""
    scale = check_scale(scale)
    if scale != AUTO:
        return scale
    known = known_diameters(model, concept)
    if diameter is None or known is None:
        return 1.0
    low, high = known
    if low / SLACK <= diameter <= high * SLACK:
        return 1.0
    return float(diameter / math.sqrt(low * high))


def read_length(length: int, scale: float) -> int:
    """How many pixels an axis of ``length`` image pixels has when read at ``scale``."""
    return max(1, round(length / scale))


def _positions(start: int, stop: int, scale: float, length: int) -> np.ndarray:
    """Where read pixels ``start .. stop - 1`` of an axis lie on the image's axis of ``length`` (pixel centres)."""
    return np.clip((np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5, 0, length - 1)


def _sigma(scale: float) -> float:
    """The Gaussian that keeps a shrunk read from aliasing (as scikit-image's resize); none when enlarging."""
    return max(0.0, (scale - 1) / 2)


def label_source(length: int, scale: float, read: int) -> np.ndarray:
    """For each of an axis's ``length`` image pixels, the read pixel (of ``read``) whose label it takes."""
    index = np.floor((np.arange(length) + 0.5) / scale + 1e-9).astype(np.int64)
    return np.minimum(index, read - 1)


def _interpolate(block: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``block`` along ``axis`` at ``positions`` (block coordinates)."""
    below = np.minimum(np.floor(positions).astype(np.int64), block.shape[axis] - 1)
    above = np.minimum(below + 1, block.shape[axis] - 1)
    shape = [1] * block.ndim
    shape[axis] = positions.size
    weight = (positions - below).reshape(shape)
    return np.take(block, below, axis=axis) * (1 - weight) + np.take(block, above, axis=axis) * weight


class ScaledImage:
    """An image or stack (*leading, H, W[, C]) read at ``scale``, region by region, never whole.

    Indexing takes what the pipeline asks: leading indices, then optionally (rows, cols)
    slices in the read's pixels; values keep the image's dtype (integers rounded).
    """

    def __init__(self, array, scale: float, leading: int) -> None:
        self.array, self.scale, self.leading = array, scale, leading
        shape = tuple(int(n) for n in array.shape)
        self.image_spatial = shape[leading:leading + 2]
        spatial = tuple(read_length(n, scale) for n in self.image_spatial)
        self.shape = shape[:leading] + spatial + shape[leading + 2:]
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if len(key) < self.leading or any(isinstance(k, slice) for k in key[:self.leading]):
            raise IndexError(f"a scaled image is read by its {self.leading} leading indices, then (rows, cols).")
        index, region = key[:self.leading], key[self.leading:]
        region = tuple(region) + (slice(None),) * (2 - len(region))
        if len(region) != 2 or not all(isinstance(r, slice) and r.step in (None, 1) for r in region):
            raise IndexError("a scaled image's plane is read by (rows, cols) slices")
        positions, source = [], []
        reach = int(TRUNCATE * _sigma(self.scale) + 0.5) + 1  # the filter's reach, and the pixel above
        for axis, (part, length) in enumerate(zip(region, self.image_spatial)):
            start, stop, _ = part.indices(self.shape[self.leading + axis])
            where = _positions(start, max(stop, start), self.scale, length)
            low = max(int(np.floor(where[0])) - reach, 0) if where.size else 0
            high = min(int(np.floor(where[-1])) + reach + 1, length) if where.size else 0
            positions.append(where - low)
            source.append(slice(low, high))
        block = np.asarray(self.array[index + tuple(source)])
        if block.size == 0 or not all(where.size for where in positions):
            return np.zeros(tuple(where.size for where in positions) + block.shape[2:], block.dtype)
        values = block.astype(np.float64)
        sigma = _sigma(self.scale)
        if sigma > 0:  # at the image's borders the nearest pixel repeats, whichever region is read
            values = ndimage.gaussian_filter(values, [sigma, sigma] + [0] * (values.ndim - 2), mode="nearest",
                                             truncate=TRUNCATE)
        for axis, where in enumerate(positions):
            values = _interpolate(values, axis, where)
        if block.dtype == bool:
            return values >= 0.5
        if block.dtype.kind in "iu":
            info = np.iinfo(block.dtype)
            return np.clip(np.rint(values), info.min, info.max).astype(block.dtype)
        return values.astype(block.dtype)


def scale_points(points, scale: float):
    """XY points (or an XYXY box) of the image in the read's pixels (pixel centres kept on pixel centres)."""
    if points is None:
        return None
    return (np.asarray(points, dtype=float) + 0.5) / scale - 0.5


def write_back(small, out, leading: int, scale: float) -> None:
    """Labels made at the read's size (``small``) into ``out`` at the image's size, band by band of rows."""
    shape = tuple(int(n) for n in out.shape)
    height, width = shape[leading:leading + 2]
    read_height, read_width = small.shape[leading:leading + 2]
    rows, cols = label_source(height, scale, read_height), label_source(width, scale, read_width)
    for index in np.ndindex(*shape[:leading]):
        plane = np.asarray(small[index])
        for start in range(0, height, _BAND_ROWS):
            band = rows[start:start + _BAND_ROWS]
            out[index + (slice(start, start + band.size),)] = plane[band][:, cols]


def scaled_size(value: float | None, scale: float, power: int = 1):
    """A length (power 1) or area (power 2) in the image's pixels, in the read's; None stays None."""
    return None if value is None else value / scale**power


def iter_segment_scaled(predictor, stack, concept, points, point_labels, box, options, rgb, out, scale: float):
    """:func:`~.pipeline.iter_segment_stack` of ``stack`` read at ``scale``; labels at the image's size (``out``)."""
    from .image import leading_ndim
    from .pipeline import iter_segment_stack

    shape = tuple(int(n) for n in stack.shape)
    leading = leading_ndim(shape, rgb)
    labels_shape = shape[:leading + 2]
    if out is not None and tuple(out.shape) != labels_shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; the labels of this image need {labels_shape}.")
    labels = np.zeros(labels_shape, dtype=np.int32) if out is None else out
    # Sizes the user gave in the image's pixels, in the read's; the read itself at scale 1.
    # A diameter given only to pick the scale has done so.
    inner = replace(options, scale=1.0, diameter=scaled_size(options.diameter, scale) if seeded(options) else None,
                    min_area=math.ceil(options.min_area / scale**2))
    small = yield from iter_segment_stack(predictor, ScaledImage(stack, scale, leading), concept,
                                          scale_points(points, scale), point_labels, scale_points(box, scale),
                                          inner, rgb=len(shape) > leading + 2)
    write_back(small, labels, leading, scale)
    return labels


__all__ = ["AUTO", "PIXEL_WORDS", "ScaledImage", "check_diameter_unit", "check_diameter_use", "check_scale", "diameter_in_pixels",
           "diameter_unused", "iter_segment_scaled", "known_diameters", "label_source", "read_length",
           "resolve_scale", "scale_for", "scale_points", "scaled_size", "seeded", "write_back"]
