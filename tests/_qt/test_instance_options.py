"""The widget's objects options: seeds or components, diameter, score threshold; they reach the pipeline and persist."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_clipsam as nc
from napari_clipsam._qt.requests import RequestError
from napari_clipsam._qt.segment_controls import METHOD_COMPONENTS, METHOD_SEEDS, MODE_MANUAL
from napari_clipsam._qt.settings import load_settings
from napari_clipsam.inference.pipeline import SegmentOptions
from tests._qt.widget_helpers import TIMEOUT_S


def _options(widget) -> SegmentOptions:
    controls = widget._controls
    return controls.options(controls.image.value, controls.kind(controls.image.value), "nucleus")


def _shown(control) -> bool:
    return not control.native.isHidden()  # hidden on purpose, whether or not the dock is on screen


def test_the_controls_say_the_pipeline_options(widget):
    controls = widget._controls
    assert _options(widget) == SegmentOptions()  # no instances: the object options are not sent
    controls.set_options(instances=True)
    assert controls.instance_method.value == METHOD_SEEDS  # touching objects apart by default
    assert _options(widget) == SegmentOptions(instances=True, instance_method="seeds", diameter=None)
    controls.set_options(diameter=18, score_threshold=0.25, min_area=12)
    assert _options(widget) == SegmentOptions(instances=True, diameter=18.0, score_threshold=0.25, min_area=12)
    controls.set_options(diameter=0)  # 0: estimated from the mask
    assert _options(widget).diameter is None
    controls.set_options(instance_method="components", diameter=30, refine=True, score_threshold=0.4)
    # The score threshold stays in its field but does not apply to components; the diameter
    # still picks the reading scale (Scale auto).
    assert _options(widget) == SegmentOptions(instances=True, instance_method="components", refine=True,
                                              min_area=12, diameter=30.0)
    controls.set_options(instances=False)
    assert _options(widget) == SegmentOptions(diameter=30.0)
    controls.set_options(scale=2)  # a scale of the user's own: the diameter has nothing left to do
    assert _options(widget) == SegmentOptions(scale=2.0)
    controls.set_options(instances=True, instance_method="seeds")
    assert _options(widget) == SegmentOptions(instances=True, refine=True, min_area=12, diameter=30.0,
                                              score_threshold=0.4, scale=2.0)
    controls.set_options(instances=False, scale=0, diameter=0)
    assert _options(widget) == SegmentOptions()
    with pytest.raises(ValueError, match="seeds, components"):
        controls.set_options(instance_method="watershed")
    assert _options(widget).other_concepts == "auto"  # the concepts the model lists compete
    widget.set_options(other_concepts=False)
    assert _options(widget) == SegmentOptions(other_concepts=None)


def test_other_concepts_show_in_the_text_only_mode_only(widget):
    controls = widget._controls
    assert _shown(controls.other_concepts)
    controls.mode.value = MODE_MANUAL
    assert not _shown(controls.other_concepts)


def test_the_widget_lets_the_models_other_concepts_compete(viewer, widget, tiny_model, blobs_image):
    tiny_model.concepts = ("nucleus", "spot")  # as adapters trained on labels of two concepts say
    widget.set_concept("nucleus")
    widget.segment()
    widget.wait(TIMEOUT_S)
    competing = nc.segment(blobs_image, "nucleus", model=tiny_model, other_concepts=["spot"])
    alone = nc.segment(blobs_image, "nucleus", model=tiny_model, other_concepts=None)
    assert competing.sum() < alone.sum()  # the comparison tells the two apart
    np.testing.assert_array_equal(np.asarray(viewer.layers["blobs nucleus"].data) > 0, competing > 0)
    widget.set_options(other_concepts=False)
    widget.segment()
    widget.wait(TIMEOUT_S)
    np.testing.assert_array_equal(np.asarray(viewer.layers["blobs nucleus"].data) > 0, alone > 0)


def test_the_flips_and_turns_choice_reaches_the_pipeline_shows_in_text_mode_and_persists(
        viewer, widget, tiny_model, blobs_image, tmp_path, monkeypatch, make_napari_viewer):
    from napari_clipsam._qt.segment_widget import ClipSamWidget

    controls = widget._controls
    assert _options(widget).augment == "auto" and _shown(controls.augment)
    widget.set_options(augment=True)
    assert _options(widget) == SegmentOptions(augment=True)
    widget.set_concept("nucleus")
    widget.segment()
    widget.wait(TIMEOUT_S)
    averaged = nc.segment(blobs_image, "nucleus", model=tiny_model, augment=True)
    assert not np.array_equal(averaged, nc.segment(blobs_image, "nucleus", model=tiny_model, augment=False))
    np.testing.assert_array_equal(np.asarray(viewer.layers["blobs nucleus"].data), averaged)
    controls.mode.value = MODE_MANUAL
    assert not _shown(controls.augment)
    path = tmp_path / "widget.json"
    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", str(path))
    first = ClipSamWidget(make_napari_viewer())
    first.set_options(augment=False)
    assert load_settings().augment == "off" and first._controls.augment.value == "off"
    assert ClipSamWidget(make_napari_viewer())._controls.augment.value == "off"


def test_seed_fields_show_only_for_seeds_and_the_diameter_also_for_the_automatic_scale(widget):
    controls = widget._controls
    scale = controls.large.scale
    assert not any(_shown(c) for c in (controls.instance_method, controls.score_threshold))
    assert _shown(controls.diameter)  # Scale auto: the objects' diameter picks the scale
    scale.value = 1.5
    assert not _shown(controls.diameter)
    controls.instances.value = True
    assert _shown(controls.instance_method) and _shown(controls.diameter) and _shown(controls.score_threshold)
    controls.instance_method.value = METHOD_COMPONENTS
    assert not _shown(controls.diameter) and not _shown(controls.score_threshold) and _shown(controls.refine)
    scale.value = 0
    assert _shown(controls.diameter) and not _shown(controls.score_threshold)
    assert controls.diameter.native.specialValueText() == "auto"
    assert _shown(controls.diameter_unit)  # the unit goes with the diameter
    scale.value = 2
    assert not _shown(controls.diameter_unit)


def test_a_diameter_in_micrometres_is_the_layers_pixels_by_its_scale_and_units(viewer, widget):
    controls, layer = widget._controls, viewer.layers["blobs"]  # scale (0.5, 0.25)
    widget.set_options(diameter=10.5, diameter_unit="um")
    assert controls.diameter_unit.value == "µm" and controls.diameter.value == 10.5
    with pytest.raises(RequestError, match="'blobs' gives no physical pixel size .*pixel.*give the object diameter in px"):
        _options(widget)  # napari's default units are pixels, whatever the scale
    layer.units = ("um", "um")  # as readers of OME files set them
    assert _options(widget).diameter == pytest.approx(10.5 / np.sqrt(0.5 * 0.25))
    layer.units = ("nm", "nm")
    assert _options(widget).diameter == pytest.approx(10500 / np.sqrt(0.5 * 0.25))
    layer.units = ("mm", "mm")  # 10.5 µm would be 0.03 px
    with pytest.raises(RequestError, match="check the layer's scale and units"):
        _options(widget)
    widget.set_options(diameter_unit="px")
    assert _options(widget) == SegmentOptions(diameter=10.5)
    widget.set_options(diameter_unit="micrometre")  # any word SegmentOptions takes
    assert controls.diameter_unit.value == "µm"
    with pytest.raises(ValueError, match=r"diameter_unit must be 'px' \(pixels\) or 'um'"):
        widget.set_options(diameter_unit="inch")


def test_the_widget_gives_segments_seeded_labels(viewer, widget, tiny_model, blobs_image):
    options = dict(instances=True, instance_method="seeds", diameter=20, score_threshold=0.0, min_area=10)
    widget._controls.set_options(**options)
    widget.set_concept("nucleus")
    widget.segment()
    widget.wait(TIMEOUT_S)
    labels = np.asarray(viewer.layers["blobs nucleus"].data)
    expected = nc.segment(blobs_image, "nucleus", model=tiny_model, **options)
    assert expected.max() >= 1
    np.testing.assert_array_equal(labels, expected)


def test_the_object_options_persist(tmp_path, monkeypatch, make_napari_viewer):
    from napari_clipsam._qt.segment_widget import ClipSamWidget

    path = tmp_path / "widget.json"
    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", str(path))
    first = ClipSamWidget(make_napari_viewer())
    first._controls.set_options(instances=True, instance_method="components", min_area=25, refine=True)
    first._controls.set_options(diameter=22, score_threshold=0.7, link_planes=False, other_concepts=False,
                                diameter_unit="um")
    saved = load_settings()
    assert saved.link_planes is False and saved.other_concepts is False
    assert (saved.instances, saved.instance_method, saved.refine, saved.min_area) == (True, "components", True, 25)
    assert (saved.diameter, saved.diameter_unit, saved.score_threshold) == (22, "µm", pytest.approx(0.7))
    assert json.loads(path.read_text())["instance_method"] == "components"
    controls = ClipSamWidget(make_napari_viewer())._controls
    assert controls.instances.value and controls.instance_method.value == METHOD_COMPONENTS
    assert (controls.min_area.value, controls.refine.value, controls.diameter.value) == (25, True, 22)
    assert controls.diameter_unit.value == "µm"
    assert controls.score_threshold.value == pytest.approx(0.7)
    assert controls.link_planes.value is False and controls.other_concepts.value is False


def test_damaged_object_settings_keep_the_defaults(tmp_path, monkeypatch, make_napari_viewer):
    from napari_clipsam._qt.segment_widget import ClipSamWidget

    path = tmp_path / "widget.json"
    path.write_text(json.dumps({"instance_method": "watershed", "min_area": -5, "diameter": "wide",
                                "score_threshold": 0.3, "sam": "tiny"}))
    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", str(path))
    controls = ClipSamWidget(make_napari_viewer())._controls
    assert controls.instance_method.value == METHOD_SEEDS
    assert (controls.min_area.value, controls.diameter.value) == (0, 0)
    assert controls.score_threshold.value == pytest.approx(0.3)  # the readable values are kept
