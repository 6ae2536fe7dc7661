"""Reading images and writing label images (used by the CLI and the training datasets)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)``, then rename the result onto ``path``.

    The temporary file sits in the same folder and ends with the same suffix (writers
    such as numpy and tifffile go by it). ``path`` only ever holds a complete file: a
    failure or crash mid-write leaves any earlier file there as it was, and no
    temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image or label file as an array: .npy, TIFF (tifffile), or what scikit-image reads."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix.lower() in {".tif", ".tiff"}:
        import tifffile

        return tifffile.imread(path)
    from skimage import io

    return io.imread(path)


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label image (.tif, .png or .npy) atomically (see :func:`write_atomically`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        write_atomically(path, lambda temporary: np.save(temporary, labels))
    elif suffix in {".tif", ".tiff"}:
        import tifffile

        write_atomically(path, lambda temporary: tifffile.imwrite(temporary, labels, compression="zlib"))
    elif suffix == ".png":
        if labels.max(initial=0) > 65535:
            raise ValueError(f"{path}: more than 65535 labels do not fit a PNG; use .tif")
        from skimage import io

        write_atomically(
            path, lambda temporary: io.imsave(temporary, labels.astype(np.uint16), check_contrast=False)
        )
    else:
        raise ValueError(f"{path}: unknown output format {suffix!r}; use .tif, .png or .npy")
