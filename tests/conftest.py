"""Shared fixtures: tiny randomly initialised models and small synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_clipsam.model.device import avoid_triton_on_cpu_only_machines

from .helpers import load_tiny

# Tests load models on the main thread after napari viewers exist; with Mesa's software
# OpenGL (Xvfb) importing triton then crashes the process (see the function).
avoid_triton_on_cpu_only_machines()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's weights cache."""
    monkeypatch.setenv("NAPARI_CLIPSAM_CACHE", str(tmp_path_factory.mktemp("cache")))
    # Widget settings do not persist in tests (a test that checks persistence sets a file).
    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", "off")


@pytest.fixture
def tiny_model():
    """A tiny CLIP-guided SAM with random weights, on CPU in fp32 (adapters zero-initialised)."""
    torch.manual_seed(0)
    return load_tiny()


@pytest.fixture
def blobs_image():
    """(96, 128) uint16 image with four bright discs on a dim, noisy background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128]
    image = rng.normal(200, 20, size=(96, 128))
    for cy, cx, r in ((25, 30, 10), (60, 40, 12), (30, 95, 9), (70, 100, 11)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] += 1500
    return np.clip(image, 0, 65535).astype(np.uint16)
