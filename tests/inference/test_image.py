"""Conversion of user images to SAM's 8-bit RGB."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clipsam import to_rgb_uint8


def test_uint8_rgb_passes_through_unchanged():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    out = to_rgb_uint8(image)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, image)


def test_gray_becomes_rgb_and_rgba_drops_alpha():
    gray = np.arange(600, dtype=np.uint8).reshape(20, 30)
    out = to_rgb_uint8(gray)
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    np.testing.assert_array_equal(to_rgb_uint8(gray[..., None]), out)
    rgba = np.dstack([gray, gray // 2, gray // 3, np.full_like(gray, 7)])
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgba[..., :3])


def test_other_dtypes_are_scaled_by_robust_percentiles():
    rng = np.random.default_rng(1)
    image = rng.uniform(1000, 2000, size=(50, 50)).astype(np.uint16)
    image[0, 0] = 65535  # one hot pixel must not squash the rest
    out = to_rgb_uint8(image)[..., 0]
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert 100 < np.median(out) < 155
    # Monotonic: brighter input never gives darker output.
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_float_and_bool_images():
    floats = np.linspace(-1, 1, 400, dtype=np.float32).reshape(20, 20)
    out = to_rgb_uint8(floats)[..., 0]
    assert out[0, 0] == 0 and out[-1, -1] == 255
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 2:5] = True
    out = to_rgb_uint8(mask)[..., 0]
    assert set(np.unique(out)) == {0, 255} and out[3, 3] == 255


def test_constant_image_becomes_zero():
    out = to_rgb_uint8(np.full((8, 8), 42.5))
    assert out.shape == (8, 8, 3) and not out.any()


def test_nan_and_inf_are_handled():
    image = np.linspace(0, 1, 100).reshape(10, 10)
    image[0, 0], image[0, 1], image[0, 2] = np.nan, np.inf, -np.inf
    out = to_rgb_uint8(image)[..., 0]
    assert out[0, 0] == 0 and out[0, 1] == 255 and out[0, 2] == 0
    with pytest.raises(ValueError, match="no finite values"):
        to_rgb_uint8(np.full((5, 5), np.nan))


def test_multichannel_images():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 1, size=(16, 16, 2)).astype(np.float32)
    out = to_rgb_uint8(image)
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    picked = to_rgb_uint8(image, channel=1)[..., 0]
    np.testing.assert_array_equal(picked, to_rgb_uint8(image[..., 1])[..., 0])
    with pytest.raises(ValueError, match="channel=5 does not exist"):
        to_rgb_uint8(image, channel=5)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 10)), "empty"),
        (np.zeros(10), "1-D"),
        (np.zeros((5, 64, 64)), "3-D stack"),
        (np.zeros((20, 64, 64)), "one plane"),
        (np.zeros((3, 64, 64)), "3-D array"),
        (np.zeros((2, 3, 64, 64)), "4-D"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
        (np.zeros((10, 10), dtype=complex), "complex"),
        (np.zeros((1, 10)), "too small"),
    ],
)
def test_nonsense_inputs_get_a_clear_error(image, message):
    with pytest.raises(ValueError, match=message) as info:
        to_rgb_uint8(image)
    assert "Expected" in str(info.value) or message in ("complex",)


def test_channels_first_input_gets_a_hint():
    with pytest.raises(ValueError, match="moveaxis"):
        to_rgb_uint8(np.zeros((3, 64, 64)))
