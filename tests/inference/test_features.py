"""inference/features.py: what a predictor computed from one image, handed over whole."""

import numpy as np
import torch

from napari_clipsam.inference.features import EMBEDDINGS_KEPT, ImageFeatures


def test_embeddings_keep_the_most_recent_concepts():
    features = ImageFeatures(weights_version=3, image_size=256)
    for index in range(EMBEDDINGS_KEPT + 2):
        features.add_embedding(f"concept {index}", torch.full((1,), float(index)))
    features.add_embedding("concept 2", torch.zeros(1))  # again: now the newest, not the next to go
    features.add_embedding(None, torch.ones(1))
    assert len(features.embeddings) == EMBEDDINGS_KEPT
    assert list(features.embeddings)[-2:] == ["concept 2", None]
    assert "concept 0" not in features.embeddings and "concept 3" not in features.embeddings


def test_features_hold_for_their_weights_and_size_only():
    features = ImageFeatures(weights_version=3, image_size=256)
    assert features.valid_for(3, 256)
    assert not features.valid_for(4, 256) and not features.valid_for(3, 512) and not features.valid_for(3, None)


def test_a_predictor_keeps_one_features_object_per_image(tiny_model):
    from napari_clipsam import ClipSamPredictor

    predictor = ClipSamPredictor(tiny_model, images_kept=2)
    first, second = np.random.default_rng(0).integers(0, 255, (2, 48, 64), dtype="uint8")
    predictor.set_image(first)
    predictor.set_concept("nucleus")
    predictor.prepare()
    features = predictor.features
    assert features.input_size == predictor.input_size and "nucleus" in features.embeddings
    predictor.set_image(second)
    assert predictor.features is not features and predictor.features.sam_input is None
    predictor.set_image(first)  # revisited: the same object back, nothing to compute
    assert predictor.features is features and predictor.pending_stages() == []
