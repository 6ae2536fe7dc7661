"""inference/instances.py: the interior point every click-on-an-object uses (refinement,
propagation, the quality benchmark and the demo-quality tests), and a click's regions."""

import numpy as np
import pytest

from napari_clipsam.inference.instances import interior_point, regions_holding


def test_the_interior_point_is_the_deepest_pixel_in_image_coordinates():
    mask = np.zeros((40, 60), bool)
    mask[10:31, 30:51] = True  # a 21 x 21 square: its centre is (x 40, y 20)
    mask[2:4, 2:4] = True  # a small second part elsewhere, shallower
    assert interior_point(mask).tolist() == [40.0, 20.0]


def test_the_image_border_counts_as_outside():
    mask = np.zeros((20, 20), bool)
    mask[:, :9] = True  # touches the left, top and bottom borders: deepest along column 4, middle rows
    x, y = interior_point(mask)
    assert x == 4.0 and 4 <= y <= 15


def test_ties_go_to_the_first_pixel_in_raster_order():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 1:9] = True  # a 3-pixel-high bar: the whole middle row is equally deep
    assert interior_point(mask).tolist() == [2.0, 3.0]


def test_an_empty_mask_is_refused():
    with pytest.raises(ValueError, match="at least one pixel"):
        interior_point(np.zeros((5, 5), bool))


def test_a_clicks_mask_keeps_the_regions_that_hold_a_click():
    mask = np.zeros((30, 30), bool)
    mask[2:10, 2:10] = True  # region A
    mask[10:14, 10:14] = True  # region B, joined to A at one corner only (8-connected: one region with A)
    mask[20:25, 20:28] = True  # region C, apart
    mask[2:5, 20:24] = True  # region D, apart
    a_and_b = np.zeros_like(mask)
    a_and_b[2:10, 2:10] = a_and_b[10:14, 10:14] = True
    np.testing.assert_array_equal(regions_holding(mask, np.array([[5.0, 5.0]])), a_and_b)
    # Two clicks, two regions; a click off the mask adds nothing.
    both = regions_holding(mask, np.array([[5.0, 5.0], [24.4, 22.2], [0.0, 29.0]]))
    np.testing.assert_array_equal(both, a_and_b | (np.arange(30)[:, None] >= 20) & (np.arange(30)[None] >= 20) & mask)
    assert not both[2:5, 20:24].any()
    # No click on the mask (or outside the image): the mask as it is.
    np.testing.assert_array_equal(regions_holding(mask, np.array([[0.0, 29.0], [-3.0, 40.0]])), mask)
