"""What the segmentation widget guarantees (docs/widget.md): nothing lost, nothing crashed.

Buttons and keys are safe at any time, what is committed is what the user sees, label
values stay unique per concept across undo, closing the dock writes nothing, long text
never widens the dock, and the output follows the image unless the user chose one.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from napari_clipsam._qt.label_layers import write_labels
from napari_clipsam._qt.segment_widget import MODE_MANUAL, NEW_LAYER
from napari_clipsam.inference.layers import CONCEPTS_METADATA_KEY
from tests._qt.widget_helpers import TIMEOUT_MS, TIMEOUT_S, BlockingEncoder, press


def _wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


@pytest.fixture
def notices(monkeypatch):
    """The napari notifications the widget shows, instead of napari's pop-ups."""
    shown: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    monkeypatch.setattr("napari.utils.notifications.show_info", shown.append)
    return shown


def test_load_model_while_a_job_runs_is_refused_with_a_notice(qtbot, viewer, widget, tiny_model, monkeypatch,
                                                               notices):
    """The status line alone was overwritten by the job's next stage at once: the refusal went unseen."""
    encoder = BlockingEncoder(tiny_model, monkeypatch)
    widget.set_concept("nucleus")
    widget.segment()
    qtbot.waitUntil(encoder.started.is_set, timeout=TIMEOUT_MS)
    widget._model_fields.load_button.changed.emit(True)  # what a click emits
    assert notices and "A job is running" in notices[-1]
    encoder.release.set()
    widget.wait(TIMEOUT_S)
    assert widget.model is tiny_model  # nothing was loaded instead


def test_every_button_and_key_while_a_preview_is_computed(qtbot, viewer, widget, tiny_model, monkeypatch, notices):
    """No exception out of any button or key while a job runs; a clear wins over the preview still under way."""
    widget.set_concept("")
    widget.set_prompts(points=[[25, 30]])
    encoder = BlockingEncoder(tiny_model, monkeypatch)
    widget.segment()
    qtbot.waitUntil(encoder.started.is_set, timeout=TIMEOUT_MS)
    controls = widget._controls
    for button in (widget._model_fields.load_button, controls.run_button, controls.prompts_button,
                   controls.commit_button):
        button.changed.emit(True)
    for key in ("S", "C", "T", "T", "Shift-C"):
        assert press(viewer, key), key
    encoder.release.set()
    _wait_idle(qtbot, widget)
    assert "clipsam preview" not in viewer.layers and widget._preview is None
    assert "prompts were cleared" in controls.status.value
    assert not any(isinstance(layer, Labels) for layer in viewer.layers)
    controls.cancel_button.changed.emit(True)  # nothing to cancel: still no exception


def test_accept_writes_the_preview_as_the_user_edited_it(qtbot, viewer, widget):
    widget.set_concept("")
    widget.set_prompts(points=[[25, 30]])
    widget.segment()
    result = widget.wait(TIMEOUT_S)
    preview = viewer.layers["clipsam preview"]
    computed = result.labels.copy()
    edited = computed > 0
    rows, _ = np.nonzero(edited)
    edited[: int(np.median(rows))] = False  # the user erased the upper half of the mask...
    edited[80:90, 5:15] = True  # ...and painted a square elsewhere, as the brush does:
    changed = np.nonzero(edited != (np.asarray(preview.data) > 0))
    preview.data_setitem(changed, edited[changed].astype(preview.data.dtype))
    widget._controls.commit_button.changed.emit(True)
    np.testing.assert_array_equal(viewer.layers["blobs objects"].data > 0, edited)
    np.testing.assert_array_equal(result.labels, computed)  # the job's result stays as computed


def test_accepting_into_a_full_uint8_layer_is_a_message(qtbot, viewer, widget, notices):
    full = np.zeros((96, 128), dtype=np.uint8)
    full[0, 0] = 255
    viewer.add_labels(full.copy(), name="full")
    widget.set_options(output="full")
    widget.set_concept("")
    widget.set_prompts(points=[[25, 30]])
    widget.segment()
    widget.wait(TIMEOUT_S)
    widget._controls.commit_button.changed.emit(True)
    viewer.layers.selection.active = viewer.layers["blobs positive points"]
    assert press(viewer, "C")
    assert len(notices) == 2 and all("uint8" in message for message in notices)
    assert "uint8" in widget._controls.status.value
    np.testing.assert_array_equal(viewer.layers["full"].data, full)
    assert "clipsam preview" in viewer.layers and widget._preview is not None  # kept for another output


def test_a_concept_keeps_its_own_value_after_an_undo():
    """Run A, undo, run B, run A: A and B once shared value 1 (the concept map is not part of undo)."""
    layer = Labels(np.zeros((20, 20), dtype=np.uint32))
    first, second = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    first[2:6, 2:6], second[10:15, 10:15] = True, True
    write_labels(layer, [((), first)], concept="nucleus", instances=False, replace=False)
    layer.undo()
    write_labels(layer, [((), second)], concept="membrane", instances=False, replace=False)
    write_labels(layer, [((), first)], concept="nucleus", instances=False, replace=False)
    concepts = layer.metadata[CONCEPTS_METADATA_KEY]
    assert concepts["nucleus"] != concepts["membrane"]
    assert set(np.unique(layer.data[first])) == {concepts["nucleus"]}
    assert set(np.unique(layer.data[second])) == {concepts["membrane"]}
    # Objects written without a concept do not take a concept's value either.
    write_labels(layer, [((), first)], concept="nucleus", instances=False, replace=False)  # no new pixels
    layer.undo()  # the second nucleus run: its value is free again
    objects = np.zeros((20, 20), np.int32)
    objects[2:4, 15:18] = 1
    new = write_labels(layer, [((), objects)], concept=None, instances=True, replace=False)
    assert new and concepts.get("nucleus") not in new


