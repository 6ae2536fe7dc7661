"""Packaging: import hygiene, the npe2 manifest, and the sample data it offers."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManifest
from npe2.manifest.utils import import_python_name
from scipy import ndimage

from napari_clipsam._sample_data import (
    SAMPLE_IMAGES,
    make_cell_sample,
    make_coins_sample,
    make_demo_sample,
    make_nuclei_sample,
    sample_image,
    synthetic_nuclei,
)

DISTRIBUTION = "napari-clipsam"
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui")


def test_import_loads_no_gui():
    # A fresh interpreter: other tests' imports would otherwise leak into sys.modules.
    code = (
        "import json, sys\n"
        "import napari_clipsam, napari_clipsam._sample_data\n"
        f"print(json.dumps([m for m in {GUI_MODULES!r} if m in sys.modules]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing napari_clipsam imported {loaded}"


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_import_asks_torch_for_huge_pages_unless_told_not_to(preset, expected):
    """Before torch is imported (it reads THP_MEM_ALLOC_ENABLE once); a value already set is kept."""
    import os

    environment = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        environment["THP_MEM_ALLOC_ENABLE"] = preset
    code = "import os, sys, napari_clipsam\nprint(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                               env=environment)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == [expected, "False"]


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_distribution(DISTRIBUTION)


def test_manifest_is_valid_and_importable(manifest):
    assert manifest.name == DISTRIBUTION
    assert manifest.display_name == "CLIP-Guided SAM"
    manifest.validate_imports()


def test_manifest_ships_inside_the_package():
    installed = importlib.resources.files("napari_clipsam") / "napari.yaml"
    assert installed.is_file()
    # One manifest, kept as package data (the napari plugin template's layout); no copy at the top.
    assert not (REPOSITORY_ROOT / "napari.yaml").exists()


def test_no_module_is_over_400_lines():
    package = Path(importlib.resources.files("napari_clipsam"))
    long = {str(path.relative_to(package)): n for path in package.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}, f"split these modules: {long}"


def test_every_error_is_exported_under_one_base_class():
    import napari_clipsam
    from napari_clipsam import errors

    for name in errors.__all__:
        error = getattr(napari_clipsam, name)
        assert error is getattr(errors, name) and issubclass(error, napari_clipsam.ClipSamError)
    assert issubclass(napari_clipsam.WeightsUnavailableError, OSError)
    assert issubclass(napari_clipsam.AdaptersMismatchError, ValueError)


def test_console_script_points_at_cli():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    (script,) = [entry for entry in scripts if entry.name == DISTRIBUTION]
    assert script.value == "napari_clipsam.cli:main"
    assert callable(script.load())


@pytest.fixture(scope="module")
def default_nuclei() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_nuclei()


def _check_layer_data(layer_data, expected):
    """`expected` is one (shape, dtype, layer type) per returned layer."""
    assert isinstance(layer_data, list)
    assert len(layer_data) == len(expected)
    for (data, metadata, layer_type), (shape, dtype, expected_type) in zip(
        layer_data, expected
    ):
        assert layer_type == expected_type
        assert isinstance(metadata, dict) and metadata["name"]
        assert data.shape == shape
        assert data.dtype == dtype


def test_cell_sample():
    _check_layer_data(make_cell_sample(), [((660, 550), np.uint8, "image")])


def test_coins_sample():
    _check_layer_data(make_coins_sample(), [((303, 384), np.uint8, "image")])


def test_nuclei_sample_has_image_and_ground_truth(default_nuclei):
    layers = make_nuclei_sample()
    _check_layer_data(
        layers,
        [((512, 512), np.uint16, "image"), ((512, 512), np.int32, "labels")],
    )
    np.testing.assert_array_equal(layers[0][0], default_nuclei[0])
    np.testing.assert_array_equal(layers[1][0], default_nuclei[1])


def test_demo_sample_has_image_and_ground_truth_per_concept():
    layers = make_demo_sample()
    _check_layer_data(layers, [((256, 256), np.uint8, "image")] + [((256, 256), np.int32, "labels")] * 3)
    names = [metadata["name"] for _, metadata, _ in layers[1:]]
    assert names == ["nucleus ground truth", "cell membrane ground truth", "spot ground truth"]
    np.testing.assert_array_equal(layers[0][0], sample_image("demo"))
    # Instance labels 1..n, and no pixel in two concepts.
    for labels, _, _ in layers[1:]:
        np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert sum((labels > 0).astype(int) for labels, _, _ in layers[1:]).max() == 1


def test_every_manifest_sample_command_returns_layers(manifest):
    commands = {command.id: command for command in manifest.contributions.commands}
    keys = [sample.key for sample in manifest.contributions.sample_data]
    assert sorted(keys) == sorted(SAMPLE_IMAGES)
    for sample in manifest.contributions.sample_data:
        function = import_python_name(commands[sample.command].python_name)
        layers = function()
        assert layers and all(layer_type in {"image", "labels"} for *_, layer_type in layers)


def test_sample_image_by_name():
    assert sample_image("coins").shape == (303, 384)
    with pytest.raises(ValueError, match="unknown sample"):
        sample_image("no such sample")


def test_synthetic_nuclei_is_deterministic(default_nuclei):
    image, labels = synthetic_nuclei(seed=0)
    np.testing.assert_array_equal(image, default_nuclei[0])
    np.testing.assert_array_equal(labels, default_nuclei[1])
    other_image, other_labels = synthetic_nuclei(seed=1)
    assert not np.array_equal(other_labels, labels)
    assert not np.array_equal(other_image, image)


def test_synthetic_nuclei_labels_match_the_image(default_nuclei):
    image, labels = default_nuclei
    assert image.dtype == np.uint16 and labels.dtype == np.int32
    np.testing.assert_array_equal(np.unique(labels), np.arange(41))
    # Separate nuclei: none touch, each is one connected region.
    _, n_regions = ndimage.label(labels > 0)
    assert n_regions == 40
    background = image[labels == 0].astype(float)
    nucleus_means = ndimage.mean(image.astype(float), labels, index=np.arange(1, 41))
    assert nucleus_means.min() > np.percentile(background, 99)
    assert image[labels > 0].mean() > 2 * background.mean()


def test_synthetic_nuclei_places_fewer_when_crowded():
    image, labels = synthetic_nuclei(shape=(64, 80), n_nuclei=40, seed=3)
    assert image.shape == labels.shape == (64, 80)
    assert 0 < labels.max() < 40
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_synthetic_nuclei_rejects_non_2d_shape():
    with pytest.raises(ValueError, match="rows, columns"):
        synthetic_nuclei(shape=(8, 8, 8))


def test_every_public_name_resolves():
    import napari_clipsam

    for name in napari_clipsam.__all__:
        assert getattr(napari_clipsam, name) is not None, name
    assert "load_model" in dir(napari_clipsam)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        napari_clipsam.nonexistent  # noqa: B018
