"""The widget's labels are ``napari_clipsam.segment``'s: one pipeline, whichever way it is called."""

from __future__ import annotations

import numpy as np
import pytest

import napari_clipsam as nc
from napari_clipsam._sample_data import synthetic_nuclei
from tests._qt.widget_helpers import TIMEOUT_S

# Components: with random weights every seeded object scores 0 (its logits sit between -1 and 1).
OPTIONS = dict(instances=True, instance_method="components", refine=True, min_area=20)


@pytest.fixture(scope="module")
def nuclei():
    """Two different 256x256 crops of the synthetic nuclei (the whole image is slower, not more telling)."""
    image, _ = synthetic_nuclei()
    return image[:256, :256], image[256:, 256:]


def _segment_in_widget(viewer, widget, image, name: str, all_slices: bool = False) -> np.ndarray:
    viewer.add_image(image, name=name)
    widget.set_image(name)
    widget.set_concept("nucleus")
    widget.set_options(all_slices=all_slices, **OPTIONS)
    widget.segment()
    widget.wait(TIMEOUT_S)
    return np.asarray(viewer.layers[f"{name} nucleus"].data)


def test_the_current_slice_gives_segments_labels(viewer, widget, tiny_model, nuclei):
    image = nuclei[0]
    labels = _segment_in_widget(viewer, widget, image, "nuclei")
    expected = nc.segment(image, "nucleus", model=tiny_model, **OPTIONS)
    assert expected.max() > 1  # objects to compare, not two empty images
    np.testing.assert_array_equal(labels, expected)


def test_all_slices_give_segments_labels_plane_by_plane(viewer, widget, tiny_model, nuclei):
    stack = np.stack(nuclei)
    labels = _segment_in_widget(viewer, widget, stack, "stack", all_slices=True)
    np.testing.assert_array_equal(labels, nc.segment(stack, "nucleus", model=tiny_model, **OPTIONS))
    for plane, image in zip(labels, nuclei):
        expected = nc.segment(image, "nucleus", model=tiny_model, **OPTIONS)
        assert expected.max() > 1
        # The same objects as the plane alone, named to link across planes: one value per object, each way.
        np.testing.assert_array_equal(plane > 0, expected > 0)
        pairs = np.unique(np.stack([plane[plane > 0], expected[expected > 0]]), axis=1)
        assert pairs.shape[1] == len(np.unique(plane[plane > 0])) == len(np.unique(expected[expected > 0]))
