"""Masks upsampled only where they can be equal the whole-image upsampling, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam.inference import fast_masks
from napari_clipsam.inference.fast_masks import masks_at_image_size, window_is_exact
from napari_clipsam.inference.sam_frame import logits_to_image

# (low-res side, SAM frame, input size in the frame, original image size): SAM's 1024 frame
# for a 1024 image (the second resize a copy), a 4096 one, non-square and odd-sized images
# (up- and downsampled), and the tiny model's 256 frame.
GEOMETRIES = [
    (256, 1024, (1024, 1024), (1024, 1024)),
    (256, 1024, (1024, 1024), (4096, 4096)),
    (256, 1024, (768, 1024), (3000, 4000)),
    (256, 1024, (1024, 717), (1000, 700)),
    (256, 1024, (1024, 1024), (513, 517)),
    (64, 256, (192, 256), (96, 128)),
    (64, 256, (256, 79), (1300, 401)),
]


def _disc(low: int, centre: tuple[float, float], radius: float, seed: int = 0) -> torch.Tensor:
    """(low, low) logits: positive inside a disc, noisy so that its border is ragged."""
    yy, xx = torch.meshgrid(torch.arange(low, dtype=torch.float32), torch.arange(low, dtype=torch.float32),
                            indexing="ij")
    noise = torch.randn(low, low, generator=torch.Generator().manual_seed(seed))
    return radius - ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2).sqrt() + 0.5 * noise


def _logits(low: int, frame: int, input_size: tuple[int, int]) -> torch.Tensor:
    """(7, 1, low, low): small, edge-touching, corner, image-filling, empty, frame-corner and speckled masks."""
    scale = low / frame  # low-res samples per frame pixel
    bottom, right = input_size[0] * scale - 1, input_size[1] * scale - 1  # the image's last low-res row, column
    maps = [
        _disc(low, (low * 0.4, right * 0.3), low * 0.08, 1),
        _disc(low, (bottom, right * 0.5), low * 0.1, 2),  # touches the image's bottom edge
        _disc(low, (0, right), low * 0.15, 3),  # a corner: the image's top and right edges
        _disc(low, (low / 2, low / 2), 2.0 * low, 4),  # the whole image
        _disc(low, (low / 2, low / 2), -5.0, 5),  # no positive logit: an empty mask
        _disc(low, (low - 1, low - 1), low * 0.05, 6),  # the frame's corner: in the padding where there is one
        torch.randn(low, low, generator=torch.Generator().manual_seed(7)) - 1.5,  # speckles everywhere
    ]
    return torch.stack(maps)[:, None]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[3][0]}x{g[3][1]}")
def test_masks_equal_the_whole_image_resize(geometry):
    low, frame, input_size, original = geometry
    logits = _logits(low, frame, input_size)
    reference = logits_to_image(logits, frame, input_size, original) > 0
    masks = masks_at_image_size(logits, frame, input_size, original, 0.0)
    assert masks.shape == (7, 1, *original) and masks.dtype == torch.bool
    assert torch.equal(masks, reference)
    counts = reference.flatten(1).sum(1)
    assert counts[4] == 0 and counts[3] == original[0] * original[1]  # the cases are what they say
    assert reference[1, 0, -1].any() and reference[2, 0, 0, -1]  # masks touching the image's edges


@pytest.mark.parametrize("original", [(600, 401), (70, 50)], ids=["600x401", "70x50"])
@pytest.mark.parametrize("channels", [1, 3])
def test_masks_agree_where_a_pixel_sits_exactly_on_the_threshold(original, channels):
    # Thresholds equal to upsampled values: one rounding step off at such a pixel flips it.
    # 70x50 and 3 channels (on one thread) are sizes ATen resizes with another kernel.
    low, frame, input_size = 64, 256, (256, 171)
    logits = torch.stack([_disc(low, (20 + 9 * c, 25), 9.0, c) for c in range(2 * channels)]).reshape(2, channels,
                                                                                                      low, low)
    reference = logits_to_image(logits, frame, input_size, original)
    pixels = torch.Generator().manual_seed(0)
    for flat in torch.randint(0, reference.numel(), (24,), generator=pixels).tolist():
        threshold = float(reference.flatten()[flat])
        masks = masks_at_image_size(logits, frame, input_size, original, threshold)
        assert torch.equal(masks, reference > threshold), threshold


def test_a_window_holds_the_whole_image_values_bit_for_bit():
    if not window_is_exact():
        pytest.skip("this torch build rounds its bilinear resize otherwise: the whole-image path runs")
    low, frame, input_size, original = 256, 1024, (768, 1024), (3000, 4000)
    logits = torch.randn(1, 1, low, low, generator=torch.Generator().manual_seed(0)) * 10
    reference = logits_to_image(logits, frame, input_size, original)[0, 0]
    rows, cols = fast_masks._axis(low, frame, 768, 3000), fast_masks._axis(low, frame, 1024, 4000)
    for row_range, col_range in (((0, 3000), (0, 4000)), ((1, 2), (3999, 4000)), ((777, 1234), (5, 2999))):
        window = fast_masks._window(logits[0, 0], rows, cols, row_range, col_range)
        assert torch.equal(window, reference[slice(*row_range), slice(*col_range)])


def test_non_finite_logits_give_the_reference_masks():
    low, frame, input_size, original = 64, 256, (256, 256), (300, 300)
    logits = _disc(low, (30, 30), 8.0)[None, None].clone()
    logits[0, 0, 30, 30], logits[0, 0, 5, 50] = float("inf"), float("nan")
    reference = logits_to_image(logits, frame, input_size, original) > 0
    assert torch.equal(masks_at_image_size(logits, frame, input_size, original, 0.0), reference)


def test_small_masks_of_a_large_image_are_not_upsampled_whole(monkeypatch):
    if not window_is_exact():
        pytest.skip("this torch build rounds its bilinear resize otherwise: the whole-image path runs")
    low, frame, input_size, original = 256, 1024, (1024, 1024), (4096, 4096)
    logits = torch.stack([_disc(low, (60, 200), 6.0), _disc(low, (10, 10), -3.0)])[:, None]
    reference = logits_to_image(logits, frame, input_size, original) > 0
    calls = []
    monkeypatch.setattr(fast_masks, "logits_to_image", lambda *args: calls.append(args))
    masks = masks_at_image_size(logits, frame, input_size, original, 0.0)
    assert calls == [] and torch.equal(masks, reference) and reference[0].any()


@pytest.mark.parametrize("shape", [(96, 128), (256, 256), (700, 170)])
def test_predictor_masks_equal_the_full_resolution_path(tiny_model, shape):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, size=shape, dtype=np.uint8)
    image[shape[0] // 4 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = 255
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(image)
    height, width = shape
    prompts = [
        {"point_coords": [[width * 0.3, height * 0.3]]},
        {"point_coords": [[0, 0], [width - 1, height - 1]], "point_labels": [1, 0]},
        {"box": [width * 0.1, height * 0.2, width * 0.9, height - 1]},
        {"point_coords": [[width - 1, height / 2]], "multimask_output": True},
    ]
    for prompt in prompts:
        predictor.full_resolution_masks = False
        masks, scores, logits = predictor.predict(**prompt)
        predictor.full_resolution_masks = True
        expected, expected_scores, expected_logits = predictor.predict(**prompt)
        np.testing.assert_array_equal(logits, expected_logits)
        np.testing.assert_array_equal(masks, expected)
        assert masks.shape == (len(scores), *shape) and masks.dtype == bool
