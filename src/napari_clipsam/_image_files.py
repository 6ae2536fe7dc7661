"""Image files as microscopists have them: axes arranged by what the file names, planes read lazily.

:func:`open_image` reads the axes a file names (tifffile's series axes for TIFF, OME-TIFF and
ImageJ hyperstacks; the NGFF axes of OME-Zarr) and gives the pipeline (*leading, Y, X), or
(*leading, Y, X, C) with channels, with ``rgb`` said so that nothing is guessed. A channel is
chosen by number or by its OME name. The physical pixel size travels with the image to the
labels. Files that name no axes (.npy, PNG, a plain zarr array) keep the pipeline's guess.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import check_image_file, read_image, reading_errors, tiff_damage_raises
from .errors import UnsupportedImageError
from .inference.image import MAX_CHANNELS

logger = logging.getLogger(__name__)

# Axis letters are tifffile's: Y and X the plane; C channels and S samples (RGB) the channels; the
# others (time, depth, a plain sequence, angle, phase, ...) lead, and each of their planes is segmented.
PLANE = "YX"
CHANNELS = "CS"
LEADING = "TZQIAPRHELVM"
SUPPORTED = (f"Supported: Y and X (the plane), at most one channel axis C or S, and leading axes ({', '.join(LEADING)}"
             "; T time, Z depth), each once: e.g. YX, CYX, ZYX, TZCYX, YXS (RGB)")


@dataclass
class ImageSource:
    """An image opened for segmentation, and what its labels should carry.

    Attributes:
        data: (*leading, Y, X), or (*leading, Y, X, C) with ``rgb``: numpy, or an array-like
            read lazily (``data[index]`` reads one plane, ``data[index + (rows, cols)]`` a tile).
        name: the file's path as given, for messages.
        rgb: whether the last axis of ``data`` holds channels; None where the file names no
            axes (the pipeline then guesses, see ``inference.pipeline.leading_ndim``).
        axes: letters of the labels' axes (``data``'s without channels), e.g. ``"TZYX"``; None
            where the file names none.
        pixel_size: micrometres per pixel along "Z", "Y", "X", those the file gives.
        channel: the channel the pipeline still has to pick (files without named axes); a
            channel of a named channel axis is picked here already.
        channel_names: the file's channel names (OME), if any.
        ngff: the OME-Zarr labels metadata for an OME-Zarr input, else None.
    """

    data: object
    name: str
    rgb: bool | None = None
    axes: str | None = None
    pixel_size: dict[str, float] = field(default_factory=dict)
    channel: int | None = None
    channel_names: tuple[str, ...] = ()
    ngff: dict | None = None
    close: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """(*leading, Y, X): the shape of this image's labels."""
        shape = tuple(int(n) for n in self.data.shape)
        if self.rgb is None:
            from .inference.pipeline import leading_ndim

            return shape[: leading_ndim(shape) + 2]
        return shape[:-1] if self.rgb else shape

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(path: str | Path, channel: int | str | None = None) -> ImageSource:
    """Open an image file or zarr folder for segmentation, reading its planes only when asked.

    Args:
        channel: the channel to segment, by number (0 first) or OME channel name; None: all
            channels, mixed as ``inference.image.to_rgb_uint8`` does (RGB stays RGB).

    Raises:
        FileNotFoundError, IsADirectoryError, CorruptFileError: as :func:`~napari_clipsam._io.read_image`.
        ValueError: axes that cannot be segmented, or a channel that does not exist; the
            message names the axes or channels found and what is supported.
    """
    from ._zarr_files import is_zarr

    path = Path(path)
    if is_zarr(path):
        return _open_zarr(path, channel)
    path = check_image_file(path)
    if path.suffix.lower() in {".tif", ".tiff"}:
        return _open_tiff(path, channel)
    return from_array(read_image(path), str(path), channel)


def from_array(array, name: str, channel: int | str | None = None) -> ImageSource:
    """An array whose axes nothing names (the pipeline guesses them); ``channel`` by number only."""
    refuse_channel_name(name, channel)
    return ImageSource(array, name, channel=channel)


def refuse_channel_name(name: str, channel: int | str | None) -> None:
    """Refuse a channel given by name for an image that names no channels."""
    if isinstance(channel, str):
        raise UnsupportedImageError(f"{name}: no channel is named {channel!r}: this image names no channels (OME-TIFF and "
                         "OME-Zarr files do); give the channel's number, 0 for the first.")


