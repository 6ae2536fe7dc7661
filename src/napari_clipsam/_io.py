"""Reading images and writing label images (used by the CLI and the training datasets)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


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
    """Write a label image (.tif, .png or .npy) through a temporary file, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    temporary = path.with_name(f".{path.name}.partial{path.suffix}")
    if suffix == ".npy":
        np.save(temporary, labels)
    elif suffix in {".tif", ".tiff"}:
        import tifffile

        tifffile.imwrite(temporary, labels, compression="zlib")
    elif suffix == ".png":
        if labels.max(initial=0) > 65535:
            raise ValueError(f"{path}: more than 65535 labels do not fit a PNG; use .tif")
        from skimage import io

        io.imsave(temporary, labels.astype(np.uint16), check_contrast=False)
    else:
        raise ValueError(f"{path}: unknown output format {suffix!r}; use .tif, .png or .npy")
    temporary.replace(path)
