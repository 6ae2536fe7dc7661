"""The segmentation widget's keyboard shortcuts, pressed through napari's own key handler."""

from __future__ import annotations

import pytest
from napari.utils.key_bindings import coerce_keybinding

from napari_clipsam._qt.segment_widget import ClipSamWidget
from napari_clipsam._qt.shortcuts import SHORTCUTS, _viewer_binding
from tests._qt.widget_helpers import TIMEOUT_MS, TIMEOUT_S, press


def _wait_for_preview(qtbot, widget, points: int):
    qtbot.waitUntil(
        lambda: widget._preview is not None and len(widget._preview[0].prompts["points"]) == points
        and not widget.busy, timeout=TIMEOUT_MS,
    )


def test_napari_binds_none_of_our_keys_on_the_viewer_and_these_on_layers(make_napari_viewer):
    """The clashes shortcuts.py describes: none on the viewer, S/T/C on some layer types."""
    from napari import layers

    viewer = make_napari_viewer()
    for key in SHORTCUTS:
        assert _viewer_binding(viewer, coerce_keybinding(key)) is None, key
    clashes = set()
    for layer_type in (layers.Image, layers.Labels, layers.Points, layers.Shapes, layers.Surface, layers.Tracks,
                       layers.Vectors):
        for key in SHORTCUTS:
            if any(coerce_keybinding(key) in cls.__dict__.get("class_keymap", {}) for cls in layer_type.__mro__):
                clashes.add((layer_type.__name__, key))
    assert clashes == {("Points", "S"), ("Shapes", "S"), ("Shapes", "T"), ("Image", "C")}


def test_keys_are_bound_while_docked_and_unbound_when_the_dock_closes(viewer, widget):
    bound = {str(key) for key in viewer.keymap}
    assert bound == {"S", "C", "T", "Shift+C"}
    assert all(f"{key}: {action}" in widget.tooltip for key, action in SHORTCUTS.items())
    widget._key_toggle(viewer)  # makes the prompt layers, which get the keys too
    positive = viewer.layers["blobs positive points"]
    assert {"S", "C", "T", "Shift+C"} <= {str(key) for key in positive.keymap}
    viewer.window.remove_dock_widget(widget.native)
    assert not viewer.keymap
    assert not ({"S", "C", "T", "Shift+C"} & {str(key) for key in positive.keymap})
    assert "S" in {str(key) for key in type(positive).class_keymap}  # napari's own binding is back in charge


def test_a_key_someone_else_bound_is_left_alone(viewer, tiny_model):
    def theirs(viewer):
        return None

    viewer.bind_key("S", theirs)
    widget = ClipSamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._shortcuts.skipped == ["S"]
    assert viewer.keymap[coerce_keybinding("S")] is theirs
    viewer.window.remove_dock_widget(widget.native)
    assert viewer.keymap[coerce_keybinding("S")] is theirs


def test_s_segments_with_the_image_layer_active(viewer, widget):
    viewer.layers.selection.active = viewer.layers["blobs"]
    widget.set_concept("nucleus")
    assert press(viewer, "S")
    widget.wait(TIMEOUT_S)
    assert viewer.layers["blobs nucleus"].data.any()


def test_t_switches_points_s_updates_c_accepts_on_the_prompt_layers(qtbot, viewer, widget):
    widget.set_concept("")
    viewer.layers.selection.active = viewer.layers["blobs"]
    assert press(viewer, "T")  # no prompt layers yet: makes them, positive first
    positive, negative = viewer.layers["blobs positive points"], viewer.layers["blobs negative points"]
    assert viewer.layers.selection.active is positive and positive.mode == "add"
    assert press(viewer, "T")
    assert viewer.layers.selection.active is negative and negative.mode == "add"
    assert press(viewer, "T")
    assert viewer.layers.selection.active is positive

    with positive.events.data.blocker():  # no automatic update: S must do it
        positive.add([25, 30])
    assert press(viewer, "S")
    assert positive.mode == "add"  # our S, not the Points layer's select mode
    _wait_for_preview(qtbot, widget, points=1)
    assert press(viewer, "C")
    output = viewer.layers["blobs objects"]
    assert output.data.max() == 1
    assert len(positive.data) == 0 and "clipsam preview" not in viewer.layers


def test_shift_c_clears_the_prompts_and_the_preview(qtbot, viewer, widget):
    widget.set_concept("")
    widget.set_prompts(points=[[25, 30], [70, 100]], labels=[1, 0], box=[[10, 15], [40, 45]])
    widget.segment()
    widget.wait(TIMEOUT_S)
    assert "clipsam preview" in viewer.layers
    viewer.layers.selection.active = viewer.layers["blobs box"]
    assert press(viewer, "Shift-C")
    for name in ("blobs positive points", "blobs negative points", "blobs box"):
        assert len(viewer.layers[name].data) == 0, name
    assert "clipsam preview" not in viewer.layers and widget._preview is None


def test_c_on_an_image_layer_keeps_napari_meaning(qtbot, viewer, widget):
    widget.set_concept("")
    widget.set_prompts(points=[[25, 30]])
    widget.segment()
    widget.wait(TIMEOUT_S)
    image = viewer.layers["blobs"]
    image.contrast_limits = (0, 1)
    viewer.layers.selection.active = image
    assert press(viewer, "C")
    assert widget._preview is not None and "blobs objects" not in viewer.layers
    assert tuple(image.contrast_limits) != (0, 1)  # napari's auto-contrast ran instead


@pytest.mark.parametrize("key", ["S", "C", "T", "Shift-C"])
def test_keys_report_instead_of_raising_without_an_image(make_napari_viewer, monkeypatch, key):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    viewer = make_napari_viewer()
    widget = ClipSamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert press(viewer, key)
    assert not widget.busy and widget._controls.status.value
    assert len(viewer.layers) == 0
