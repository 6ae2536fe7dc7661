"""Zarr folders: plain arrays and OME-Zarr images read lazily, label arrays written atomically.

OME-Zarr is read as NGFF 0.4 (zarr v2, ``multiscales`` in the group's attributes) or 0.5 (the
same under ``ome``): level 0 of the first multiscale image, its axes by name and type, its
scale (and translation) per axis. Labels are written as NGFF 0.4 (zarr v2, the format most
readers take): a plain array, or, for an OME-Zarr input, a labels group (one level ``0``,
``multiscales`` with the image's axes less the channels and their scale, and ``image-label``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ._io import _exists_message, _temporary_prefix, _umask, remove_stale_temporaries
from .errors import CorruptFileError, OutputExistsError, UnsupportedImageError

NGFF_VERSION = "0.4"
# NGFF axis names and types as the axis letters used for TIFF (tifffile's).
_NAME_LETTERS = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
_TYPE_LETTERS = {"time": "T", "channel": "C"}


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr folder (by its suffix or the files zarr v2 and v3 put in it)."""
    return path.is_dir() and (path.suffix.lower() == ".zarr"
                              or any((path / name).is_file() for name in (".zarray", ".zgroup", "zarr.json")))


@dataclass
class ZarrImage:
    """What a zarr folder holds: the array and, for OME-Zarr, its axes and their scale.

    Attributes:
        array: the zarr array (level 0 of an OME-Zarr image), not read.
        axes: one letter per axis (``"TCZYX"``), None for a plain array (nothing names them).
        ngff_axes: per letter, the NGFF axis description ({"name", "type", "unit"}).
        scale, translation: per letter, the level-0 coordinate transformations.
        channel_names: the ``omero`` channel labels, if any.
    """

    array: object
    axes: str | None = None
    ngff_axes: dict[str, dict] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    translation: dict[str, float] = field(default_factory=dict)
    channel_names: tuple[str, ...] = ()

    def labels_metadata(self, label_axes: str, name: str) -> dict:
        """The group attributes of an NGFF labels image with ``label_axes`` (a subset of :attr:`axes`)."""
        transforms = [{"type": "scale", "scale": [self.scale.get(a, 1.0) for a in label_axes]}]
        if any(self.translation.get(a, 0.0) for a in label_axes):
            transforms.append({"type": "translation",
                               "translation": [self.translation.get(a, 0.0) for a in label_axes]})
        return {
            "multiscales": [{
                "version": NGFF_VERSION, "name": name, "axes": [self.ngff_axes[a] for a in label_axes],
                "datasets": [{"path": "0", "coordinateTransformations": transforms}],
            }],
            "image-label": {"version": NGFF_VERSION},
        }


def open_zarr(path: Path) -> ZarrImage:
    """The array in a zarr folder: the folder's array, or level 0 of its OME-Zarr image.

    Raises:
        CorruptFileError: the folder holds no array, a group without OME-Zarr ``multiscales``
            (the message lists its arrays to give instead), or OME-Zarr metadata that does not
            fit its array.
    """
    import zarr

    node = zarr.open(str(path), mode="r")
    if not hasattr(node, "shape"):  # a group
        attrs = dict(node.attrs)
        image = attrs.get("ome", attrs)
        if "multiscales" not in image:
            arrays = sorted(name for name, _ in node.arrays())
            hint = f"give one of its arrays, e.g. {path / arrays[0]} (arrays: {', '.join(arrays)})" if arrays \
                else "it holds no array"
            raise CorruptFileError(f"{path}: a zarr group without OME-Zarr 'multiscales' metadata; {hint}.")
        return _ome_zarr(path, node, image)
    return ZarrImage(node)


def _ome_zarr(path: Path, group, image: dict) -> ZarrImage:
    try:
        multiscale = image["multiscales"][0]
        dataset = multiscale["datasets"][0]
        array = group[dataset["path"]]
        axes = [{"name": a} if isinstance(a, str) else dict(a) for a in multiscale.get("axes", [])]
        if len(axes) != array.ndim:
            raise ValueError(f"{len(axes)} axes for an array of {array.ndim} dimensions")
        scale, translation = [1.0] * array.ndim, [0.0] * array.ndim
        # The dataset's transformations, then the multiscale's, each in order: x * scale + translation.
        transforms = [*dataset.get("coordinateTransformations", []), *multiscale.get("coordinateTransformations", [])]
        for transform in transforms:
            if transform.get("type") == "scale":
                factors = [float(v) for v in transform["scale"]]
                scale = [s * f for s, f in zip(scale, factors)]
                translation = [t * f for t, f in zip(translation, factors)]
            elif transform.get("type") == "translation":
                translation = [t + float(v) for t, v in zip(translation, transform["translation"])]
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise CorruptFileError(f"{path}: its OME-Zarr 'multiscales' metadata is incomplete or wrong ({err}).") from err
    letters = "".join(_axis_letter(axis) for axis in axes)
    if "?" in letters:
        found = ", ".join(f"{a.get('name')} ({a.get('type', 'no type')})" for a in axes)
        raise UnsupportedImageError(
            f"{path}: OME-Zarr axes {found}: a spatial axis that is not z, y or x cannot be segmented. "
            "Supported: axes named t, c, z, y, x, and other non-spatial axes before them.")
    names = tuple(str(channel.get("label", "")) for channel in image.get("omero", {}).get("channels", []))
    return ZarrImage(array, letters, dict(zip(letters, axes)), dict(zip(letters, scale)),
                     dict(zip(letters, translation)), names)


