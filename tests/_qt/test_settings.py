"""Widget settings: one conversion to load_model's arguments, for both dock widgets."""

from __future__ import annotations

import pytest

from napari_clipsam._qt.settings import WidgetSettings, load_settings, save_settings


@pytest.mark.parametrize("word", ["none", "None", "random", "none (random)"])
def test_none_words_mean_random_weights(word):
    arguments = WidgetSettings(sam_weights=word, clip_pretrained=word).model_arguments()
    assert arguments["sam_checkpoint"] is None and arguments["clip_pretrained"] is None


def test_empty_fields_take_their_defaults():
    arguments = WidgetSettings(clip=" ", clip_pretrained="", adapters="").model_arguments()
    assert arguments["clip"] == "ViT-B-16" and arguments["clip_pretrained"] == "default"
    assert arguments["adapters"] is None


def test_the_training_panel_loads_what_the_segmentation_widget_saved(tmp_path, monkeypatch, make_napari_viewer):
    """The panel once turned CLIP weights 'none' into the pretrained tag 'none' (ValueError)."""
    from napari_clipsam._qt.training_widget import TrainingWidget

    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", str(tmp_path / "widget.json"))
    save_settings(WidgetSettings(sam="tiny", sam_weights="none (random)", clip="tiny", clip_pretrained="none",
                                 adapters=str(tmp_path / "a.safetensors")))
    assert load_settings().clip_pretrained == "none"
    arguments = TrainingWidget(make_napari_viewer())._model_arguments()
    assert arguments == dict(load_settings().model_arguments(), adapters=None)
    assert arguments["clip_pretrained"] is None and arguments["sam_checkpoint"] is None


def test_a_preset_choice_loads_the_shipped_model_not_the_fields_architecture():
    from napari_clipsam._qt.settings import WidgetSettings

    settings = WidgetSettings(preset="demo", sam="vit_h", clip="ViT-L-14", device="cpu", precision="fp32")
    assert settings.model_arguments() == dict(preset="demo", adapters=None, device="cpu", precision="fp32")
    settings.preset = ""
    assert settings.model_arguments()["sam"] == "vit_h" and "preset" not in settings.model_arguments()
