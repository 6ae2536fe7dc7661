"""inference/instances.py: the interior point every click-on-an-object uses (refinement,
propagation, the quality benchmark and the demo-quality tests)."""

import numpy as np
import pytest

from napari_clipsam.inference.instances import interior_point


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
