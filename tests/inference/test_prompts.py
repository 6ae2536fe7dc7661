"""Prompts from the similarity map and from masks."""

from __future__ import annotations

import numpy as np
import torch

from napari_clipsam.inference.prompts import inside_box, points_from_mask, points_from_similarity
from napari_clipsam.inference.sam_frame import mask_prompt_from_similarity, similarity_in_sam_frame


def _two_blob_map(shape=(120, 200)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sim = np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / 200.0)
    sim = np.maximum(sim, 0.95 * np.exp(-((yy - 90) ** 2 + (xx - 160) ** 2) / 300.0))
    return sim.astype(np.float32)


def test_points_lie_in_the_thresholded_region_and_are_deterministic():
    sim = _two_blob_map()
    points = points_from_similarity(sim, threshold=0.8, num_points=5)
    assert points.shape == (5, 2)
    xs, ys = points[:, 0].astype(int), points[:, 1].astype(int)
    assert np.all(sim[ys, xs] >= 0.8)
    np.testing.assert_array_equal(points, points_from_similarity(sim, 0.8, 5))
    # The first point is the maximum; the points are spread over both regions.
    assert tuple(points[0]) == (40, 30)
    assert np.any(points[:, 0] > 120) and np.any(points[:, 0] < 80)
    assert len({tuple(p) for p in points}) == 5


def test_points_for_large_maps_are_in_image_coordinates():
    sim = np.zeros((2000, 1000), dtype=np.float32)
    sim[1500:1600, 700:800] = 1.0
    points = points_from_similarity(sim, threshold=0.5, num_points=3)
    assert np.all((points[:, 0] >= 700) & (points[:, 0] < 800))
    assert np.all((points[:, 1] >= 1500) & (points[:, 1] < 1600))


def test_empty_region_falls_back_to_the_maximum():
    sim = np.zeros((10, 10), dtype=np.float32)
    sim[4, 6] = 0.5
    points = points_from_similarity(sim, threshold=0.8, num_points=5)
    np.testing.assert_array_equal(points, [[6, 4]])


def test_similarity_lands_in_the_top_left_of_sams_padded_frame():
    grid = torch.ones(1, 4, 4)
    frame = similarity_in_sam_frame(grid, input_size=(32, 64), frame=64)
    assert frame.shape == (1, 64, 64)
    assert torch.all(frame[0, :32] == 1) and torch.all(frame[0, 32:] == 0)
    prompt = mask_prompt_from_similarity(grid, 0.8, (32, 64), 64, (16, 16))
    assert prompt.shape == (1, 1, 16, 16)
    assert set(prompt.unique().tolist()) == {0.0, 255.0}
    assert torch.all(prompt[0, 0, :8] == 255) and torch.all(prompt[0, 0, 8:] == 0)


def test_points_from_mask_respect_the_mask():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:10, 5:10] = True
    coords, labels = points_from_mask(mask, 3, 2, np.random.default_rng(0))
    assert coords.shape == (5, 2) and labels.tolist() == [1, 1, 1, 0, 0]
    inside = mask[coords[:, 1].astype(int), coords[:, 0].astype(int)]
    assert inside.tolist() == [True, True, True, False, False]
    again = points_from_mask(mask, 3, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(coords, again[0])


def test_inside_box_holds_the_box_and_its_edges_clipped_to_the_image():
    inside = inside_box((10, 12), np.array([2.0, 3.0, 5.0, 7.0]))
    assert inside.sum() == 4 * 5 and inside[3, 2] and inside[7, 5] and not inside[8, 5] and not inside[7, 6]
    # A box over the image's edges keeps what lies in the image; one wholly outside keeps nothing.
    np.testing.assert_array_equal(inside_box((4, 4), np.array([-3.0, -2.0, 9.0, 1.4])), np.broadcast_to(np.arange(4)[:, None] <= 1, (4, 4)))
    assert not inside_box((4, 4), np.array([-9.0, -9.0, -2.0, -2.0])).any()
