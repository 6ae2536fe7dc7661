"""One label per 3-D object: objects linked across planes by overlap."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

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


def test_a_tzyx_stack_links_along_z_and_then_along_t(demo_model):
    """Issue 11: time series the same along t. Each time point's 3-D objects continue the previous one's."""
    scene = generate_scene(2_000_401, size=256, kind="nuclei")
    moved = np.roll(scene.image, 1, axis=1)
    volumes = [np.stack([scene.image, scene.image]), np.stack([scene.image, scene.image]), np.stack([moved, moved])]
    labels = nc.segment(np.stack(volumes), "nucleus", model=demo_model, instances=True, instance_method="components")
    for volume in labels:
        np.testing.assert_array_equal(volume[0], volume[1])  # linked along z
    np.testing.assert_array_equal(labels[1], labels[0])  # the same volume again: every object continues
    # Volumes of two equal planes overlap as their planes do: t=2 links as its plane links to t=1's.
    # One view, as the stack's planes are read ("auto" averages 8 views of a lone image only).
    unlinked = nc.segment(moved, "nucleus", model=demo_model, instances=True, instance_method="components",
                          augment=False)
    expected, _ = link_to_previous(unlinked, labels[1, 0], int(labels[:2].max()) + 1)
    np.testing.assert_array_equal(labels[2, 0], expected)
    # Objects continue across t (how many depends on the model: with the demo file of 2026-11-27 all do).
    assert len((set(np.unique(labels[2])) & set(np.unique(labels[1]))) - {0}) > 0.5 * (len(np.unique(unlinked)) - 1)
    separate = nc.segment(np.stack(volumes), "nucleus", model=demo_model, instances=True,
                          instance_method="components", link_planes=False)
    assert not (set(np.unique(separate[0, 0])) - {0}) & (set(np.unique(separate[1, 0])) - {0})


def test_tzyx_linking_along_t_in_a_zarr_output_matches_numpy(demo_model, tmp_path):
    scene = generate_scene(2_000_402, size=256, kind="nuclei")
    stack = np.stack([np.stack([scene.image, np.roll(scene.image, 1, axis=0)]),
                      np.stack([np.roll(scene.image, 3, axis=1)] * 2)])
    expected = nc.segment(stack, "nucleus", model=demo_model, instances=True, instance_method="components")
    out = zarr.open_array(tmp_path / "labels.zarr", mode="w", shape=expected.shape, dtype="int32", chunks=(1, 1, 128, 128))
    nc.segment(stack, "nucleus", model=demo_model, instances=True, instance_method="components", out=out)
    np.testing.assert_array_equal(out[...], expected)
