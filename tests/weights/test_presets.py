"""Models shipped in the package: the preset registry and load_model(preset=...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam.weights import presets
from tests.helpers import load_tiny


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="Unknown preset 'nope'; choose one of demo"):
        presets.get_preset("nope")


def test_a_preset_file_missing_from_the_installation_says_to_reinstall(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "gone", presets.Preset("gone", "gone.safetensors", "tiny", "tiny", "Gone"))
    with pytest.raises(FileNotFoundError, match="missing from this installation.*reinstall"):
        presets.preset_path("gone")


def test_a_preset_builds_its_architecture_from_the_file_alone(monkeypatch, tmp_path):
    torch.manual_seed(0)
    trained = load_tiny()
    with torch.no_grad():
        for weight in trained.every_weight().values():
            weight.add_(torch.randn(weight.shape) * 0.01)
    path = trained.save_adapters(tmp_path / "tiny-preset.safetensors", concepts=["disc", "square"], every_weight=True,
                                 extra_metadata={"description": "A test preset."})
    monkeypatch.setitem(presets.PRESETS, "test", presets.Preset("test", path.name, "tiny", "tiny", "Test preset"))
    monkeypatch.setattr(presets, "preset_path", lambda name: path)

    torch.manual_seed(99)  # another random start: everything must come from the file
    model = nc.load_model(preset="test", device="cpu", precision="fp32")
    assert model.concepts == ("disc", "square") and model.description == "A test preset."
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(weight, trained.state_dict()[name])
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    # The preset lists its concepts, so by default "square" competes with "disc" there (the model
    # built in the test lists none): the same masks when the other concept is named.
    results = [nc.segment(image, "disc", model), nc.segment(image, "disc", trained, other_concepts=["square"])]
    np.testing.assert_array_equal(results[0], results[1])
