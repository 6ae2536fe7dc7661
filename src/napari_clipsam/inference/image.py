"""Conversion of user images to the 8-bit RGB that SAM and CLIP take."""

from __future__ import annotations

import numpy as np

# Percentiles used to scale non-8-bit images: robust to a few hot or dead pixels.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
# A 3-D array whose last axis is at most this long is read as (H, W, channels).
MAX_CHANNELS = 8

_EXPECTED = (
    "Expected a 2-D image (H, W) or a channels-last image (H, W, C) with C <= "
    f"{MAX_CHANNELS} (gray, RGB, RGBA or other channel counts)."
)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the [0.5, 99.5] percentile range of the finite values to 0..255.

    NaN and -inf become 0, +inf becomes 255; a constant image becomes 0.
    """
    values = values.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError("The image has no finite values (all NaN or infinite); nothing to segment.")
    finite_values = values[finite]
    low, high = np.percentile(finite_values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high <= low:
        # Few distinct values (masks, sparse images): fall back to the full range.
        low, high = float(finite_values.min()), float(finite_values.max())
    out = np.zeros(values.shape, dtype=np.float64)
    if high > low:
        out[finite] = (finite_values - low) / (high - low) * 255.0
    out[np.isposinf(values)] = 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_rgb_uint8(image, channel: int | None = None) -> np.ndarray:
    """Convert an image to (H, W, 3) uint8 RGB for SAM and CLIP.

    - uint8 RGB passes through unchanged (exactly what ``SamPredictor`` would get).
    - bool becomes 0/255; other dtypes (uint16, int, float) are scaled so that the
      0.5th..99.5th percentiles of the finite values span 0..255; NaN and -inf become
      0, +inf 255. An image with no finite value is rejected.
    - One channel is repeated to RGB; RGBA drops alpha; ``channel`` picks one channel
      of a multi-channel image. Other channel counts (2, 5..8) are reduced to gray by
      the mean of their separately scaled channels.

    Args:
        image: array-like of shape (H, W) or (H, W, C).
        channel: index of the channel to use, for multi-channel images.

    Raises:
        ValueError: empty, 1-D, 4-D or more, channels-first or unsupported-dtype input,
            with a message that says what is expected.
    """
    array = np.asarray(image)
    if array.dtype == object or array.dtype.kind in "USV":
        raise ValueError(f"The image must be numeric, got dtype {array.dtype}. {_EXPECTED}")
    if array.dtype.kind == "c":
        raise ValueError(
            "The image is complex-valued; pass its magnitude (np.abs(image)) or a real part."
        )
    if array.size == 0:
        raise ValueError(f"The image is empty (shape {array.shape}). {_EXPECTED}")
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        if array.shape[-1] > MAX_CHANNELS:
            hint = " For a 3-D stack or time series, pass one plane, e.g. image[z]."
            if array.shape[0] <= MAX_CHANNELS:
                hint += " If the channels come first, use np.moveaxis(image, 0, -1)."
            raise ValueError(f"Got a 3-D array of shape {array.shape}. {_EXPECTED}{hint}")
    else:
        raise ValueError(
            f"Got a {array.ndim}-D array of shape {array.shape}. {_EXPECTED}"
            + (" For stacks, pass one 2-D plane at a time." if array.ndim > 3 else "")
        )
    if min(array.shape[:2]) < 2:
        raise ValueError(f"The image is too small to segment: shape {array.shape[:2]}. {_EXPECTED}")

    channels = array.shape[-1]
    if channel is not None:
        if not -channels <= channel < channels:
            raise ValueError(f"channel={channel} does not exist; the image has {channels} channels.")
        array = array[..., channel : channel + 1] if channel != -1 else array[..., -1:]
        channels = 1
    elif channels == 4:
        array = array[..., :3]
        channels = 3

    if array.dtype == np.uint8:
        scaled = array
    elif array.dtype == bool:
        scaled = array.astype(np.uint8) * 255
    elif channels == 3:
        # Joint scaling keeps the colour balance of an RGB image.
        scaled = _scale_to_uint8(array)
    else:
        scaled = np.stack([_scale_to_uint8(array[..., c]) for c in range(channels)], axis=-1)

    if channels == 3:
        return np.ascontiguousarray(scaled)
    if channels == 1:
        gray = scaled[..., 0]
    else:
        gray = np.rint(scaled.astype(np.float32).mean(axis=-1)).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))


def leading_ndim(shape: tuple[int, ...], rgb: bool | None = None) -> int:
    """How many axes of an image of ``shape`` come before its 2-D planes (z, t, ...).

    Args:
        rgb: whether the last axis holds channels; None guesses it as napari does for
            RGB(A) and as :func:`to_rgb_uint8` reads images: a last axis of at most
            ``MAX_CHANNELS`` on a 3-D or larger array.
    """
    ndim = len(shape)
    if rgb is None:
        rgb = ndim >= 3 and shape[-1] <= MAX_CHANNELS
    planes = ndim - (3 if rgb else 2)
    if planes < 0:
        raise ValueError(f"An image of shape {tuple(shape)} has no 2-D plane to segment.")
    return planes
