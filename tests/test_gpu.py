"""CUDA checks: deselected by default (``pytest -m gpu`` on a machine with a GPU).

fp32 on CUDA means PyTorch's defaults there, which run convolutions in TF32 (cuDNN):
embeddings then differ from the CPU's by about 1e-3 (seen on an H200). The strict
comparison of the random model turns TF32 off; the demo model is compared as a user sees
it, by its masks, with the defaults left on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam.synthetic import DEMO_CONCEPTS, generate_scene
from napari_clipsam.training.metrics import semantic_iou
from tests.helpers import randomize_adapters

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.fail("pytest -m gpu was asked for, but CUDA is not available on this machine")


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def models():
    built = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = nc.load_model(
            sam="tiny", clip="tiny", sam_checkpoint=None, clip_pretrained=None, device=device, precision="fp32"
        )
        randomize_adapters(model)
        built[device] = model
    return built


def test_cuda_matches_cpu_in_fp32(models, blobs_image, no_tf32):
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
    model = nc.load_model(sam="tiny", clip="tiny", sam_checkpoint=None, clip_pretrained=None, device="auto")
    assert model.device.type == "cuda"
    assert model.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    labels = nc.segment(blobs_image, "nucleus", model=model)
    assert labels.shape == blobs_image.shape


@pytest.mark.parametrize(("precision", "least_iou"), [("fp32", 0.98), ("bf16", 0.95)])
def test_demo_model_masks_on_cuda_match_the_cpu(precision, least_iou):
    """Text-only masks of the demo model on a held-out generated scene, GPU against CPU fp32."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cpu = nc.load_model(preset="demo", device="cpu", precision="fp32")
    gpu = nc.load_model(preset="demo", device="cuda", precision=precision)
    image = generate_scene(2_000_000, size=256, kind="mixed").image
    ious = {}
    for concept in DEMO_CONCEPTS:
        expected = nc.segment(image, concept, model=cpu) > 0
        found = nc.segment(image, concept, model=gpu) > 0
        ious[concept] = semantic_iou(found, expected)
    print(f"demo model, cuda {precision} vs cpu fp32, mask IoU: {ious}")
    assert min(ious.values()) >= least_iou, ious
