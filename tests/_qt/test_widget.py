"""The segmentation dock widget, with the tiny model, under pytest-qt (Xvfb in CI)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import napari_clipsam as nc
from napari_clipsam._qt.requests import StaleResultError
from napari_clipsam._qt.segment_widget import MODE_MANUAL, NEW_LAYER, ClipSamWidget
from tests._qt.widget_helpers import TIMEOUT_MS, TIMEOUT_S, BlockingEncoder, cancel_while_encoding
from tests.helpers import dock_in_fresh_process


def _wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def test_widget_opens_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-clipsam", "Segment by concept")
    assert isinstance(widget, ClipSamWidget)


def test_text_only_run_writes_a_labels_layer(qtbot, viewer, widget, blobs_image):
    widget._controls.concept.value = "nucleus"
    widget._controls.run_button.changed.emit(True)  # what a click emits
    _wait_idle(qtbot, widget)
    output = viewer.layers["blobs nucleus"]
    assert output.data.shape == blobs_image.shape
    assert np.issubdtype(output.data.dtype, np.integer)
    assert tuple(output.scale) == (0.5, 0.25) and tuple(output.translate) == (3.0, 4.0)
    assert output.data.max() >= 1
    assert widget._controls.output.value == "blobs nucleus"
    assert widget._controls.recent.choices[1] == "nucleus"


def test_existing_labels_survive_and_undo_restores(qtbot, viewer, widget, blobs_image):
    existing = np.zeros(blobs_image.shape, dtype=np.uint32)
    existing[0:40, 0:60] = 5  # the user's own work, over part of the image
    viewer.add_labels(existing.copy(), name="mine")
    widget.set_options(output="mine")
    widget.set_concept("nucleus")
    widget.segment()
    widget.wait(TIMEOUT_S)
    data = viewer.layers["mine"].data
    np.testing.assert_array_equal(data[0:40, 0:60], 5)  # never overwritten
    new_values = set(np.unique(data)) - {0, 5}
    assert new_values and all(v > 5 for v in new_values)
    viewer.layers["mine"].undo()
    np.testing.assert_array_equal(viewer.layers["mine"].data, existing)


def test_manual_points_update_the_preview_and_commit_is_undoable(qtbot, viewer, widget, blobs_image):
    widget._controls.mode.value = MODE_MANUAL
    widget.set_concept("")  # plain SAM prompting
    widget._add_prompt_layers()
    positive = viewer.layers["blobs positive points"]
    assert viewer.layers.selection.active is positive and positive.mode == "add"
    positive.add([25, 30])  # (row, col) = the first disc's centre
    qtbot.waitUntil(lambda: "clipsam preview" in viewer.layers, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, widget)
    first = viewer.layers["clipsam preview"].data.copy()
    assert first.shape == blobs_image.shape and first.any()

    viewer.layers["blobs negative points"].add([70, 100])
    qtbot.waitUntil(lambda: widget._preview is not None and len(widget._preview[0].prompts["points"]) == 2,
                    timeout=TIMEOUT_MS)
    _wait_idle(qtbot, widget)
    request, _ = widget._preview
    np.testing.assert_array_equal(request.prompts["points"], [[30, 25], [100, 70]])  # XY
    np.testing.assert_array_equal(request.prompts["point_labels"], [1, 0])

    widget._commit_preview()
    output = viewer.layers["blobs objects"]
    assert output.data.max() == 1
    assert len(positive.data) == 0 and "clipsam preview" not in viewer.layers
    output.undo()
    assert output.data.max() == 0


def test_cancel_leaves_every_layer_untouched(qtbot, viewer, widget, tiny_model, monkeypatch):
    encoder = BlockingEncoder(tiny_model, monkeypatch)
    before = [(layer.name, np.asarray(layer.data).copy()) for layer in viewer.layers]
    widget.set_concept("nucleus")
    widget.segment()
    cancel_while_encoding(qtbot, widget, encoder)
    _wait_idle(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == [name for name, _ in before]
    for (name, data), layer in zip(before, viewer.layers):
        np.testing.assert_array_equal(np.asarray(layer.data), data)
    assert "Cancelled" in widget._controls.status.value


def test_stale_result_is_dropped(qtbot, viewer, widget, tiny_model, monkeypatch):
    encoder = BlockingEncoder(tiny_model, monkeypatch)
    widget.set_concept("nucleus")
    widget.segment()
    qtbot.waitUntil(encoder.started.is_set, timeout=TIMEOUT_MS)
    widget.set_concept("membrane")  # the user changed their mind meanwhile
    encoder.release.set()
    with pytest.raises(StaleResultError):
        widget.wait(TIMEOUT_S)
    assert "blobs nucleus" not in viewer.layers and "blobs membrane" not in viewer.layers
    assert "dropped" in widget._controls.status.value


def test_gui_keeps_running_during_a_slow_encoder(qtbot, viewer, widget, tiny_model, monkeypatch):
    """The encoder can only finish when a timer on the GUI thread fires while it works:
    a job that blocked the event loop would never be released (and time out)."""
    from qtpy.QtCore import QTimer

    encoder = BlockingEncoder(tiny_model, monkeypatch)
    ticks_while_encoding: list[threading.Thread] = []

    def tick():
        if encoder.started.is_set() and not encoder.release.is_set():
            ticks_while_encoding.append(threading.current_thread())
            if len(ticks_while_encoding) == 3:
                encoder.release.set()

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    try:
        widget.set_concept("nucleus")
        widget.segment()
        widget.wait(TIMEOUT_S)
    finally:
        timer.stop()
    assert encoder.threads and all(thread is not threading.main_thread() for thread in encoder.threads)
    assert len(ticks_while_encoding) == 3
    assert all(thread is threading.main_thread() for thread in ticks_while_encoding)
    assert viewer.layers["blobs nucleus"].data.any()


def test_a_stack_segments_all_slices(qtbot, viewer, widget, blobs_image, tiny_model):
    stack = np.stack([blobs_image, blobs_image[::-1], blobs_image[:, ::-1]])
    viewer.add_image(stack, name="stack")
    widget.set_image("stack")
    widget.set_options(instances=True, all_slices=True)
    # Connected components: random weights give every seeded object a score of 0 (unstable masks).
    widget.set_options(instance_method="components")
    widget.set_concept("nucleus")
    widget.segment()
    labels = widget.wait(TIMEOUT_S)
    output = viewer.layers["stack nucleus"]
    assert output.data.shape == stack.shape == labels.shape
    per_plane = [set(np.unique(plane)) - {0} for plane in output.data]
    assert all(per_plane)
    # One value per 3-D object, as for scripts: objects overlapping across planes are linked.
    expected = nc.segment(stack, "nucleus", model=tiny_model, instances=True, instance_method="components")
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(output.data)) == len(np.unique(expected))

    # "One label per 3-D object" off: every slice's objects get labels of their own.
    assert not widget._controls.link_planes.native.isHidden()
    widget.set_options(link_planes=False, output="New layer")
    widget.segment()
    separate = widget.wait(TIMEOUT_S)
    np.testing.assert_array_equal(separate, nc.segment(stack, "nucleus", model=tiny_model, instances=True,
                                                       instance_method="components", link_planes=False))
    assert not (set(np.unique(separate[0])) - {0}) & (set(np.unique(separate[1])) - {0})


def test_similarity_preview_layer(qtbot, viewer, widget, blobs_image):
    widget.set_options(similarity=True)
    widget.set_concept("nucleus")
    widget.segment()
    widget.wait(TIMEOUT_S)
    similarity = viewer.layers["similarity: nucleus"]
    assert similarity.data.shape == blobs_image.shape
    assert similarity.data.min() >= 0 and similarity.data.max() <= 1
    assert tuple(similarity.scale) == (0.5, 0.25)


def test_sam_input_size_follows_the_adapters_or_the_choice(qtbot, viewer, widget, tiny_model, blobs_image,
                                                           monkeypatch):
    monkeypatch.setattr(tiny_model, "preferred_image_size", 128)  # as if its adapters were trained at 128
    sam_input = widget._model_fields.sam_input
    widget.set_concept("nucleus")
    assert sam_input.value == "auto"
    widget.segment()
    widget.wait(TIMEOUT_S)
    predictor = widget._jobs.predictor
    assert predictor.image_size == 128 and predictor.image_embedding.shape[-2:] == (8, 8)
    sam_input.value = "512"
    widget.segment()
    widget.wait(TIMEOUT_S)
    assert predictor.image_size == 512 and predictor.image_embedding.shape[-2:] == (32, 32)
    assert viewer.layers["blobs nucleus"].data.shape == blobs_image.shape


def test_errors_are_notified_not_raised(qtbot, viewer, widget, monkeypatch):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    widget.set_concept("")
    widget._on_run_clicked()  # text-only without a concept
    assert messages and "concept" in messages[0]
    assert not widget.busy


def test_offline_model_loading_is_a_notification(qtbot, viewer, widget, monkeypatch):
    import socket

    from napari_clipsam.errors import WeightsUnavailableError

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("blocked")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    widget._jobs.model = None  # as before any model was loaded
    widget._model_fields.device.value = "cpu"
    widget.set_concept("nucleus")
    widget._on_run_clicked()
    with pytest.raises(WeightsUnavailableError, match="sam_vit_b_01ec64.pth"):
        widget.wait(TIMEOUT_S)
    _wait_idle(qtbot, widget)
    assert messages and "sam_vit_b_01ec64.pth" in messages[0]
    assert [layer.name for layer in viewer.layers] == ["blobs"]


def test_load_model_loads_what_the_fields_say_once(qtbot, viewer, widget):
    from napari_clipsam.weights.registry import RANDOM_WEIGHTS

    fields = widget._model_fields
    fields.sam.value = "tiny"  # the test model: random weights are its only choice
    assert fields.sam_weights.value == RANDOM_WEIGHTS
    fields.clip.value, fields.clip_pretrained.value = "tiny", "none"
    fields.device.value, fields.precision.value = "cpu", "fp32"
    fields.load_button.changed.emit(True)
    _wait_idle(qtbot, widget)
    model = widget._jobs.model
    assert model.sam_name == "tiny" and model.clip_name == "tiny"
    assert "Model: SAM tiny + CLIP tiny" in widget._controls.status.value
    assert "DEMO" not in widget._controls.status.value  # said of the demo models only (tests/model/test_grow.py)
    widget.set_concept("nucleus")
    widget.segment()
    widget.wait(TIMEOUT_S)
    assert widget._jobs.model is model  # the fields did not change: no second load


def test_settings_persist_between_sessions(viewer, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", str(tmp_path / "settings.json"))
    first = ClipSamWidget(viewer)
    first._model_fields.device.value = "cpu"
    first._model_fields.sam.value = "vit_l"
    first._model_fields.sam_weights.value = "vit_l_lm"
    first._controls.mode.value = MODE_MANUAL
    first._model_fields.sam_input.value = "512"
    first._remember_concept("mitochondria")
    second = ClipSamWidget(viewer)
    fields = second._model_fields
    assert fields.device.value == "cpu" and fields.sam_input.value == "512"
    assert fields.sam.value == "vit_l" and fields.sam_weights.value == "vit_l_lm"
    assert second._controls.mode.value == MODE_MANUAL
    assert "mitochondria" in second._controls.recent.choices
    assert NEW_LAYER in second._controls.output.choices


def test_output_layer_of_another_shape_is_refused_before_running(qtbot, viewer, widget, monkeypatch):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    viewer.add_labels(np.zeros((50, 50), dtype=np.uint32), name="small")
    widget.set_options(output="small")
    widget.set_concept("nucleus")
    widget._on_run_clicked()
    assert messages and "has shape (50, 50)" in messages[0]
    assert not widget.busy and not viewer.layers["small"].data.any()


def test_opening_the_widget_in_a_shown_napari_does_not_crash():
    """Importing the model code after napari's OpenGL context exists once killed napari
    under Mesa's software OpenGL (triton's LLVM against Mesa's); see model/device.py."""
    assert dock_in_fresh_process("Segment by concept", show=True)[0] == "ClipSamWidget"


def test_a_job_that_outlives_its_widget_touches_nothing(qtbot, viewer, widget, tiny_model, monkeypatch):
    """Closing napari (or deleting the panel) while a job runs: when the job ends, no callback
    reaches the deleted widget (an exception in napari's event loop) and no layer is written."""
    encoder = BlockingEncoder(tiny_model, monkeypatch)
    widget.set_concept("nucleus")
    widget.segment()
    qtbot.waitUntil(encoder.started.is_set, timeout=TIMEOUT_MS)
    runner = widget._jobs._runner
    with qtbot.waitSignal(widget.native.destroyed, timeout=TIMEOUT_MS):
        widget.native.deleteLater()
    encoder.release.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=TIMEOUT_MS)
    assert "blobs nucleus" not in viewer.layers
