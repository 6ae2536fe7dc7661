"""Scripted napari sessions: the widget's public methods, ``segment_layer`` and the example script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import napari_clipsam as nc
from napari_clipsam._qt.requests import RequestError
from napari_clipsam._qt.segment_widget import ClipSamWidget
from napari_clipsam.inference.layers import segment_layer
from napari_clipsam.inference.pipeline import SegmentResult
from tests._qt.widget_helpers import TIMEOUT_MS, TIMEOUT_S, BlockingEncoder
from tests.helpers import randomize_adapters

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "scripted_session.py"


def test_segment_returns_at_once_and_wait_returns_the_result(qtbot, viewer, widget, tiny_model, monkeypatch):
    encoder = BlockingEncoder(tiny_model, monkeypatch)
    widget.set_concept("nucleus")
    widget.segment()
    assert widget.busy  # started, not finished: the encoder is held
    qtbot.waitUntil(encoder.started.is_set, timeout=TIMEOUT_MS)
    encoder.release.set()
    result = widget.wait(TIMEOUT_S)
    assert isinstance(result, SegmentResult)
    np.testing.assert_array_equal(viewer.layers["blobs nucleus"].data > 0, result.labels > 0)


def test_set_prompts_takes_napari_data_coordinates(qtbot, viewer, widget):
    widget.set_concept("")
    widget.set_prompts(points=[[25, 30], [70, 100]], labels=[1, 0], box=[[10, 15], [40, 45]])
    np.testing.assert_array_equal(viewer.layers["blobs positive points"].data, [[25, 30]])
    np.testing.assert_array_equal(viewer.layers["blobs negative points"].data, [[70, 100]])
    corners = np.asarray(viewer.layers["blobs box"].data[0])
    assert corners[:, 0].min() == 10 and corners[:, 0].max() == 40 and corners[:, 1].min() == 15
    assert not widget.busy  # setting prompts does not segment
    widget.segment()
    result = widget.wait(TIMEOUT_S)
    request, preview = widget._preview
    assert preview is result
    np.testing.assert_array_equal(request.prompts["points"], [[30, 25], [100, 70]])  # the pipeline's XY
    np.testing.assert_array_equal(request.prompts["box"], [15, 10, 45, 40])  # XYXY
    np.testing.assert_array_equal(viewer.layers["clipsam preview"].data, result.labels)
    new = widget.accept_preview()
    assert new == [1]
    np.testing.assert_array_equal(viewer.layers["blobs objects"].data > 0, result.labels > 0)
    assert len(viewer.layers["blobs positive points"].data) == 0


def test_set_prompts_on_a_stack_lands_on_the_shown_plane(qtbot, viewer, widget, blobs_image):
    viewer.add_image(np.stack([blobs_image, blobs_image[::-1], blobs_image[:, ::-1]]), name="stack")
    widget.set_image("stack")
    viewer.dims.set_current_step(0, 2)
    widget.set_prompts(points=[[25, 30]], box=[[10, 15], [40, 45]])
    np.testing.assert_array_equal(viewer.layers["stack positive points"].data, [[2, 25, 30]])
    assert (np.asarray(viewer.layers["stack box"].data[0])[:, 0] == 2).all()
    widget.set_prompts(points=[[1, 25, 30]])  # full coordinates: another plane, not shown
    widget.set_concept("")
    with pytest.raises(RequestError, match="points or a box"):
        widget.segment()


def test_script_errors_are_raised(qtbot, viewer, widget):
    with pytest.raises(RuntimeError, match="Nothing to wait for"):
        widget.wait(1)
    widget.set_concept("")
    with pytest.raises(RequestError, match="concept"):
        widget.segment()  # the text-only mode needs a concept
    with pytest.raises(RuntimeError, match="No preview"):
        widget.accept_preview()
    with pytest.raises(ValueError, match="labels"):
        widget.set_prompts(points=[[25, 30]], labels=[2])


def test_wait_raises_a_job_error(qtbot, viewer, widget, tiny_model, monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("out of memory in the encoder")

    monkeypatch.setattr(tiny_model, "encoder_suffix", broken)
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda message: None)
    widget.set_concept("nucleus")
    widget.segment()
    with pytest.raises(MemoryError, match="out of memory"):
        widget.wait(TIMEOUT_S)


def test_a_new_widget_has_nothing_to_wait_for(viewer):
    with pytest.raises(RuntimeError, match="Nothing to wait for"):
        ClipSamWidget(viewer).wait(1)


def test_segment_layer_is_segment_with_the_layer_geometry(tiny_model, blobs_image):
    layer = SimpleNamespace(data=blobs_image, rgb=False, scale=(0.5, 0.25), translate=(3.0, 4.0), name="blobs")
    labels, kwargs, layer_type = segment_layer(layer, "nucleus", tiny_model, instances=True)
    assert layer_type == "labels"
    assert kwargs["name"] == "blobs nucleus"
    assert kwargs["scale"] == (0.5, 0.25) and kwargs["translate"] == (3.0, 4.0)
    np.testing.assert_array_equal(labels, nc.segment(blobs_image, "nucleus", model=tiny_model, instances=True))
    randomize_adapters(tiny_model)  # zero adapters: every concept would give the same mask
    labels, _, _ = segment_layer(layer, "nucleus", tiny_model, other_concepts=["spot"])
    competing = nc.segment(blobs_image, "nucleus", model=tiny_model, other_concepts=["spot"])
    assert competing.sum() < nc.segment(blobs_image, "nucleus", model=tiny_model, other_concepts=None).sum()
    np.testing.assert_array_equal(labels, competing)
    labels, _, _ = segment_layer(layer, "nucleus", tiny_model, scale=2)  # the layer's data read at half size
    np.testing.assert_array_equal(labels, nc.segment(blobs_image, "nucleus", model=tiny_model, scale=2))
    assert labels.shape == blobs_image.shape
    assert not np.array_equal(labels, nc.segment(blobs_image, "nucleus", model=tiny_model))  # not read at 1

    points, box = [[25, 30], [70, 100]], [[10, 15], [40, 45]]
    labels, kwargs, _ = segment_layer(layer, None, tiny_model, points=points, point_labels=[1, 0], box=box)
    expected = nc.segment(blobs_image, None, model=tiny_model, points=np.array([[30, 25], [100, 70]]),
                          point_labels=np.array([1, 0]), box=np.array([15, 10, 45, 40]))
    np.testing.assert_array_equal(labels, expected)
    assert kwargs["name"] == "blobs objects" and kwargs["metadata"] == {}


def test_segment_layer_takes_a_diameter_in_micrometres_by_the_layers_scale_and_units(tiny_model, blobs_image,
                                                                                     monkeypatch):
    from napari.layers import Image

    # 12 µm at 0.5 µm per pixel: 24 px, beyond the 6-12 px the model lists, so read at another scale.
    monkeypatch.setattr(tiny_model, "concept_diameters", {"nucleus": (6.0, 12.0)})
    layer = Image(blobs_image, name="blobs", scale=(0.5, 0.5), units=("um", "um"))
    labels, _, _ = segment_layer(layer, "nucleus", tiny_model, diameter=12, diameter_unit="um")
    expected = nc.segment(blobs_image, "nucleus", model=tiny_model, diameter=24)
    np.testing.assert_array_equal(labels, expected)
    assert not np.array_equal(expected, nc.segment(blobs_image, "nucleus", model=tiny_model, diameter=12))
    with pytest.raises(ValueError, match="'plain' gives no physical pixel size"):
        segment_layer(Image(blobs_image, name="plain", scale=(0.5, 0.5)), "nucleus", tiny_model, diameter=12,
                      diameter_unit="um")
    with pytest.raises(ValueError, match="diameter_unit must be 'px'"):  # refused with no diameter too
        segment_layer(layer, "nucleus", tiny_model, diameter_unit="inch")


def test_segment_layer_on_rgb_and_stack_layers(viewer, tiny_model, blobs_image):
    rgb = np.stack([blobs_image // 256] * 3, axis=-1).astype(np.uint8)
    layer = viewer.add_image(rgb, name="rgb", scale=(2.0, 3.0))
    labels, kwargs, _ = segment_layer(layer, "nucleus", tiny_model)
    assert labels.shape == blobs_image.shape and kwargs["scale"] == (2.0, 3.0)
    assert kwargs["metadata"] == {"clipsam_concepts": {"nucleus": 1}}
    viewer.add_labels(labels, **kwargs)  # a valid napari layer, over the image

    stack = np.stack([blobs_image, blobs_image[::-1]])
    layer = viewer.add_image(stack, name="stack", scale=(5.0, 0.5, 0.25))
    labels, kwargs, _ = segment_layer(layer, "nucleus", tiny_model, instances=True)
    assert labels.shape == stack.shape and kwargs["scale"] == (5.0, 0.5, 0.25)
    np.testing.assert_array_equal(labels, nc.segment(stack, "nucleus", model=tiny_model, instances=True))
    with pytest.raises(ValueError, match=r"\(row, col\)"):
        segment_layer(layer, "nucleus", tiny_model, points=[[0, 25, 30]])


def test_the_example_script_runs(tmp_path):
    environment = dict(os.environ, NAPARI_CONFIG=str(tmp_path / "napari.yaml"), NAPARI_CLIPSAM_SETTINGS="off")
    completed = subprocess.run([sys.executable, str(EXAMPLE), "--no-show"], capture_output=True, text=True,
                               timeout=600, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert any(line.startswith("concept: ") for line in lines), completed.stdout
    assert any(line.startswith("prompts: label(s) [") for line in lines), completed.stdout
    assert any(line.startswith("segment_layer: ") for line in lines), completed.stdout
