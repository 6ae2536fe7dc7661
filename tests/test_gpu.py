"""CUDA checks: deselected by default (``pytest -m gpu`` on a machine with a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from tests.helpers import randomize_adapters

pytestmark = pytest.mark.gpu


@pytest.fixture
def models():
    if not torch.cuda.is_available():
        pytest.fail("pytest -m gpu was asked for, but CUDA is not available on this machine")
    built = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = nc.load_model(
            sam="tiny", clip="tiny", sam_checkpoint=None, clip_pretrained=None, device=device, precision="fp32"
        )
        randomize_adapters(model)
        built[device] = model
    return built


def test_cuda_matches_cpu_in_fp32(models, blobs_image):
    results = {}
    for device, model in models.items():
        predictor = nc.ClipSamPredictor(model)
        predictor.set_image(blobs_image)
        predictor.set_concept("nucleus")
        results[device] = (predictor.predict(), predictor.image_embedding.cpu())
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], rtol=1e-3, atol=1e-4)
    cpu_logits, gpu_logits = results["cpu"][0][2], results["cuda"][0][2]
    np.testing.assert_allclose(gpu_logits, cpu_logits, rtol=1e-3, atol=1e-3)


def test_auto_precision_on_cuda_is_bf16_and_runs(blobs_image):
    if not torch.cuda.is_available():
        pytest.fail("CUDA is not available on this machine")
    model = nc.load_model(sam="tiny", clip="tiny", sam_checkpoint=None, clip_pretrained=None, device="auto")
    assert model.device.type == "cuda"
    assert model.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    labels = nc.segment(blobs_image, "nucleus", model=model)
    assert labels.shape == blobs_image.shape
