"""Fixtures for the segmentation widget's tests: a viewer with an image and the docked widget."""

from __future__ import annotations

import pytest

from tests.helpers import randomize_adapters


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer, tiny_model, blobs_image):
    """The docked widget on a (96, 128) image with scale and translate, using the tiny model."""
    from napari_clipsam._qt.segment_widget import ClipSamWidget

    randomize_adapters(tiny_model)  # untrained adapters would hide wiring mistakes
    viewer.add_image(blobs_image, name="blobs", scale=(0.5, 0.25), translate=(3.0, 4.0))
    widget = ClipSamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_image("blobs")
    widget.use_model(tiny_model)
    return widget
