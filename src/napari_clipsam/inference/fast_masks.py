"""SAM's masks at the image's size, upsampled only where a mask can be.

SAM's low-resolution logits (B, C, h, w) become masks by two bilinear resizes (to the
padded input frame; the padding cut off, to the image's size) and a threshold:
``logits_to_image(...) > threshold`` (``sam_frame.py``), the reference. Over a 4096 px
image those resizes cost more than the decoder. Both are local and their weights are
non-negative: an output pixel is a weighted mean of at most 2x2 samples of the step
before, so it exceeds a threshold of 0 only if one of its low-resolution sources does.
:func:`masks_at_image_size` therefore resizes, mask by mask, only the box of the pixels
that have such a source, and leaves the rest False.

Inside the box the values must equal those of the whole-image resize bit for bit, so
that the masks are identical: each resize is done as two 1-D passes (columns, then rows:
the order of PyTorch's CPU kernel) with the source indices and weights PyTorch computes
for the full sizes, and with its rounding (a fused multiply-add, reproduced by a float64
product and sum rounded once). Whether this matches ``F.interpolate`` on the running
build is checked once on a probe (:func:`window_is_exact`). ATen resizes some shapes
with another, separable kernel that rounds differently (:func:`_generic_kernel`). Where
the result would not be identical (those shapes, another CPU build, a GPU, a low
precision), the whole-image reference runs instead.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from .sam_frame import logits_to_image

# What one output pixel of the windowed resize costs, in pixels of ``F.interpolate``
# (gathers and float64 rounding): 3-5 for boxes up to half the image's side, up to 15
# for a whole 4096 px image (measured on a 2-core x86 CPU). Larger boxes take the
# whole-image resize, so that no mask costs more than before.
_WINDOW_COST = 8


class _Resize(NamedTuple):
    """PyTorch's bilinear resize (align_corners=False) of one axis of ``source`` to ``target`` samples.

    Output sample i is ``first_weight[i] * x[first[i]] + second_weight[i] * x[second[i]]``;
    all arrays are (target,): int64 indices, float32 weights.
    """

    first: np.ndarray
    second: np.ndarray
    first_weight: np.ndarray
    second_weight: np.ndarray
    copies: bool  # equal sizes: sample i is source sample i


class _Axis(NamedTuple):
    """One axis of the whole chain: low-res -> frame (only the image's part used) -> image."""

    to_frame: _Resize
    to_image: _Resize
    lowest: np.ndarray  # (image samples,) the lowest low-res index each image sample depends on
    highest: np.ndarray  # (image samples,) the highest one


@functools.lru_cache(maxsize=64)
def _resize(source: int, target: int) -> _Resize:
    """Indices and weights as ATen's ``compute_source_index_and_lambda`` computes them.

    The source position ``scale * (i + 0.5) - 0.5`` is one fused multiply-add in float32
    (exact in float64, then rounded once), clamped at 0; equal sizes copy.
    """
    index = np.arange(target)
    if source == target:
        return _Resize(index, index, np.ones(target, np.float32), np.zeros(target, np.float32), True)
    scale = np.float64(np.float32(source) / np.float32(target))
    position = np.maximum((scale * (index + 0.5) - 0.5).astype(np.float32), np.float32(0))
    first = np.minimum(np.floor(position).astype(np.int64), source - 1)
    second_weight = np.clip(position - first.astype(np.float32), 0, 1).astype(np.float32)
    second = first + (first < source - 1)
    return _Resize(first, second, np.float32(1) - second_weight, second_weight, False)


@functools.lru_cache(maxsize=32)
def _axis(low: int, frame: int, extent: int, image: int) -> _Axis:
    """The chain for one axis: ``low`` logits, a ``frame`` of which ``extent`` is the image, ``image`` pixels."""
    to_frame, to_image = _resize(low, frame), _resize(extent, image)
    return _Axis(to_frame, to_image, to_frame.first[to_image.first], to_frame.second[to_image.second])


def _pass(values: torch.Tensor, dim: int, resize: _Resize, start: int, stop: int, offset: int) -> torch.Tensor:
    """Output samples [start, stop) of ``resize`` along ``dim`` of a window whose first sample is ``offset``.

    ``values`` must be finite: a resize to the same size then returns them unchanged.
    """
    if resize.copies:
        return values.narrow(dim, start - offset, stop - start)  # fma(x, 1, x * 0) == x for finite x
    device, shape = values.device, [-1 if axis == dim else 1 for axis in range(values.dim())]
    first = values.index_select(dim, torch.from_numpy(resize.first[start:stop] - offset).to(device))
    second = values.index_select(dim, torch.from_numpy(resize.second[start:stop] - offset).to(device))
    first_weight = torch.from_numpy(resize.first_weight[start:stop]).to(device).view(shape)
    second_weight = torch.from_numpy(resize.second_weight[start:stop]).to(device).view(shape)
    # ATen computes fma(first, first_weight, second * second_weight) in float32: the
    # product of two float32 numbers is exact in float64, so one rounding remains.
    return (first.double() * first_weight.double() + (second * second_weight).double()).float()


def _window(logits: torch.Tensor, rows: _Axis, cols: _Axis, row_range: tuple[int, int],
            col_range: tuple[int, int]) -> torch.Tensor:
    """``logits_to_image`` of one (h, w) map, for image rows and columns [start, stop) only."""
    (r0, r1), (c0, c1) = row_range, col_range
    frame_r0, frame_r1 = rows.to_image.first[r0], rows.to_image.second[r1 - 1] + 1
    frame_c0, frame_c1 = cols.to_image.first[c0], cols.to_image.second[c1 - 1] + 1
    low_r0, low_r1 = rows.to_frame.first[frame_r0], rows.to_frame.second[frame_r1 - 1] + 1
    low_c0, low_c1 = cols.to_frame.first[frame_c0], cols.to_frame.second[frame_c1 - 1] + 1
    values = logits[low_r0:low_r1, low_c0:low_c1]
    values = _pass(values, 1, cols.to_frame, frame_c0, frame_c1, low_c0)
    values = _pass(values, 0, rows.to_frame, frame_r0, frame_r1, low_r0)
    values = _pass(values, 1, cols.to_image, c0, c1, frame_c0)
    return _pass(values, 0, rows.to_image, r0, r1, frame_r0)


def _image_range(axis: _Axis, low_start: int, low_stop: int) -> tuple[int, int]:
    """Image samples [start, stop) that depend on a low-res sample in [low_start, low_stop)."""
    # ``lowest`` and ``highest`` never decrease along the axis: the samples form one run.
    return int(np.searchsorted(axis.highest, low_start)), int(np.searchsorted(axis.lowest, low_stop - 1, "right"))


def _generic_kernel(logits: torch.Tensor, out_height: int, out_width: int) -> bool:
    """Whether ATen resizes (B, C, h, w) ``logits`` to this size with the kernel :func:`_pass` reproduces.

    ``upsample_bilinear2d_kernel_impl_float`` (ATen's CPU kernel) takes a separable
    kernel for outputs with height + width <= 128, for 3 channels on one thread, and for
    channels-last inputs of more than 3 channels.
    """
    channels = logits.shape[1]
    return (
        out_height + out_width > 128
        and not (channels == 3 and torch.get_num_threads() == 1)
        and not (channels > 3 and logits.is_contiguous(memory_format=torch.channels_last))
    )


@functools.lru_cache(maxsize=None)
def _exact_on(device: torch.device) -> bool:
    """Whether :func:`_window` equals ``logits_to_image`` on ``device``, on probes (once per device)."""
    generator = torch.Generator().manual_seed(0)
    # Up- and downsampling, odd ratios, a cropped frame: each rounding path once.
    for low, frame, input_size, original in ((64, 256, (256, 181), (211, 150)), (64, 256, (187, 256), (97, 131))):
        logits = (torch.randn(1, 1, low, low, generator=generator) * 10).to(device)
        reference = logits_to_image(logits, frame, input_size, original)
        rows, cols = _axis(low, frame, input_size[0], original[0]), _axis(low, frame, input_size[1], original[1])
        window = _window(logits[0, 0], rows, cols, (0, original[0]), (0, original[1]))
        if not torch.equal(window, reference[0, 0]):
            return False
    return True


def window_is_exact(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> bool:
    """Whether the windowed resize reproduces ``F.interpolate``'s generic kernel bit for bit here."""
    return dtype == torch.float32 and _exact_on(torch.device(device))


def masks_at_image_size(
    logits: torch.Tensor,
    frame: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float,
    full_resolution: bool = False,
) -> torch.Tensor:
    """Masks (B, C, H, W) bool at ``original_size`` from SAM's low-res logits (B, C, h, w).

    Identical to ``logits_to_image(logits, frame, input_size, original_size) > threshold``
    (the reference, which ``full_resolution`` forces), but upsampled only in each mask's
    box: the cost follows the mask's size, not the image's.
    """
    exact = (
        window_is_exact(logits.device, logits.dtype)
        and _generic_kernel(logits, frame, frame)
        and _generic_kernel(logits, *original_size)
        and bool(torch.isfinite(logits).all())
    )
    if full_resolution or not exact:
        return logits_to_image(logits, frame, input_size, original_size) > threshold
    rows = _axis(logits.shape[-2], frame, input_size[0], original_size[0])
    cols = _axis(logits.shape[-1], frame, input_size[1], original_size[1])
    # A weighted mean with non-negative weights stays at or below the threshold when all
    # its sources do; exactly so for SAM's 0, and the slack covers rounding otherwise.
    support = logits > threshold - 1e-5 * abs(threshold)
    any_in_row, any_in_col = support.any(dim=-1).cpu().numpy(), support.any(dim=-2).cpu().numpy()
    boxes = {}  # mask index -> its box in the image, or None: the whole-image resize is cheaper
    for index in np.ndindex(*logits.shape[:-2]):
        hit_rows, hit_cols = np.flatnonzero(any_in_row[index]), np.flatnonzero(any_in_col[index])
        if hit_rows.size == 0:
            continue  # every logit at or below the threshold: an empty mask
        row_range = _image_range(rows, hit_rows[0], hit_rows[-1] + 1)
        col_range = _image_range(cols, hit_cols[0], hit_cols[-1] + 1)
        if row_range[0] >= row_range[1] or col_range[0] >= col_range[1]:
            continue  # the positive logits lie in the padding, outside the image
        area = (row_range[1] - row_range[0]) * (col_range[1] - col_range[0])
        large = area * _WINDOW_COST > frame * frame + original_size[0] * original_size[1]
        boxes[index] = None if large else (row_range, col_range)
    if len(boxes) == math.prod(logits.shape[:-2]) and all(box is None for box in boxes.values()):
        # Every mask nearly as large as the image (a click on a large object): the reference, as is.
        return logits_to_image(logits, frame, input_size, original_size) > threshold
    masks = torch.zeros((*logits.shape[:-2], *original_size), dtype=torch.bool, device=logits.device)
    for index, box in boxes.items():
        if box is None:
            masks[index] = logits_to_image(logits[index][None, None], frame, input_size, original_size)[0, 0] > threshold
        else:
            (r0, r1), (c0, c1) = box
            masks[index][r0:r1, c0:c1] = _window(logits[index], rows, cols, *box) > threshold
    return masks
