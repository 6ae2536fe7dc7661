"""One label per 3-D object: objects linked across planes by overlap."""

from __future__ import annotations

import numpy as np
import pytest

import napari_clipsam as nc
from napari_clipsam.inference.linking import link_to_previous
from napari_clipsam.synthetic import generate_scene
from napari_clipsam.training.metrics import match_instances


def _disc(centre, radius, shape=(40, 60)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _labels(*masks):
    labels = np.zeros(masks[0].shape, np.int32)
    for value, mask in enumerate(masks, start=1):
        labels[mask] = value
    return labels


def test_an_object_that_moves_a_little_keeps_its_label_and_a_new_one_gets_a_new_label():
    first, next_label = link_to_previous(_labels(_disc((20, 15), 8), _disc((20, 45), 6)), None, 1)
    assert set(np.unique(first)) == {0, 1, 2} and next_label == 3
    # The plane's own numbering differs; the first disc moved by 2 px, the second is gone, a third starts.
    second, next_label = link_to_previous(_labels(_disc((5, 50), 4), _disc((21, 17), 8)), first, next_label)
    assert (second[_disc((21, 17), 8)] == 1).all()
    assert (second[_disc((5, 50), 4)] == 3).all() and next_label == 4


def test_a_split_keeps_the_label_in_the_larger_part_and_neighbours_never_merge():
    whole = _labels(_disc((20, 30), 12))
    left, right = _disc((20, 24), 7), _disc((20, 38), 5)
    split, next_label = link_to_previous(_labels(right, left), whole, 2)
    assert (split[left] == 1).all() and (split[right] == 2).all() and next_label == 3
    # Two touching discs whose overlap with each other's previous position is small stay apart.
    a, b = _disc((20, 20), 6), _disc((20, 33), 6)
    moved, _ = link_to_previous(_labels(_disc((20, 27), 6)), _labels(a, b), 3)
    assert set(np.unique(moved)) <= {0, 1, 2, 3}
    assert len(set(np.unique(moved)) - {0}) == 1


def test_an_empty_plane_breaks_the_chain():
    first, next_label = link_to_previous(_labels(_disc((20, 20), 6)), None, 1)
    empty, next_label = link_to_previous(np.zeros_like(first), first, next_label)
    again, next_label = link_to_previous(_labels(_disc((20, 20), 6)), empty, next_label)
    assert empty.max() == 0 and again.max() == 2 and next_label == 3


@pytest.fixture(scope="module")
def demo_model():
    return nc.load_model(preset="demo", device="cpu", precision="fp32")


def test_a_z_stack_gives_one_label_per_3d_object(demo_model):
    """Three planes of one scene shifted by a pixel each: each nucleus keeps one label through them."""
    scene = generate_scene(2_000_400, size=256, kind="nuclei")
    stack = np.stack([np.roll(scene.image, shift, axis=1) for shift in (0, 1, 2)])
    labels = nc.segment(stack, "nucleus", model=demo_model, instances=True, instance_method="components")
    per_plane = [set(np.unique(plane)) - {0} for plane in labels]
    shared = per_plane[0] & per_plane[1] & per_plane[2]
    assert len(shared) >= 0.8 * len(per_plane[0]) > 0
    unlinked = nc.segment(stack, "nucleus", model=demo_model, instances=True, instance_method="components",
                          link_planes=False)
    assert not (set(np.unique(unlinked[0])) - {0}) & (set(np.unique(unlinked[1])) - {0})
    # Linking renames objects, never changes them: each plane's objects are the same.
    for plane, other in zip(labels, unlinked):
        assert match_instances(plane, other).f1 == 1.0


def test_time_points_of_a_tzyx_stack_link_along_z_only(demo_model):
    scene = generate_scene(2_000_401, size=256, kind="nuclei")
    stack = np.stack([np.stack([scene.image, scene.image])] * 2)  # (T, Z, Y, X)
    labels = nc.segment(stack, "nucleus", model=demo_model, instances=True, instance_method="components")
    np.testing.assert_array_equal(labels[0, 0], labels[0, 1])
    np.testing.assert_array_equal(labels[1, 0], labels[1, 1])
    assert not (set(np.unique(labels[0, 0])) - {0}) & (set(np.unique(labels[1, 0])) - {0})
