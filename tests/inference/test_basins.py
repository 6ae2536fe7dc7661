"""Seeds' masks put together into objects: repeated masks join, overlaps go by watershed basins."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_clipsam.inference.basins import (
    LOGIT_SMOOTHING,
    assemble,
    crop_iou,
    crop_mask,
    depth_field,
    distance_to_background,
    find_seeds,
    group_seeds,
    seed_basins,
)
from tests.inference.test_seeds import XX, YY, disc  # discs on a 96 x 128 grid


def objects_from(mask: np.ndarray, seeds, masks, scores, threshold=0.0, min_area=0) -> np.ndarray:
    seeds = np.asarray(seeds, dtype=np.float64)
    crops = [None if m is None else crop_mask(m & mask) for m in masks]
    basins = seed_basins(mask, seeds, distance_to_background(mask))
    return assemble(mask, basins, crops, group_seeds(crops, np.asarray(scores, float), threshold), min_area)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_each_seed_owns_the_basin_around_it_and_touching_discs_part_at_the_neck():
    left, right = disc(40, 35, 18), disc(40, 68, 16)
    mask = left | right
    basins = seed_basins(mask, np.array([[35.0, 40.0], [68.0, 40.0]]), distance_to_background(mask))
    assert set(np.unique(basins)) == {0, 1, 2}
    np.testing.assert_array_equal(basins > 0, mask)
    assert iou(basins == 1, left) > 0.9 and iou(basins == 2, right & ~left) > 0.9


def test_masks_spreading_into_the_neighbour_still_give_each_disc_apart():
    left, right = disc(40, 35, 18), disc(40, 68, 16)
    mask = left | right
    # Each click's mask takes its disc and a wide band of the other (a little-trained model's).
    spread_left, spread_right = (ndimage.binary_dilation(disc_, iterations=14) for disc_ in (left, right))
    labels = objects_from(mask, [[35, 40], [68, 40]], [spread_left, spread_right], [0.9, 0.8])
    assert labels.max() == 2
    assert iou(labels == 1, left) > 0.9 and iou(labels == 2, right & ~left) > 0.9
    # Painting the better mask first would give it a third of the other disc.
    assert iou(mask & ~spread_left, right & ~left) < 0.7


def test_a_decoder_that_gives_each_object_exactly_gives_exactly_the_objects():
    left, right = disc(40, 30, 20), disc(40, 62, 12)  # unequal: the neck is not where the discs meet
    right &= ~left
    mask = left | right
    basins = seed_basins(mask, np.array([[30.0, 40.0], [62.0, 40.0]]), distance_to_background(mask))
    assert (basins[right] == 1).any() or (basins[left] == 2).any()  # the basins alone would miss the outline
    labels = objects_from(mask, [[30, 40], [62, 40]], [left, right], [0.9, 0.9])
    np.testing.assert_array_equal(labels == 1, left)
    np.testing.assert_array_equal(labels == 2, right)


def test_seeds_whose_masks_repeat_a_better_one_are_one_object():
    rod = (np.abs(YY - 40) <= 6) & (XX >= 20) & (XX <= 100)  # long: three seeds along it
    seeds = [[30, 40], [60, 40], [90, 40]]
    labels = objects_from(rod, seeds, [rod, rod, rod], [0.5, 0.9, 0.2], threshold=0.3)
    np.testing.assert_array_equal(labels, rod.astype(np.int32))  # the low-scoring third joins too


def test_objects_are_numbered_best_first_and_low_scores_start_none():
    a, b, c = disc(20, 20, 8), disc(20, 60, 8), disc(60, 100, 8)
    mask = a | b | c
    labels = objects_from(mask, [[20, 20], [60, 20], [100, 60]], [a, b, c], [0.3, 0.9, 0.05], threshold=0.1)
    np.testing.assert_array_equal(labels, np.where(b, 1, 0) + np.where(a, 2, 0))  # c: below the threshold


def test_seeds_without_a_mask_and_small_objects_are_dropped():
    a, b = disc(20, 20, 8), disc(60, 100, 2)
    mask = a | b
    labels = objects_from(mask, [[20, 20], [100, 60]], [None, b], [0.9, 0.9])
    np.testing.assert_array_equal(labels, b.astype(np.int32))  # a's seed decoded to nothing
    labels = objects_from(mask, [[20, 20], [100, 60]], [a, b], [0.5, 0.9], min_area=20)
    np.testing.assert_array_equal(labels, a.astype(np.int32))  # b (13 px) dropped, a renumbered 1


@pytest.mark.parametrize("offset", [(0, 0), (5, 9), (30, 70)])
def test_crop_iou_is_the_iou_of_the_whole_masks(offset):
    a = disc(40, 40, 15)
    b = np.roll(a, offset, axis=(0, 1))
    assert crop_iou(crop_mask(a), crop_mask(b)) == pytest.approx(iou(a, b))


def two_peaked_blob():
    """One elliptic mask over two objects (a decoder's mask that fills their neck), and
    logits that peak at each object's centre, (46, 48) and (82, 48) XY, and dip between them."""
    mask = ((XX - 64) / 38.0) ** 2 + ((YY - 48) / 20.0) ** 2 <= 1
    to_left, to_right = np.hypot(XX - 46, YY - 48), np.hypot(XX - 82, YY - 48)
    return mask, 12.0 - 0.5 * np.minimum(to_left, to_right)


def test_logits_that_dip_between_objects_part_them_where_the_mask_does_not_narrow():
    mask, logits = two_peaked_blob()
    assert len(find_seeds(mask, diameter=36)) == 1  # the mask's distance transform has one peak
    field = depth_field(mask, logits)
    seeds = find_seeds(mask, 36, field)
    assert len(seeds) == 2
    centres = np.array([[46.0, 48.0], [82.0, 48.0]])
    assert np.abs(np.sort(seeds, axis=0) - centres).max() <= 6, seeds
    basins = seed_basins(mask, seeds, field)
    np.testing.assert_array_equal(basins > 0, mask)
    left_basin = basins[48, 46]
    assert left_basin != basins[48, 82]
    # Each object's side of the dip is its basin.
    assert (basins[mask & (XX < 60)] == left_basin).mean() > 0.95
    assert (basins[mask & (XX > 68)] != left_basin).mean() > 0.95


def test_without_logits_or_with_flat_ones_the_depth_is_the_distance_transform():
    mask, logits = two_peaked_blob()
    distance = distance_to_background(mask)
    np.testing.assert_allclose(depth_field(mask), distance)
    np.testing.assert_allclose(depth_field(mask, np.full(mask.shape, 5.0)), distance)
    np.testing.assert_allclose(depth_field(mask, -np.abs(logits)), distance)  # no logit above 0: nothing to add
    assert depth_field(mask, logits)[~mask].max() == 0
    assert (depth_field(mask, logits) <= distance + 1e-9).all()  # each level lies inside the mask


def test_logits_and_fields_of_another_shape_are_refused():
    mask, logits = two_peaked_blob()
    with pytest.raises(ValueError, match="logits must have the mask's shape"):
        depth_field(mask, logits[:, :-1])
    with pytest.raises(ValueError, match="field must have the mask's shape"):
        find_seeds(mask, 36, logits[:-1])
    with pytest.raises(ValueError, match="levels must be 1 or more"):
        depth_field(mask, logits, levels=0)



def test_smoothed_logits_do_not_part_a_large_object_along_its_texture():
    """A refined mask's logits follow the image's texture inside a large object; smoothed by a
    part of the diameter (as the seeds do), the object is one seed again."""
    radius = 18
    mask = np.hypot(XX - 64, YY - 48) <= radius
    texture = ndimage.gaussian_filter(np.random.default_rng(4).normal(0, 1, XX.shape), 1.5)
    logits = 10.0 - 10.0 * np.hypot(XX - 64, YY - 48) / radius + 4.0 * texture / texture.std()
    diameter = 2 * radius
    assert len(find_seeds(mask, diameter, depth_field(mask, logits))) == 2  # the texture's dip parts it
    smoothed = depth_field(mask, logits, smoothing=LOGIT_SMOOTHING * diameter)
    assert len(find_seeds(mask, diameter, smoothed)) == 1
    # The two peaked blob's dip is wider than the smoothing: still two objects.
    blob, blob_logits = two_peaked_blob()
    assert len(find_seeds(blob, 36, depth_field(blob, blob_logits, smoothing=LOGIT_SMOOTHING * 36))) == 2
    with pytest.raises(ValueError, match="smoothing is a Gaussian sigma"):
        depth_field(mask, logits, smoothing=-1)
