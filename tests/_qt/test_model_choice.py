"""The widget's model choice: SAM + CLIP as the fields say, or a model shipped in the package."""

from __future__ import annotations

import torch

from napari_clipsam._qt.model_fields import OWN_CHOICE, ModelFields
from napari_clipsam._qt.settings import WidgetSettings
from napari_clipsam.weights.presets import PRESETS
from tests.helpers import load_tiny


def test_choosing_the_demo_model_disables_the_architecture_fields_and_is_remembered():
    settings = WidgetSettings()
    fields = ModelFields(settings)
    assert fields.model.value == OWN_CHOICE and fields.sam.enabled
    fields.model.value = PRESETS["demo"].label
    assert "not for real data" in fields.model.value
    assert not any(f.enabled for f in (fields.sam, fields.sam_weights, fields.clip, fields.clip_pretrained))
    assert fields.adapters.enabled and fields.device.enabled  # still apply to a preset
    fields.store(settings)
    assert settings.preset == "demo" and settings.model_arguments()["preset"] == "demo"
    reopened = ModelFields(settings)  # the next session shows the same choice
    assert reopened.model.value == PRESETS["demo"].label and not reopened.sam.enabled


def test_the_loaded_models_concepts_are_offered_after_the_recent_ones(widget):
    widget._settings.recent_concepts = ["mitochondria"]
    torch.manual_seed(0)
    model = load_tiny()
    model.concepts = ("nucleus", "mitochondria", "spot")
    widget.use_model(model)
    assert widget._controls.recent.choices == ("", "mitochondria", "nucleus", "spot")
