"""The training panel, with the tiny model, under pytest-qt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam._qt.segment_widget import ClipSamWidget
from napari_clipsam._qt.training_widget import TrainingWidget
from tests.helpers import load_tiny, two_kinds_image

TIMEOUT_MS = 120_000


def _tiny():
    torch.manual_seed(0)
    return load_tiny()


@pytest.fixture
def panel(make_napari_viewer):
    viewer = make_napari_viewer()
    for seed in range(3):
        image, labels = two_kinds_image(seed)
        viewer.add_image(image, name=f"image {seed}")
        viewer.add_labels(labels, name=f"labels {seed}")
    _, panel = viewer.window.add_plugin_dock_widget("napari-clipsam", "Train adapters")
    assert isinstance(panel, TrainingWidget)
    first = list(panel._pairs)[0]
    first.image.value, first.labels.value = viewer.layers["image 0"], viewer.layers["labels 0"]
    for seed in (1, 2):
        panel.add_pair(viewer.layers[f"image {seed}"], viewer.layers[f"labels {seed}"])
    panel.use_base_model(_tiny())
    return viewer, panel


def test_panel_trains_saves_and_hands_over_the_adapters(qtbot, panel, tmp_path):
    viewer, panel = panel
    panel._list_label_values()
    assert panel._concepts.value == "1=, 2="
    panel._concepts.value = "1=disc, 2=square"
    panel._steps.value = 6
    panel._learning_rate.value = 1e-3
    panel._val_fraction.value = 0.34
    output = tmp_path / "trained.safetensors"
    panel._output.value = str(output)
    panel._on_train_clicked()
    assert panel.busy
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert output.is_file()
    assert len(panel._plot.losses) == panel._result.steps_run >= 1 and panel._plot.validation
    assert "before" in panel._result_label.value and "disc" in panel._result_label.value
    assert panel._use_button.enabled

    panel._use_adapters()
    _, segmentation = viewer.window.add_plugin_dock_widget("napari-clipsam", "Segment by concept")
    assert isinstance(segmentation, ClipSamWidget)
    assert segmentation._model is panel._model
    assert str(segmentation._adapters.value) == str(output)


def test_panel_sam_input_and_clip_co_training_reach_the_saved_file(qtbot, panel, tmp_path):
    viewer, panel = panel
    assert panel._sam_input.value == "auto" and panel._training_size(panel._base_model) is None  # tiny: 256 < 512
    panel._concepts.value = "1=disc, 2=square"
    panel._steps.value = 1
    panel._val_fraction.value = 0.0
    panel._sam_input.value = "512"
    panel._train_clip.value = True
    output = tmp_path / "co.safetensors"
    panel._output.value = str(output)
    panel._on_train_clicked()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    metadata = nc.read_adapters_metadata(output)
    assert metadata["training_image_size"] == "512"
    assert json.loads(metadata["config"])["train_clip_attention"] is True
    assert panel._model.preferred_image_size == 512


def test_cancelled_training_keeps_the_previous_file(qtbot, panel, tmp_path):
    viewer, panel = panel
    output = tmp_path / "trained.safetensors"
    _tiny().save_adapters(output, concepts=["old"])
    before = output.read_bytes()
    panel._concepts.value = "1=disc, 2=square"
    panel._steps.value = 500
    panel._output.value = str(output)
    panel._overwrite.value = True  # replacing is allowed, but only by a finished run
    panel._on_train_clicked()
    qtbot.waitUntil(lambda: len(panel._plot.losses) >= 2, timeout=TIMEOUT_MS)
    panel.cancel()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert output.read_bytes() == before
    assert "Cancelled" in panel._status.value
    assert not panel._use_button.enabled


def test_bad_input_is_reported_not_raised(qtbot, panel, monkeypatch, tmp_path):
    viewer, panel = panel
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    panel._concepts.value = "1=disc, x=square"
    panel._on_train_clicked()
    assert messages and "Cannot read" in messages[0]
    panel._concepts.value = "7=absent"
    panel._on_train_clicked()
    assert "none of the label values" in messages[-1]
    # An existing adapters file is not replaced unless asked.
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"trained for weeks")
    panel._concepts.value = "1=disc"
    panel._output.value = str(existing)
    panel._on_train_clicked()
    assert "exists" in messages[-1] and "Replace" in messages[-1]
    assert existing.read_bytes() == b"trained for weeks"
    assert not panel.busy


def test_stack_layers_give_one_sample_per_annotated_slice(make_napari_viewer):
    viewer = make_napari_viewer()
    images, labels = zip(*(two_kinds_image(seed) for seed in range(3)))
    stack_labels = np.stack(labels)
    stack_labels[1] = 0  # an unannotated slice
    viewer.add_image(np.stack(images), name="stack")
    viewer.add_labels(stack_labels, name="stack labels")
    panel = TrainingWidget(viewer)
    viewer.window.add_dock_widget(panel)
    row = list(panel._pairs)[0]
    row.reset_choices()
    row.image.value, row.labels.value = viewer.layers["stack"], viewer.layers["stack labels"]
    panel._concepts.value = "object"
    dataset = panel._dataset()
    assert len(dataset) == 2
