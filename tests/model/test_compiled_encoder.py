"""The image encoder under ``torch.compile``: a CLIP-guided block is one graph, and the compiled
encoder gives the eager embedding (CPU, inductor)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import napari_clipsam as nc
from napari_clipsam.model.compile import compile_image_encoder, uncompile_image_encoder
from tests.helpers import randomize_adapters


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """No compiled code or counts from another test, and none left for the next one."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


@pytest.fixture
def guided(tiny_model, blobs_image):
    """The tiny model with random adapters, its SAM input (1, 3, 256, 256) and a full conditioning."""
    randomize_adapters(tiny_model)  # zero adapters would hide a branch the compiled code dropped
    rgb = nc.to_rgb_uint8(blobs_image)
    sam_input, _ = tiny_model.sam_input(rgb)
    _, patches = tiny_model.clip_features(tiny_model.clip_input(rgb))
    text = tiny_model.text_embedding("nucleus")[None]
    conditioning = tiny_model.conditioning(text, patches, tiny_model.similarity(patches, text))
    assert all(signal is not None for signal in conditioning.signals())
    return tiny_model, sam_input, conditioning


@pytest.mark.parametrize("index", [0, 1], ids=["windowed", "global"])
def test_a_guided_block_compiles_without_graph_breaks(guided, index):
    model, sam_input, conditioning = guided
    encoder = model.sam.image_encoder
    block = encoder.blocks[index]
    assert block.clipsam.semantic is not None and block.clipsam.text_proj is not None
    assert block.clipsam.vision_proj is not None  # every branch of the adapter is in the trace
    with torch.no_grad():
        tokens = encoder.patch_embed(sam_input) + encoder.pos_embed
        explanation = torch._dynamo.explain(block)(tokens, *conditioning.signals())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_encoder_gives_the_eager_embedding(guided):
    model, sam_input, conditioning = guided
    names = list(model.state_dict())
    with torch.no_grad():
        eager = [model.encode_image(sam_input, signals) for signals in (conditioning, None)]
        compile_image_encoder(model.sam.image_encoder)
        try:
            compiled = [model.encode_image(sam_input, signals) for signals in (conditioning, None)]
        finally:
            uncompile_image_encoder(model.sam.image_encoder)
        assert torch.equal(model.encode_image(sam_input, conditioning), eager[0])  # eager again
    for got, expected in zip(compiled, eager):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(eager[0], eager[1])  # the concept reached the embedding
    # Compiled indeed (patch embedding, a windowed and a global guided block, neck), with no break.
    assert counters["stats"]["unique_graphs"] >= 4
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert list(model.state_dict()) == names