def _axis_letter(axis: dict) -> str:
    """An NGFF axis as a letter: t, c, z, y, x by name; time and channel axes by type; others 'Q'
    (a spatial axis of another name: '?')."""
    name, kind = str(axis.get("name", "")).lower(), axis.get("type")
    if name in _NAME_LETTERS:
        return _NAME_LETTERS[name]
    if kind == "space":
        return "?"
    return _TYPE_LETTERS.get(kind, "Q")


def micrometres_per_unit(unit: str | None) -> float | None:
    """How many micrometres one ``unit`` is (TIFF, ImageJ, OME and NGFF spellings); None if unknown."""
    if not unit:
        return None
    text = unit.strip().lower().replace("\\u00b5", "µ").replace("μ", "µ")  # ImageJ's escape, Greek mu
    return _UNITS.get(text)


_UNITS = {
    **dict.fromkeys(["µm", "um", "micron", "microns", "micrometer", "micrometre"], 1.0),
    **dict.fromkeys(["nm", "nanometer", "nanometre"], 1e-3),
    **dict.fromkeys(["å", "angstrom"], 1e-4),
    **dict.fromkeys(["pm", "picometer"], 1e-6),
    **dict.fromkeys(["mm", "millimeter", "millimetre"], 1e3),
    **dict.fromkeys(["cm", "centimeter", "centimetre"], 1e4),
    **dict.fromkeys(["m", "meter", "metre"], 1e6),
    **dict.fromkeys(["in", "inch"], 25400.0),
}


@contextlib.contextmanager
def zarr_labels(path: str | os.PathLike, shape: tuple[int, ...], *, chunks: tuple[int, ...] | None = None,
                replace: bool = True, ngff: dict | None = None) -> Iterator[object]:
    """A new int32 zarr array of ``shape`` to write labels into, put at ``path`` when the block ends.

    The array is made in a temporary sibling folder and renamed to ``path`` only when the block
    ends without an error: ``path`` never holds half the labels, a failure or Ctrl-C leaves no
    folder behind (one a killed process left is removed by the next write to ``path``), and
    without ``replace`` an existing ``path`` (made meanwhile, say) is left as it is. The array
    handed out points into the temporary folder: read what was written, if needed, inside the block.

    Args:
        chunks: the array's chunks, e.g. one plane or one tile (default: one plane).
        ngff: group attributes (:meth:`ZarrImage.labels_metadata`): the array is then level ``0``
            of an OME-Zarr labels group at ``path``; None: ``path`` is a plain array.
    """
    import zarr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if not replace and os.path.lexists(path):
        raise OutputExistsError(_exists_message(path))
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temporary_prefix(path, os.getpid()),
                                      suffix=f".tmp{path.suffix}"))
    try:
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp's folder is private; a new folder is not
        where = temporary
        if ngff is not None:
            zarr.open_group(str(temporary), mode="w", zarr_format=2).attrs.update(ngff)
            where = temporary / "0"
        plane = tuple(shape[-2:])
        out = zarr.open_array(store=str(where), mode="w", shape=shape, dtype="int32", fill_value=0,
                              chunks=chunks or (1,) * (len(shape) - 2) + plane, dimension_separator="/", zarr_format=2)
        yield out
        _commit_folder(temporary, path, replace)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _commit_folder(temporary: Path, path: Path, replace: bool) -> None:
    if not replace:
        try:
            os.mkdir(path)  # claims the name: fails where anything is there, no race with other writers
        except FileExistsError:
            raise OutputExistsError(_exists_message(path)) from None
        try:
            os.rename(temporary, path)  # POSIX: a folder replaces an empty folder in one step
        except OSError:
            os.rmdir(path)
            os.rename(temporary, path)
        return
    if not os.path.lexists(path):
        os.rename(temporary, path)
        return
    # Replacing: the old output steps aside under a temporary name (removed by the next write if
    # this process dies here), the new one takes its place, then the old one goes.
    aside = path.with_name(f"{_temporary_prefix(path, os.getpid())}{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    os.rename(path, aside)
    try:
        os.rename(temporary, path)
    except BaseException:
        os.rename(aside, path)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


__all__ = ["ZarrImage", "is_zarr", "micrometres_per_unit", "open_zarr", "zarr_labels"]
