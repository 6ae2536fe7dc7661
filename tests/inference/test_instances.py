"""inference/instances.py: the interior point every click-on-an-object uses (refinement,
propagation, the quality benchmark and the demo-quality tests), and a click's regions."""

import numpy as np
import pytest

from napari_clipsam.inference.instances import clicked_object, interior_point, regions_holding


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


def test_a_negative_click_inside_the_mask_parts_it_halfway_along_the_mask():
    mask = np.zeros((20, 60), bool)
    mask[5:15, 5:45] = True  # one bar; the click at x = 10, a negative one at x = 30: they part at x = 20
    mask[16:19, 50:58] = True  # a region apart from the click
    positive, negative = [10.0, 10.0], [30.0, 10.0]
    kept = clicked_object(mask, np.array([positive, negative]), np.array([1, 0]))
    assert kept[5:15, 5:20].all() and not kept[:, 21:].any()
    # The path counts, not the straight line: a hairpin, the click low on its left arm, the negative one high
    # on its right arm, 6 px across the gap but 70 px away along the mask.
    hairpin = np.zeros((40, 24), bool)
    hairpin[2:40, 10:14] = hairpin[2:40, 16:20] = hairpin[36:40, 10:20] = True
    kept = clicked_object(hairpin, np.array([[12.0, 30.0], [18.0, 4.0]]), np.array([1, 0]))
    assert kept[2:40, 10:14].all() and not kept[2:24, 16:20].any()
    # Negative clicks off the mask, or on the positive click's pixel, change nothing; nor does a lone negative click.
    for points in ([positive, [30.0, 2.0], [55.0, 17.0]], [positive, positive]):
        np.testing.assert_array_equal(clicked_object(mask, np.array(points), np.array([1, 0, 0][: len(points)])),
                                      regions_holding(mask, np.array([positive])))
    np.testing.assert_array_equal(clicked_object(mask, np.array([negative]), np.array([0])), mask)


def test_with_a_box_only_a_negative_click_changes_the_mask():
    mask = np.zeros((20, 60), bool)
    mask[5:15, 5:45] = True  # a bar holding the click (x = 10) and a negative one (x = 30): parted at x = 20
    mask[16:19, 50:58] = True  # a region no click touches: a box keeps it
    mask[1:4, 50:58] = True  # a region holding only a negative click: dropped
    points, labels = np.array([[10.0, 10.0], [30.0, 10.0], [52.0, 2.0]]), np.array([1, 0, 0])
    kept = clicked_object(mask, points, labels, keep_unclicked=True)
    expected = np.zeros_like(mask)
    expected[5:15, 5:21] = expected[16:19, 50:58] = True
    assert kept[5:15, 5:20].all() and not kept[5:15, 21:45].any()
    np.testing.assert_array_equal(kept[:, 21:], expected[:, 21:])
    # Without the box the untouched region goes too; with it and no negative click the mask stays whole.
    assert not clicked_object(mask, points, labels)[16:19, 50:58].any()
    np.testing.assert_array_equal(clicked_object(mask, points[:1], labels[:1], keep_unclicked=True), mask)
    # No positive click on the mask: as it is, negative clicks and all.
    np.testing.assert_array_equal(clicked_object(mask, points[1:], labels[1:], keep_unclicked=True), mask)