def _open_tiff(path: Path, channel: int | str | None) -> ImageSource:
    import tifffile
    import zarr

    with reading_errors(path, "a TIFF"), tiff_damage_raises():
        tif = tifffile.TiffFile(path)
    try:
        with reading_errors(path, "a TIFF"), tiff_damage_raises():
            series = tif.series[0]
            axes = series.axes.upper()
            store = series.aszarr(level=0)
            array = zarr.open(store, mode="r")
        names, pixel_size = _tiff_metadata(tif, series, path)
        data, rgb, label_axes = arrange(array, axes, channel, names, str(path), kind="a TIFF")
    except BaseException:
        tif.close()
        raise

    def close() -> None:
        store.close()
        tif.close()

    pixel_size = {letter: size for letter, size in pixel_size.items() if letter in label_axes}
    return ImageSource(data, str(path), rgb=rgb, axes=label_axes, pixel_size=pixel_size, channel_names=names,
                       close=close)


def _open_zarr(path: Path, channel: int | str | None) -> ImageSource:
    from ._zarr_files import micrometres_per_unit, open_zarr

    with reading_errors(path, "a zarr folder"):
        image = open_zarr(path)
    if image.axes is None:
        array = image.array
        return from_array(_ArrangedArray(array, list(range(array.ndim)), {}, path, "a zarr folder"), str(path),
                          channel)
    data, rgb, label_axes = arrange(image.array, image.axes, channel, image.channel_names, str(path),
                                    kind="an OME-Zarr image")
    pixel_size = {}
    for letter in "ZYX":
        factor = micrometres_per_unit(image.ngff_axes.get(letter, {}).get("unit"))
        if letter in label_axes and factor is not None:
            pixel_size[letter] = image.scale[letter] * factor
    ngff = image.labels_metadata(label_axes, name=path.stem)
    return ImageSource(data, str(path), rgb=rgb, axes=label_axes, pixel_size=pixel_size,
                       channel_names=image.channel_names, ngff=ngff)


def arrange(array, axes: str, channel: int | str | None, names: tuple[str, ...], name: str, kind: str = "an image"):
    """``array`` with axes ``axes`` as the pipeline takes it: ``(data, rgb, label_axes)``.

    Leading axes keep the file's order, then Y, X, then the channels (``rgb``) unless
    ``channel`` picks one (or the channel axis has one entry). ``data`` reads lazily.
    """
    shape = tuple(int(n) for n in array.shape)
    problem = _axes_problem(axes, shape)
    if problem:
        raise UnsupportedImageError(f"{name}: its axes {axes} (shape {shape}) cannot be segmented: {problem}. {SUPPORTED}.")
    channel_axes = [i for i, letter in enumerate(axes) if letter in CHANNELS]
    fixed = {i: 0 for i in channel_axes if shape[i] == 1}
    wide = [i for i in channel_axes if shape[i] > 1]
    if len(wide) > 1:
        raise UnsupportedImageError(f"{name}: its axes {axes} (shape {shape}) hold two channel axes, C and S; {SUPPORTED}.")
    target = wide[0] if wide else channel_axes[0] if channel_axes else None
    names = names if target is not None and len(names) == shape[target] else ()
    rgb = bool(wide)
    if channel is not None:
        if target is None:
            raise UnsupportedImageError(f"{name}: there is no channel to choose (its axes are {axes}); leave out --channel.")
        fixed[target] = _channel_index(channel, shape[target], names, name)
        rgb = False
    elif rgb and shape[wide[0]] > MAX_CHANNELS:
        raise UnsupportedImageError(f"{name}: {shape[wide[0]]} channels ({_listing(names, shape[wide[0]])}) are more than "
                         f"{MAX_CHANNELS} to mix into one image; choose one by number or name (--channel).")
    leading = [i for i, letter in enumerate(axes) if letter in LEADING]
    order = leading + [axes.index("Y"), axes.index("X")] + (wide if rgb else [])
    label_axes = "".join(axes[i] for i in leading) + PLANE
    return _ArrangedArray(array, order, fixed, Path(name), kind), rgb, label_axes


def _axes_problem(axes: str, shape: tuple[int, ...]) -> str | None:
    if len(axes) != len(shape):
        return f"{len(axes)} axis letters for {len(shape)} dimensions"
    unknown = sorted(set(axes) - set(PLANE + CHANNELS + LEADING))
    if unknown:
        return f"unknown axis letter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
    repeated = sorted({letter for letter in axes if axes.count(letter) > 1})
    if repeated:
        return f"the axis {', '.join(repeated)} appears more than once"
    missing = [letter for letter in PLANE if letter not in axes]
    if missing:
        return f"no {' and no '.join(missing)} axis: a plane needs both Y and X"
    return None


