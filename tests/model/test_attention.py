"""The fused (SDPA) attention gives segment_anything's Attention results, forward and backward."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from napari_clipsam.model import attention
from napari_clipsam.model.attention import sdpa_forward, use_banded_global_attention, use_fused_windowed_attention
from napari_clipsam.model.build_sam import build_sam

WIDTH, HEADS = 32, 4


def _attention(grid: tuple[int, int], use_rel_pos: bool) -> Attention:
    """SAM's Attention for tokens on ``grid``, random weights and (non-zero) relative positions."""
    torch.manual_seed(0)
    module = Attention(WIDTH, HEADS, qkv_bias=True, use_rel_pos=use_rel_pos, input_size=grid).eval()
    if use_rel_pos:
        with torch.no_grad():
            module.rel_pos_h.normal_(std=0.5)
            module.rel_pos_w.normal_(std=0.5)
    return module


# Global shapes (a whole, non-square grid; a grid other than the one the relative positions
# were made for, as at_resolution runs it) and a windowed one (windows stacked on the batch).
SHAPES = {"global": ((12, 10), (12, 10)), "global resized": ((16, 16), (12, 12)), "windowed": ((7, 7), (7, 7))}


@pytest.mark.parametrize("use_rel_pos", [True, False], ids=["rel_pos", "no_rel_pos"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("queries_per_band", [None, 25, 50], ids=["one_call", "bands", "bands_last_shorter"])
def test_sdpa_forward_equals_sams_attention(shape, batch, use_rel_pos, queries_per_band):
    made_for, grid = SHAPES[shape]
    module = _attention(made_for, use_rel_pos)
    x = torch.randn(batch * (3 if shape == "windowed" else 1), *grid, WIDTH)
    with torch.no_grad():
        expected = Attention.forward(module, x)
        got = sdpa_forward(module, x, queries_per_band)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sdpa_forward_gradients_equal_sams():
    """Training back-propagates through the encoder's attention into the adapters before it."""
    module = _attention((8, 8), use_rel_pos=True)
    x = torch.randn(2, 8, 8, WIDTH)
    gradients = []
    for forward in (lambda t: Attention.forward(module, t), lambda t: sdpa_forward(module, t, queries_per_band=16)):
        module.zero_grad()
        leaf = x.clone().requires_grad_(True)
        (forward(leaf) ** 2).sum().backward()
        gradients.append((leaf.grad, module.rel_pos_h.grad.clone(), module.qkv.weight.grad.clone()))
    for got, expected in zip(*reversed(gradients)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_rel_pos_bias_is_sams_decomposed_term():
    """The bias added to (q * scale) @ k^T gives SAM's scores: checked on one band of rows."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    module = _attention((6, 5), use_rel_pos=True)
    q = torch.randn(2, HEADS, 30, WIDTH // HEADS)
    flat = q.reshape(2 * HEADS, 30, -1)
    zeros = torch.zeros(2 * HEADS, 30, 30)
    expected = add_decomposed_rel_pos(zeros, flat, module.rel_pos_h, module.rel_pos_w, (6, 5), (6, 5))
    band = attention.rel_pos_bias(module, q[:, :, 10:20], 6, 5, top=2)  # grid rows 2 and 3
    assert band.shape == (2, HEADS, 10, 30)
    torch.testing.assert_close(band.reshape(2 * HEADS, 10, 30), expected[:, 10:20])
    assert attention.rel_pos_bias(module, q.bfloat16(), 6, 5).dtype == torch.bfloat16


def test_encoder_with_fused_attention_equals_sams_encoder(monkeypatch):
    """A whole tiny encoder: the same embedding, and every block through the fused call."""
    torch.manual_seed(0)
    sam = build_sam("tiny")
    encoder = sam.image_encoder
    with torch.no_grad():
        for block in encoder.blocks:
            block.attn.rel_pos_h.normal_(std=0.2)
            block.attn.rel_pos_w.normal_(std=0.2)
        x = torch.randn(2, 3, 256, 256)
        expected = encoder(x)
        assert use_banded_global_attention(encoder, queries_per_band=40) == 1
        assert use_fused_windowed_attention(encoder) == 1
        calls = []
        fused = attention._sdpa_attention
        monkeypatch.setattr(attention, "_sdpa_attention", lambda *args: calls.append(args[0].shape) or fused(*args))
        got = encoder(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Windowed block: 2 images x 4 windows of 8x8 tokens in one call; global block: 16x16
    # tokens in bands of 2 rows (40 queries // 16 per row) on CPU.
    assert calls[0] == (8, 2, 64, 16)
    assert calls[1:] == [(2, 2, 32, 16)] * 8


def test_windows_go_in_groups_with_sams_results():
    """Many windows (30 of 7 x 7: 20, then 10 per call on CPU) give SAM's attention, and its gradients."""
    module = _attention((7, 7), use_rel_pos=True)
    x = torch.randn(30, 7, 7, WIDTH, requires_grad=True)
    calls = []
    original = attention._sdpa_attention
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention, "_sdpa_attention", lambda *args: calls.append(args[0].shape[0]) or original(*args))
        got = attention._windowed_forward(module, x)
    assert calls == [20, 10]
    expected = Attention.forward(module, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    (grad_got,) = torch.autograd.grad(got.square().sum(), x)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-5)
