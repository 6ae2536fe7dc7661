"""CUDA checks: deselected by default (``pytest -m gpu`` on a machine with a GPU).

fp32 on CUDA means PyTorch's defaults there, which run convolutions in TF32 (cuDNN):
embeddings then differ from the CPU's by about 1e-3 (seen on an H200). The strict
comparisons of the random models turn TF32 off; the demo model is compared as a user sees
it, by its masks, with the defaults left on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam.model import attention
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


def _predict(model, image) -> tuple[torch.Tensor, np.ndarray]:
    """The guided image embedding (on CPU) and text-only low-resolution logits for 'nucleus'."""
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    predictor.set_concept("nucleus")
    logits = predictor.predict()[2]
    return predictor.image_embedding.cpu(), logits


def test_full_size_random_model_on_cuda_matches_cpu(blobs_image, no_tf32, monkeypatch):
    """vit_b + ViT-B-16 with random weights: CUDA (one fused attention call per global block)
    against the CPU (bands of queries), fp32, same weights."""
    torch.manual_seed(0)
    cpu = nc.load_model(sam="vit_b", clip="ViT-B-16", sam_checkpoint=None, clip_pretrained=None, device="cpu",
                        precision="fp32")
    randomize_adapters(cpu)
    gpu = nc.load_model(sam="vit_b", clip="ViT-B-16", sam_checkpoint=None, clip_pretrained=None, device="cuda",
                        precision="fp32")
    gpu.load_state_dict(cpu.state_dict())
    calls = []

    def counted(q, *args):
        calls.append((q.device.type, tuple(q.shape)))
        return fused(q, *args)

    fused = attention._sdpa_attention
    monkeypatch.setattr(attention, "_sdpa_attention", counted)
    expected_embedding, expected_logits = _predict(cpu, blobs_image)
    cpu_calls, calls[:] = list(calls), []
    embedding, logits = _predict(gpu, blobs_image)
    print(f"random vit_b + ViT-B-16, cuda vs cpu fp32: embedding max |diff| "
          f"{float((embedding - expected_embedding).abs().max()):.2e}, logits max |diff| "
          f"{float(np.abs(logits - expected_logits).max()):.2e} (of max |logit| {float(np.abs(expected_logits).max()):.2f})")
    # Every global block (4 in vit_b) once, all 64 x 64 queries in one call on CUDA; bands of
    # QUERIES_PER_BAND queries on CPU (4096 / 256 = 16 bands per block).
    global_blocks = sum(block.window_size == 0 for block in gpu.sam.image_encoder.blocks)
    band = attention.QUERIES_PER_BAND
    assert calls.count(("cuda", (1, 12, 4096, 64))) == global_blocks == 4
    assert cpu_calls.count(("cpu", (1, 12, band, 64))) == (4096 // band) * global_blocks
    torch.testing.assert_close(embedding, expected_embedding, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("grid", "windows"), [((64, 64), 1), ((14, 14), 25)], ids=["global", "windowed"])
def test_attention_runs_in_a_fused_kernel_on_cuda(grid, windows, dtype, no_tf32):
    """vit_b's attention shapes at 1024 px: the fused call gives SAM's result with the math
    fallback ruled out (a RuntimeError 'No available kernel' otherwise)."""
    from segment_anything.modeling.image_encoder import Attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    module = Attention(768, 12, qkv_bias=True, use_rel_pos=True, input_size=grid).cuda().eval()
    with torch.no_grad():
        module.rel_pos_h.normal_(std=0.2)
        module.rel_pos_w.normal_(std=0.2)
        x = torch.randn(windows, *grid, 768, device="cuda")
        expected = Attention.forward(module, x)  # fp32, SAM's explicit scores
        fused = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]
        with sdpa_kernel(fused), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            got = attention.sdpa_forward(module, x)
    assert got.dtype == dtype
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance)
