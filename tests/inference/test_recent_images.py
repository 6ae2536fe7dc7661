"""Revisited images cost nothing: a predictor keeps the features of its last few images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from tests.helpers import randomize_adapters


@pytest.fixture
def planes(blobs_image):
    return [blobs_image, np.ascontiguousarray(blobs_image[::-1]), np.ascontiguousarray(blobs_image[:, ::-1])]


def _embedding(predictor, image, concept="nucleus"):
    predictor.set_image(image)
    predictor.set_concept(concept)
    pending = predictor.pending_stages()
    return pending, predictor.image_embedding.clone()


def test_a_revisited_plane_needs_no_stage_and_gives_the_same_embedding(tiny_model, planes):
    predictor = nc.ClipSamPredictor(tiny_model)
    first = [_embedding(predictor, plane) for plane in planes]
    assert all(pending for pending, _ in first)
    for (_, embedding), plane in zip(first, planes):
        pending, again = _embedding(predictor, plane)
        assert pending == []
        torch.testing.assert_close(again, embedding, rtol=0, atol=0)
    # A concept not seen on that plane needs only the concept's stages.
    pending, _ = _embedding(predictor, planes[0], "cell")
    assert predictor.STAGE_IMAGE not in pending and predictor.STAGE_CLIP not in pending
    assert predictor.STAGE_PREFIX not in pending and predictor.STAGE_CONDITIONED in pending


def test_only_the_last_images_are_kept(tiny_model, planes):
    predictor = nc.ClipSamPredictor(tiny_model, images_kept=1)
    for plane in planes:
        _embedding(predictor, plane)
    assert _embedding(predictor, planes[1])[0] == []  # the one before the current
    assert _embedding(predictor, planes[0])[0] != []  # older: computed again
    none_kept = nc.ClipSamPredictor(tiny_model, images_kept=0)
    _embedding(none_kept, planes[0]), _embedding(none_kept, planes[1])
    assert _embedding(none_kept, planes[0])[0] != []
    with pytest.raises(ValueError, match="0 or more"):
        nc.ClipSamPredictor(tiny_model, images_kept=-1)


def test_new_weights_or_another_size_make_kept_features_stale(tiny_model, planes):
    predictor = nc.ClipSamPredictor(tiny_model)
    _, before = _embedding(predictor, planes[0])
    _embedding(predictor, planes[1])
    randomize_adapters(tiny_model, seed=5)
    tiny_model.weights_version += 1  # as loading or training adapters does
    pending, after = _embedding(predictor, planes[0])
    assert predictor.STAGE_IMAGE in pending and not torch.equal(after, before)
    _embedding(predictor, planes[1])
    predictor.image_size = 128
    assert predictor.STAGE_IMAGE in _embedding(predictor, planes[0])[0]