def _channel_index(channel: int | str, count: int, names: tuple[str, ...], name: str) -> int:
    if isinstance(channel, str):
        matches = [i for i, n in enumerate(names) if n == channel] or \
                  [i for i, n in enumerate(names) if n.casefold() == channel.casefold()]
        if len(matches) == 1:
            return matches[0]
        what = f"its channels are {_listing(names, count)}" if names else \
            f"the file names no channels; give a number from 0 to {count - 1}"
        raise UnsupportedImageError(f"{name}: no channel is named {channel!r}; {what}.")
    if not -count <= channel < count:
        raise UnsupportedImageError(f"{name}: there is no channel {channel}; it has {count} channels "
                         f"({_listing(names, count)}).")
    return channel % count


def _listing(names: tuple[str, ...], count: int) -> str:
    return ", ".join(f"{i} {n!r}" for i, n in enumerate(names)) if names else f"numbers 0 to {count - 1}"


class _ArrangedArray:
    """``source`` with some axes picked (``fixed``: axis -> index) and the rest in ``order``, read lazily.

    Indexing takes integers and slices (what the pipeline reads: a plane, a tile); a failed
    read raises :class:`~napari_clipsam.errors.CorruptFileError` naming the file.
    """

    def __init__(self, source, order: list[int], fixed: dict[int, int], path: Path, kind: str) -> None:
        self.source, self.order, self.fixed, self.path, self.kind = source, order, fixed, path, kind
        self.shape = tuple(int(source.shape[i]) for i in order)
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > self.ndim or not all(isinstance(k, (int, np.integer, slice)) for k in key):
            raise IndexError(f"index with at most {self.ndim} integers and slices, got {key!r}")
        key = key + (slice(None),) * (self.ndim - len(key))
        source_key: list = [slice(None)] * len(self.source.shape)
        for axis, index in self.fixed.items():
            source_key[axis] = index
        for axis, part in zip(self.order, key):
            source_key[axis] = part
        with self._reading():
            block = np.asarray(self.source[tuple(source_key)])
        kept = [axis for axis, part in enumerate(source_key) if isinstance(part, slice)]
        wanted = [axis for axis, part in zip(self.order, key) if isinstance(part, slice)]
        return block.transpose([kept.index(axis) for axis in wanted])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[()]
        return array if dtype is None else array.astype(dtype)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with reading_errors(self.path, self.kind), tiff_damage_raises():
            yield


def _tiff_metadata(tif, series, path: Path) -> tuple[tuple[str, ...], dict[str, float]]:
    """(channel names, micrometres per pixel by axis letter) from OME-XML, ImageJ's or TIFF's tags."""
    try:
        if tif.is_ome:
            return _ome_metadata(tif)
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        if tif.is_imagej:
            metadata = tif.imagej_metadata or {}
            factor = _unit_factor(metadata.get("unit"))
            sizes = _from_resolution(page, factor)
            if factor and metadata.get("spacing") and "Z" in series.axes:
                sizes["Z"] = float(metadata["spacing"]) * factor
            return (), sizes
        # TIFF's own units: 2 inch, 3 centimetre (tifffile also reads 4 mm and 5 µm).
        factor = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(int(page.resolutionunit))
        return (), _from_resolution(page, factor)
    except Exception as err:  # metadata a writer got wrong must not stop the pixels from being segmented
        logger.warning("%s: its metadata cannot be read (%s); no channel names or pixel size taken from it.", path, err)
        return (), {}


def _unit_factor(unit) -> float | None:
    from ._zarr_files import micrometres_per_unit

    return micrometres_per_unit(str(unit)) if unit else None


def _from_resolution(page, factor: float | None) -> dict[str, float]:
    x_resolution, y_resolution = page.resolution  # pixels per unit
    if not factor or x_resolution <= 0 or y_resolution <= 0:
        return {}
    return {"Y": factor / y_resolution, "X": factor / x_resolution}


def _ome_metadata(tif) -> tuple[tuple[str, ...], dict[str, float]]:
    import tifffile

    image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    channels = pixels.get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    names = tuple(str(c.get("Name", "")) for c in channels)
    sizes = {}
    for letter in "ZYX":
        value = pixels.get(f"PhysicalSize{letter}")
        factor = _unit_factor(pixels.get(f"PhysicalSize{letter}Unit", "µm"))  # OME's default unit
        if value and factor:
            sizes[letter] = float(value) * factor
    return (names if any(names) else ()), sizes


__all__ = ["ImageSource", "arrange", "from_array", "open_image", "refuse_channel_name"]
