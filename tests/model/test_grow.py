"""Growing a trained model deeper (model/grow.py): the same masks at first, then every new layer trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam.model.grow import deepen_encoder
from napari_clipsam.synthetic import generate_scene


def _demo(sam: str, config):
    """A demo-architecture model with random weights and ``config`` (the demo file's)."""
    torch.manual_seed(3)
    return nc.load_model(sam=sam, clip="demo", sam_checkpoint=None, clip_pretrained=None, device="cpu",
                         precision="fp32", config=config)


def _predictions(model, image, click=None):
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    predictor.set_concept("nucleus")
    if click is None:
        return predictor.predict()
    return predictor.predict(point_coords=np.array([click], dtype=float), point_labels=np.array([1]))


@pytest.fixture(scope="module")
def grown():
    source = nc.load_model(preset="demo", precision="fp32")  # trained: its adapters are not zero
    target = _demo("demo-deep", source.config)
    deepen_encoder(source, target)
    return source, target


def test_the_grown_model_gives_the_small_models_masks(grown):
    source, target = grown
    assert len(target.sam.image_encoder.blocks) == 2 * len(source.sam.image_encoder.blocks)
    assert target.concepts == source.concepts and target.description == source.description
    assert target.is_demo and source.is_demo and target.max_auto_downscale == source.max_auto_downscale == 1
    scene = generate_scene(2_000_000, kind="nuclei")
    ys, xs = np.nonzero(scene.labels["nucleus"] == 1)
    click = (float(xs[len(xs) // 2]), float(ys[len(ys) // 2]))  # a pixel of the first nucleus
    for prompt in (None, click):
        (masks, scores, logits), (grown_masks, grown_scores, grown_logits) = (
            _predictions(model, scene.image, prompt) for model in (source, target))
        assert masks.any()
        np.testing.assert_array_equal(grown_masks, masks)
        np.testing.assert_allclose(grown_logits, logits, atol=1e-4)
        np.testing.assert_allclose(grown_scores, scores, atol=1e-5)


def test_the_new_blocks_are_the_identity_and_learn(grown):
    _, target = grown
    new_block = target.sam.image_encoder.blocks[1]
    for layer in (new_block.attn.proj, new_block.mlp.lin2, new_block.clipsam.space.up, new_block.clipsam.semantic.up):
        assert not layer.weight.any() and not layer.bias.any()
    assert new_block.attn.qkv.weight.any()  # only the branch outputs are zeroed
    grown_copy = _demo("demo-deep", target.config)
    grown_copy.load_state_dict(target.state_dict())
    for parameter in grown_copy.parameters():
        parameter.requires_grad_(True)
    image = torch.rand(1, 3, 256, 256)
    grown_copy.encode_image(image, None).square().mean().backward()
    # The zeroed layers' inputs are not zero, so they get gradients at once.
    assert grown_copy.sam.image_encoder.blocks[1].attn.proj.weight.grad.abs().sum() > 0
    assert grown_copy.sam.image_encoder.blocks[1].mlp.lin2.weight.grad.abs().sum() > 0


def test_deepen_refuses_models_that_differ_in_more_than_depth():
    source = nc.load_model(preset="demo", precision="fp32")
    with pytest.raises(ValueError, match="twice the source's 4 encoder blocks; it has 4"):
        deepen_encoder(source, _demo("demo", source.config))
    other_config = nc.load_model(sam="demo-deep", clip="demo", sam_checkpoint=None, clip_pretrained=None,
                                 device="cpu", precision="fp32", config=nc.ClipSamConfig(clip_image_size=256))
    with pytest.raises(ValueError, match="same CLIP and CLIP-guided configuration"):
        deepen_encoder(source, other_config)