def _segment(widget, concept: str) -> None:
    widget.set_concept(concept)
    widget.segment()
    widget.wait(TIMEOUT_S)


def test_label_values_stay_unique_per_concept_across_undo_in_the_widget(qtbot, viewer, widget):
    widget.set_options(replace=True)  # every run writes its whole mask, whatever the masks overlap
    _segment(widget, "nucleus")
    output = viewer.layers["blobs nucleus"]
    output.undo()
    _segment(widget, "membrane")
    _segment(widget, "nucleus")
    concepts = output.metadata[CONCEPTS_METADATA_KEY]
    assert concepts["nucleus"] != concepts["membrane"]
    assert concepts["nucleus"] in output.data


def test_closing_the_dock_cancels_the_job_and_writes_nothing(qtbot, viewer, widget, tiny_model, monkeypatch):
    widget._controls.mode.value = MODE_MANUAL
    widget.set_concept("nucleus")
    widget.set_prompts(points=[[25, 30]])
    encoder = BlockingEncoder(tiny_model, monkeypatch)
    widget.segment()
    qtbot.waitUntil(encoder.started.is_set, timeout=TIMEOUT_MS)
    names = [layer.name for layer in viewer.layers]
    viewer.window.remove_dock_widget(widget.native)  # the dock's x
    encoder.release.set()
    with pytest.raises(RuntimeError, match="Cancelled"):
        widget.wait(TIMEOUT_S)
    _wait_idle(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == names  # no preview, no similarity map
    viewer.layers["blobs positive points"].add([70, 100])  # an edit no closed widget answers
    assert not widget._debounce.isActive() and not widget.busy


def _widths(native) -> tuple[int, int, int]:
    """The dock widget's minimum and preferred widths, and its dock's minimum width, once laid out."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()  # Qt lays out again on a posted event
    return native.minimumSizeHint().width(), native.sizeHint().width(), native.parent().minimumSizeHint().width()


def test_long_text_never_widens_the_dock(qtbot, viewer, widget, blobs_image):
    """A 2,000-character concept without spaces once made the dock 15,000 px wide."""
    viewer.window.show()  # sizes of hidden widgets are not kept up to date
    before = _widths(widget.native)
    long = "nucleus" * 300
    widget.set_concept(long)
    widget._remember_concept(long)  # the Recent list
    viewer.add_labels(np.zeros(blobs_image.shape, np.uint8), name=f"labels {long}")  # the Output list
    viewer.add_image(blobs_image, name="/data/" + "folder/" * 300)  # the Image list
    status = f"Error: cannot read /data/{long}.tif"
    widget._set_status(status)
    assert widget._controls.status.value == status
    assert _widths(widget.native) == before
    # A widget opened when the lists already hold long names is no wider either.
    _, second = viewer.window.add_plugin_dock_widget("napari-clipsam", "Segment by concept", tabify=True)
    second.set_concept(long)
    assert all(after <= limit for after, limit in zip(_widths(second.native), before))


def test_the_output_follows_the_image_unless_chosen(qtbot, viewer, widget, blobs_image):
    """A second image of the same shape once went into the first image's labels."""
    viewer.add_image(blobs_image[::-1].copy(), name="second")
    output = widget._controls.output
    widget.set_concept("nucleus")
    widget.segment()
    widget.wait(TIMEOUT_S)
    first = viewer.layers["blobs nucleus"].data.copy()
    widget.set_image("second")
    assert output.value == NEW_LAYER
    widget.segment()
    widget.wait(TIMEOUT_S)
    assert viewer.layers["second nucleus"].data.any()
    np.testing.assert_array_equal(viewer.layers["blobs nucleus"].data, first)
    widget.set_image("blobs")
    assert output.value == "blobs nucleus"  # back to the image's own layer

    # Chosen by the user in the list: it stays, whatever the image.
    output.value = "second nucleus"
    output.native.activated.emit(output.choices.index("second nucleus"))
    widget.set_image("second")
    widget.set_image("blobs")
    assert output.value == "second nucleus"
    # Chosen by a script: the same.
    widget.set_options(output="blobs nucleus")
    widget.set_image("second")
    assert output.value == "blobs nucleus"
    widget.set_options(output=NEW_LAYER)  # back to following the image
    assert output.value == NEW_LAYER
    widget.set_image("blobs")
    assert output.value == "blobs nucleus"


def test_closing_napari_mid_job_starts_nothing_and_writes_nothing(qtbot, viewer, widget, tiny_model, monkeypatch):
    """napari quits the workers of a closing window: the queued request must not start in a
    window that is going away, and no callback may reach the deleted widget."""
    encoder = BlockingEncoder(tiny_model, monkeypatch)
    widget.set_concept("nucleus")
    widget.segment()
    qtbot.waitUntil(encoder.started.is_set, timeout=TIMEOUT_MS)
    widget.set_concept("membrane")
    widget.segment()  # queued behind the first
    runner, calls = widget._jobs._runner, len(encoder.threads)
    with qtbot.waitSignal(widget.native.destroyed, timeout=TIMEOUT_MS):
        viewer.close()
    encoder.release.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=TIMEOUT_MS)
    assert len(encoder.threads) == calls  # the queued request never ran
    assert not any(isinstance(layer, Labels) for layer in viewer.layers)
