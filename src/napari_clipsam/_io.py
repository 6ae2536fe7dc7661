"""Reading images and writing label images (used by the CLI and the training datasets).

:func:`read_image` reads a whole file by its suffix; :func:`napari_clipsam._image_files.open_image`
opens one lazily by its axes (OME-TIFF, OME-Zarr) for the CLI. Writes are atomic.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ClipSamError, CorruptFileError, OutputExistsError


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], *, replace: bool = True) -> Path:
    """Call ``write(temporary_path)``, then move the complete file to ``path``.

    - ``path`` only ever holds a complete file: a failure, Cancel or kill mid-write leaves
      any earlier file there as it was. The temporary file sits in the same folder and ends
      with the same suffix (writers such as numpy and tifffile go by it); one left by a
      killed process is removed by the next write to the same path.
    - ``replace=False`` commits without replacing: if a file appears at ``path`` meanwhile
      (another process), this write fails with :class:`OutputExistsError` and the other
      file stays.
    - The file gets the permissions a new file gets under the umask (not the private 0600
      of a temporary file), so a shared folder stays shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if not replace and path.exists():
        raise OutputExistsError(_exists_message(path))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path, os.getpid()),
                                         suffix=f".tmp{path.suffix}")
    os.close(handle)
    try:
        write(temporary)
        give_new_file_permissions(temporary)
        if replace:
            os.replace(temporary, path)
        else:
            _commit_without_replacing(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def _temporary_prefix(path: Path, pid: int) -> str:
    # The writer's process id in the name tells a killed writer's leftovers from a live one's.
    return f".{path.name}.{pid}-"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files that killed processes left while writing ``path``; returns them."""
    removed = []
    prefix = f".{path.name}."
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*-*.tmp{glob.escape(path.suffix)}"):
        pid_text = candidate.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            if candidate.is_dir() and not candidate.is_symlink():  # a zarr folder being written
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _commit_without_replacing(temporary: str, path: Path) -> None:
    """Put ``temporary`` at ``path`` only if nothing is there: one atomic step, no replacing."""
    try:
        os.link(temporary, path)  # a hard link fails where the name exists: no race with other writers
    except FileExistsError:
        raise OutputExistsError(_exists_message(path)) from None
    except OSError:
        # Filesystems without hard links: claim the name exclusively, then fill it.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise OutputExistsError(_exists_message(path)) from None
        os.replace(temporary, path)


def _exists_message(path: Path) -> str:
    return f"{path} exists (another run may have written it meanwhile); it was left as it is."


def give_new_file_permissions(path: str | os.PathLike) -> None:
    """Set ``path``'s permissions to those a new file gets under the umask (``0o666 & ~umask``).

    For files made private on purpose (``tempfile``'s 0600) and then moved into place.
    """
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (os.umask() sets it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image or label file as an array: .npy, TIFF (tifffile), or what scikit-image reads.

    The whole file, in the order of its axes as stored; :func:`~napari_clipsam._image_files.open_image`
    reads planes lazily and arranges them by the axes the file names (OME-TIFF, OME-Zarr).

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: naming the file, as ``open`` does.
        CorruptFileError: the file is empty, truncated, not in the format its suffix says, or
            holds no numeric image; the message names the file and what is wrong.
    """
    path = check_image_file(path)
    suffix = path.suffix.lower()
    with reading_errors(path, file_kind(path)):
        data = _read(path, suffix)
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf":
        what = type(data).__name__ if not isinstance(data, np.ndarray) else f"{data.dtype} values"
        raise CorruptFileError(f"{path}: holds {what}, not a numeric image.")
    if data.ndim < 2 or data.size == 0:
        raise CorruptFileError(f"{path}: holds an array of shape {data.shape}, not an image.")
    return data


def check_image_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, after refusing a missing, empty or folder path with a message naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file.")
    if path.is_file() and path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: the file is empty (an interrupted copy or download?).")
    return path


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return "a NumPy .npy file" if suffix == ".npy" else "a TIFF" if suffix in {".tif", ".tiff"} else "an image"


@contextlib.contextmanager
def reading_errors(path: Path, kind: str) -> Iterator[None]:
    """Turn what format libraries raise on a damaged file into :class:`CorruptFileError` naming ``path``."""
    try:
        yield
    except (MemoryError, ClipSamError):  # ours say what is wrong already (an unsupported axis is no damage)
        raise
    except OSError as err:
        if err.filename is not None:  # an unreadable file (permissions): the message names it already
            raise
        raise CorruptFileError(f"{path}: cannot be read as {kind}, truncated or damaged? ({_first_line(err)})") from err
    except Exception as err:  # each format library raises its own kinds; all mean this file is unreadable
        raise CorruptFileError(f"{path}: cannot be read as {kind}, truncated or damaged? "
                               f"({type(err).__name__}: {_first_line(err)})") from err


def _first_line(err: Exception) -> str:
    # imageio appends installation advice over several lines; the first says what is wrong.
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _read(path: Path, suffix: str) -> np.ndarray:
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in {".tif", ".tiff"}:
        return _read_tiff(path)
    from skimage import io

    return io.imread(path)


# What tifffile logs, instead of raising, where a TIFF is truncated or its page chain broken: it
# then returns what it could read (a stack cut short to its first plane) as if that were all.
_TIFF_DAMAGE = ("invalid page offset", "invalid offset to", "invalid value offset", "corrupted", "failed to reshape",
                "failed to read", "incompletely written", "is missing", "missing data", "missing bytecounts",
                "circular reference", "does not match")


class _ThreadWarnings(logging.Filter):
    """Notes the warnings logged by the creating thread (tifffile's logger is shared by all threads).

    A filter, not a handler: the messages still reach wherever they went before.
    """

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and record.thread == self.thread:
            self.messages.append(record.getMessage())
        return True


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tiff_damage_raises():
        return tifffile.imread(path)


@contextlib.contextmanager
def tiff_damage_raises() -> Iterator[None]:
    """Raise ValueError where tifffile, within the block, logged damage instead of raising."""
    logger = logging.getLogger("tifffile")
    warnings = _ThreadWarnings()
    logger.addFilter(warnings)
    try:
        yield
    finally:
        logger.removeFilter(warnings)
    damage = [message for message in warnings.messages if any(sign in message.lower() for sign in _TIFF_DAMAGE)]
    if damage:
        raise ValueError("; ".join(damage))


def write_labels(
    path: str | os.PathLike,
    labels,
    *,
    replace: bool = True,
    axes: str | None = None,
    pixel_size: Mapping[str, float] | None = None,
    ngff: dict | None = None,
) -> None:
    """Write a label image (.tif, .png, .npy or .zarr) atomically (see :func:`write_atomically`).

    Args:
        axes: letters of ``labels``' axes (e.g. ``"TZYX"``); a .tif is then an OME-TIFF naming them.
        pixel_size: micrometres per pixel along ``"Z"``, ``"Y"``, ``"X"`` (those known): a .tif
            carries them as OME physical sizes and as resolution tags, so the labels overlay the
            image at its scale in Fiji and napari. .png and .npy carry neither.
        ngff: a .zarr becomes an OME-Zarr labels group with this metadata
            (:func:`~napari_clipsam._zarr_files.zarr_labels`), else a plain zarr array.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        write_atomically(path, lambda temporary: np.save(temporary, np.asarray(labels)), replace=replace)
    elif suffix in {".tif", ".tiff"}:
        write_atomically(path, lambda temporary: _write_tiff(temporary, np.asarray(labels), axes, pixel_size or {}),
                         replace=replace)
    elif suffix == ".png":
        labels = np.asarray(labels)
        if labels.max(initial=0) > 65535:
            raise ValueError(f"{path}: more than 65535 labels do not fit a PNG; use .tif")
        from skimage import io

        write_atomically(
            path, lambda temporary: io.imsave(temporary, labels.astype(np.uint16), check_contrast=False),
            replace=replace,
        )
    elif suffix == ".zarr":
        from ._zarr_files import zarr_labels

        with zarr_labels(path, tuple(labels.shape), replace=replace, ngff=ngff) as out:
            out[...] = np.asarray(labels)
    else:
        raise ValueError(f"{path}: unknown output format {suffix!r}; use {', '.join(LABEL_SUFFIXES)}")


LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".zarr")
# Leading axes an OME-TIFF may name (tifffile's OME writer); 'I' (a plain sequence) is written as 'Q'.
_OME_LEADING = "TZQ"


def _write_tiff(path: str, labels: np.ndarray, axes: str | None, pixel_size: Mapping[str, float]) -> None:
    import tifffile

    options: dict = {"compression": "zlib"}
    if "X" in pixel_size and "Y" in pixel_size:
        # Pixels per centimetre: the TIFF unit ImageJ turns back into micrometres.
        options.update(resolution=(1e4 / pixel_size["X"], 1e4 / pixel_size["Y"]), resolutionunit="CENTIMETER")
    ome_axes = axes.replace("I", "Q") if axes else None
    if ome_axes and len(ome_axes) == labels.ndim and set(ome_axes[:-2]) <= set(_OME_LEADING) \
            and len(set(ome_axes)) == len(ome_axes):
        metadata: dict = {"axes": ome_axes}
        for letter, size in pixel_size.items():
            metadata.update({f"PhysicalSize{letter}": size, f"PhysicalSize{letter}Unit": "µm"})
        options.update(ome=True, metadata=metadata)
    tifffile.imwrite(path, labels, **options)
