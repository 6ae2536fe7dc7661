"""Augmentation for few-shot training: flips, rotations, crops, intensity jitter, blur."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .data import Sample


def _dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90-degree rotations (k in 0..7) of the first two axes."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def _random_crop(shape: tuple[int, int], mask: np.ndarray, rng: np.random.Generator) -> tuple[slice, slice] | None:
    """A random crop of 40-100% of the area that keeps part of the mask; None if none found."""
    height, width = shape
    for _ in range(8):
        area = rng.uniform(0.4, 1.0) * height * width
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        h = int(round(min(height, math.sqrt(area / aspect))))
        w = int(round(min(width, math.sqrt(area * aspect))))
        if h < 16 or w < 16:
            continue
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = (slice(top, top + h), slice(left, left + w))
        if mask[crop].any():
            return crop
    return None


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast and brightness jitter, and sometimes a slight blur (microscopy-like)."""
    from scipy.ndimage import gaussian_filter

    values = image.astype(np.float32) / 255.0
    values = values ** rng.uniform(0.7, 1.4)
    values = (values - values.mean()) * rng.uniform(0.75, 1.3) + values.mean() + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.3:
        values = gaussian_filter(values, sigma=(rng.uniform(0.3, 1.2),) * 2 + (0,))
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Augmented:
    """A sample after geometric augmentation; ``key`` identifies its CLIP input for caching.

    ``objects`` are the sample's objects (int32, 0 elsewhere) and ``others`` its other
    concepts' pixels (bool, or None: see :class:`Sample`) under the same transform.
    """

    image: np.ndarray
    mask: np.ndarray
    key: tuple | None
    objects: np.ndarray
    others: np.ndarray | None = None


def augment(sample: Sample, index: int, rng: np.random.Generator, enabled: bool) -> Augmented:
    """Flips, 90-degree rotations and random resized crops (microscopy has no up or down)."""
    objects = sample.object_labels()
    if not enabled:
        return Augmented(sample.image, sample.mask, (index, 0), objects, sample.others)
    k = int(rng.integers(0, 8))
    image, mask, objects = _dihedral(sample.image, k), _dihedral(sample.mask, k), _dihedral(objects, k)
    others = None if sample.others is None else _dihedral(sample.others, k)
    crop = _random_crop(mask.shape, mask, rng) if rng.random() < 0.5 else None
    if crop is None:
        return Augmented(image, mask, (index, k), objects, others)
    image, mask, objects, others = (None if array is None else np.ascontiguousarray(array[crop])
                                    for array in (image, mask, objects, others))
    return Augmented(image, mask, None, objects, others)
