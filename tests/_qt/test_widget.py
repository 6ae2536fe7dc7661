"""The napari dock widget, with the tiny model, under pytest-qt (Xvfb in CI)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_clipsam._qt.segment_widget import MODE_MANUAL, NEW_LAYER, SCOPE_ALL, ClipSamWidget
from tests.helpers import randomize_adapters

TIMEOUT_MS = 60_000


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer, tiny_model, blobs_image):
    randomize_adapters(tiny_model)  # untrained adapters would hide wiring mistakes
    viewer.add_image(blobs_image, name="blobs", scale=(0.5, 0.25), translate=(3.0, 4.0))
    widget = ClipSamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.reset_choices()
    widget._image.value = viewer.layers["blobs"]
    widget.use_model(tiny_model)
    return widget


def _wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def test_widget_opens_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-clipsam", "Segment by concept")
    assert isinstance(widget, ClipSamWidget)


def test_text_only_run_writes_a_labels_layer(qtbot, viewer, widget, blobs_image):
    widget._concept.value = "nucleus"
    widget._run_button.changed.emit(True)  # what a click emits
    _wait_idle(qtbot, widget)
    output = viewer.layers["blobs nucleus"]
    assert output.data.shape == blobs_image.shape
    assert np.issubdtype(output.data.dtype, np.integer)
    assert tuple(output.scale) == (0.5, 0.25) and tuple(output.translate) == (3.0, 4.0)
    assert output.data.max() >= 1
    assert widget._output.value == "blobs nucleus"
    assert widget._recent.choices[1] == "nucleus"


def test_existing_labels_survive_and_undo_restores(qtbot, viewer, widget, blobs_image):
    existing = np.zeros(blobs_image.shape, dtype=np.uint32)
    existing[:, :] = 0
    existing[0:40, 0:60] = 5  # the user's own work, over part of the image
    viewer.add_labels(existing.copy(), name="mine")
    widget.reset_choices()
    widget._output.value = "mine"
    widget._concept.value = "nucleus"
    widget._on_run_clicked()
    _wait_idle(qtbot, widget)
    data = viewer.layers["mine"].data
    np.testing.assert_array_equal(data[0:40, 0:60], 5)  # never overwritten
    assert data.max() >= 6 or (data[existing == 0] == 0).all()
    new_values = set(np.unique(data)) - {0, 5}
    assert all(v > 5 for v in new_values)
    viewer.layers["mine"].undo()
    np.testing.assert_array_equal(viewer.layers["mine"].data, existing)


def test_manual_points_update_the_preview_and_commit_is_undoable(qtbot, viewer, widget, blobs_image):
    widget._mode.value = MODE_MANUAL
    widget._concept.value = ""  # plain SAM prompting
    widget._add_prompt_layers()
    positive = viewer.layers["blobs positive points"]
    positive.add([25, 30])  # (row, col) = the first disc's centre
    qtbot.waitUntil(lambda: "clipsam preview" in viewer.layers, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, widget)
    first = viewer.layers["clipsam preview"].data.copy()
    assert first.shape == blobs_image.shape and first.any()

    viewer.layers["blobs negative points"].add([70, 100])
    qtbot.waitUntil(lambda: widget._preview is not None and len(widget._preview[0].arguments["points"]) == 2,
                    timeout=TIMEOUT_MS)
    _wait_idle(qtbot, widget)
    request, _ = widget._preview
    np.testing.assert_array_equal(request.arguments["points"], [[30, 25], [100, 70]])  # XY
    np.testing.assert_array_equal(request.arguments["point_labels"], [1, 0])

    widget._commit_preview()
    output = viewer.layers["blobs objects"]
    assert output.data.max() == 1
    assert len(positive.data) == 0 and "clipsam preview" not in viewer.layers
    output.undo()
    assert output.data.max() == 0


def test_cancel_leaves_every_layer_untouched(qtbot, viewer, widget, tiny_model, monkeypatch):
    original = tiny_model.encoder_suffix

    def slow_suffix(*args, **kwargs):
        time.sleep(1.0)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "encoder_suffix", slow_suffix)
    before = [(layer.name, np.asarray(layer.data).copy()) for layer in viewer.layers]
    widget._concept.value = "nucleus"
    widget._on_run_clicked()
    qtbot.waitUntil(lambda: widget._status.value.startswith("image encoder"), timeout=TIMEOUT_MS)
    widget.cancel()
    _wait_idle(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == [name for name, _ in before]
    for (name, data), layer in zip(before, viewer.layers):
        np.testing.assert_array_equal(np.asarray(layer.data), data)
    assert "Cancelled" in widget._status.value


def test_stale_result_is_dropped(qtbot, viewer, widget, tiny_model, monkeypatch):
    original = tiny_model.encoder_suffix
    monkeypatch.setattr(tiny_model, "encoder_suffix", lambda *a, **k: (time.sleep(0.8), original(*a, **k))[1])
    widget._concept.value = "nucleus"
    widget._on_run_clicked()
    qtbot.waitUntil(lambda: widget._status.value.startswith("image encoder"), timeout=TIMEOUT_MS)
    widget._concept.value = "membrane"  # the user changed their mind meanwhile
    _wait_idle(qtbot, widget)
    assert "blobs nucleus" not in viewer.layers and "blobs membrane" not in viewer.layers
    assert "dropped" in widget._status.value


def test_gui_keeps_running_during_a_slow_encoder(qtbot, viewer, widget, tiny_model, monkeypatch):
    from qtpy.QtCore import QTimer

    original = tiny_model.encoder_suffix
    monkeypatch.setattr(tiny_model, "encoder_suffix", lambda *a, **k: (time.sleep(2.0), original(*a, **k))[1])
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    widget._concept.value = "nucleus"
    widget._on_run_clicked()
    _wait_idle(qtbot, widget)
    timer.stop()
    # 2 s of encoder at 20 ms per tick: a blocked event loop would give a handful.
    assert len(ticks) > 40
    assert max(np.diff(ticks)) < 0.5


def test_a_stack_segments_all_slices(qtbot, viewer, widget, blobs_image):
    stack = np.stack([blobs_image, blobs_image[::-1], blobs_image[:, ::-1]])
    viewer.add_image(stack, name="stack")
    widget.reset_choices()
    widget._image.value = viewer.layers["stack"]
    widget._instances.value = True
    widget._scope.value = SCOPE_ALL
    widget._concept.value = "nucleus"
    widget._on_run_clicked()
    _wait_idle(qtbot, widget)
    output = viewer.layers["stack nucleus"]
    assert output.data.shape == stack.shape
    per_plane = [set(np.unique(plane)) - {0} for plane in output.data]
    assert all(per_plane)
    assert not (per_plane[0] & per_plane[1]) and not (per_plane[1] & per_plane[2])


def test_similarity_preview_layer(qtbot, viewer, widget, blobs_image):
    widget._show_similarity.value = True
    widget._concept.value = "nucleus"
    widget._on_run_clicked()
    _wait_idle(qtbot, widget)
    similarity = viewer.layers["similarity: nucleus"]
    assert similarity.data.shape == blobs_image.shape
    assert similarity.data.min() >= 0 and similarity.data.max() <= 1
    assert tuple(similarity.scale) == (0.5, 0.25)


def test_sam_input_size_follows_the_adapters_or_the_choice(qtbot, viewer, widget, tiny_model, blobs_image,
                                                           monkeypatch):
    monkeypatch.setattr(tiny_model, "preferred_image_size", 128)  # as if its adapters were trained at 128
    widget._concept.value = "nucleus"
    assert widget._sam_input.value == "auto"
    widget._on_run_clicked()
    _wait_idle(qtbot, widget)
    assert widget._predictor.image_size == 128 and widget._predictor.image_embedding.shape[-2:] == (8, 8)
    widget._sam_input.value = "512"
    widget._on_run_clicked()
    _wait_idle(qtbot, widget)
    assert widget._predictor.image_size == 512 and widget._predictor.image_embedding.shape[-2:] == (32, 32)
    assert viewer.layers["blobs nucleus"].data.shape == blobs_image.shape


def test_errors_are_notified_not_raised(qtbot, viewer, widget, monkeypatch):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    widget._concept.value = ""
    widget._on_run_clicked()  # text-only without a concept
    assert messages and "concept" in messages[0]
    assert not widget.busy


def test_offline_model_loading_is_a_notification(qtbot, viewer, widget, monkeypatch, tmp_path):
    import socket

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("blocked")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    widget._model = None
    widget._model_key = None
    widget._device.value = "cpu"
    widget._concept.value = "nucleus"
    widget._on_run_clicked()
    _wait_idle(qtbot, widget)
    assert messages and "sam_vit_b_01ec64.pth" in messages[0]
    assert [layer.name for layer in viewer.layers] == ["blobs"]


def test_settings_persist_between_sessions(viewer, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", str(tmp_path / "settings.json"))
    first = ClipSamWidget(viewer)
    first._device.value = "cpu"
    first._mode.value = MODE_MANUAL
    first._sam_input.value = "512"
    first._remember_concept("mitochondria")
    second = ClipSamWidget(viewer)
    assert second._device.value == "cpu" and second._sam_input.value == "512"
    assert second._mode.value == MODE_MANUAL
    assert "mitochondria" in second._recent.choices
    assert NEW_LAYER in second._output.choices


def test_output_layer_of_another_shape_is_refused_before_running(qtbot, viewer, widget, monkeypatch):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    viewer.add_labels(np.zeros((50, 50), dtype=np.uint32), name="small")
    widget.reset_choices()
    widget._output.value = "small"
    widget._concept.value = "nucleus"
    widget._on_run_clicked()
    assert messages and "has shape (50, 50)" in messages[0]
    assert not widget.busy and not viewer.layers["small"].data.any()


def test_opening_the_widget_in_a_shown_napari_does_not_crash():
    """Importing the model code after napari's OpenGL context exists once killed napari
    under Mesa's software OpenGL (triton's LLVM against Mesa's); see _qt_jobs."""
    import subprocess
    import sys

    code = (
        "import napari\n"
        "viewer = napari.Viewer(show=True)\n"
        "dock, widget = viewer.window.add_plugin_dock_widget('napari-clipsam', 'Segment by concept')\n"
        "print(type(widget).__name__)\n"
        "viewer.close()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ClipSamWidget" in result.stdout
