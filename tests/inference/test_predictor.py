"""Predictor behaviour: modes, caching, shapes, errors, and the one-call segment()."""

from __future__ import annotations

import numpy as np
import pytest

import napari_clipsam as nc
from tests.helpers import randomize_adapters


@pytest.fixture
def predictor(tiny_model, blobs_image):
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(blobs_image)
    return predictor


def _count_calls(monkeypatch, obj, name):
    calls = []
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def test_text_only_mode_returns_masks_at_image_size(predictor, blobs_image):
    predictor.set_concept("nucleus")
    masks, scores, logits = predictor.predict()
    assert masks.shape == (1, *blobs_image.shape) and masks.dtype == bool
    assert scores.shape == (1,) and scores.dtype == np.float32
    assert logits.shape == (1, 64, 64) and logits.dtype == np.float32  # 4x the 16x16 tiny grid
    points, labels = predictor.text_prompts()
    assert points.shape == (5, 2) and labels.tolist() == [1] * 5
    # predict() without prompts is the same as predict() with the text-only mode's points.
    explicit = predictor.predict(point_coords=points, point_labels=labels)
    for a, b in zip(explicit, (masks, scores, logits)):
        np.testing.assert_array_equal(a, b)
    similarity = predictor.similarity_map()
    assert similarity.shape == blobs_image.shape and similarity.dtype == np.float32
    assert similarity.min() >= 0 and similarity.max() <= 1
    assert np.all(similarity[points[:, 1].astype(int), points[:, 0].astype(int)] >= 0.8)


def test_text_only_mode_is_deterministic(tiny_model, blobs_image):
    randomize_adapters(tiny_model)
    results = []
    for _ in range(2):
        predictor = nc.ClipSamPredictor(tiny_model)
        predictor.set_image(blobs_image)
        predictor.set_concept("nucleus")
        results.append(predictor.predict())
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_manual_mode_points_and_box(predictor, blobs_image):
    predictor.set_concept("nucleus")
    masks, scores, logits = predictor.predict(
        point_coords=[[30, 25], [100, 70]], point_labels=[1, 0], box=[5, 5, 60, 50], multimask_output=True
    )
    assert masks.shape == (3, *blobs_image.shape) and scores.shape == (3,) and logits.shape == (3, 64, 64)
    # The low-resolution logits can be fed back as the next mask prompt.
    again, _, _ = predictor.predict(point_coords=[[30, 25]], mask_input=logits[:1])
    assert again.shape == (1, *blobs_image.shape)


def test_similarity_mask_prompt_changes_the_manual_result(tiny_model, blobs_image):
    randomize_adapters(tiny_model)
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(blobs_image)
    predictor.set_concept("nucleus")
    _, _, with_prompt = predictor.predict(point_coords=[[30, 25]])
    _, _, without = predictor.predict(point_coords=[[30, 25]], use_similarity_prompt=False)
    assert not np.allclose(with_prompt, without)


def test_same_image_and_concept_cost_nothing(predictor, blobs_image, monkeypatch, tiny_model):
    predictor.set_concept("nucleus")
    predictor.predict()
    clip_calls = _count_calls(monkeypatch, tiny_model, "clip_features")
    prefix_calls = _count_calls(monkeypatch, tiny_model, "encoder_prefix")
    suffix_calls = _count_calls(monkeypatch, tiny_model, "encoder_suffix")
    text_calls = _count_calls(monkeypatch, tiny_model.text_embedder, "_ensemble")

    predictor.set_image(blobs_image.copy())  # equal content: caches stay
    predictor.set_concept("nucleus")
    assert list(predictor.iter_prepare()) == []
    predictor.predict(point_coords=[[10, 10]])
    assert not (clip_calls or prefix_calls or suffix_calls)

    predictor.set_concept("mitochondria")  # new concept: text and the conditioned encoder only
    stages = list(predictor.iter_prepare())
    assert stages == ["text embedding", "image encoder (concept)"]
    assert not clip_calls and not prefix_calls and len(suffix_calls) == 1

    predictor.set_concept("nucleus")  # back to a cached concept
    assert list(predictor.iter_prepare()) == []

    predictor.set_image(blobs_image[::-1].copy())  # a new image recomputes
    assert list(predictor.iter_prepare()) == [
        "preparing image", "CLIP image features", "text embedding", "image encoder", "image encoder (concept)",
    ]
    # The text tower ran once, for "mitochondria" (the empty concept was cached before);
    # "nucleus" came from the model's cache twice.
    assert len(text_calls) == 1


def test_no_concept_is_plain_sam(predictor):
    stages = list(predictor.iter_prepare())
    assert stages == ["preparing image", "image encoder", "image encoder (no concept)"]
    with pytest.raises(RuntimeError, match="concept"):
        predictor.similarity_map()
    masks, _, _ = predictor.predict(point_coords=[[30, 25]])
    assert masks.shape[0] == 1


def test_empty_concept_means_none(predictor):
    predictor.set_concept("   ")
    assert predictor.concept is None
    predictor.set_concept("  cell   nucleus ")
    assert predictor.concept == "cell nucleus"
    with pytest.raises(TypeError):
        predictor.set_concept(3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "Nothing to segment"),
        ({"point_coords": [1, 2, 3]}, r"shape \(N, 2\)"),
        ({"point_coords": [[1, 2]], "point_labels": [1, 0]}, "one label per point"),
        ({"point_coords": [[1, 2]], "point_labels": [2]}, "1 \\(foreground\\) or 0"),
        ({"point_labels": [1]}, "without point_coords"),
        ({"box": [1, 2, 3]}, "4 numbers"),
        ({"box": [10, 10, 5, 20]}, "X1 > X0"),
        ({"point_coords": [[np.nan, 2]]}, "NaN"),
        ({"point_coords": [[1, 2]], "mask_input": np.zeros((1, 8, 8))}, "mask_input must have shape"),
    ],
)
def test_bad_prompts_get_clear_errors(predictor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


def test_predict_needs_an_image(tiny_model):
    with pytest.raises(RuntimeError, match="set_image"):
        nc.ClipSamPredictor(tiny_model).predict(point_coords=[[1, 1]])


def test_segment_semantic_and_instances(tiny_model, blobs_image):
    semantic = nc.segment(blobs_image, "nucleus", model=tiny_model)
    assert semantic.shape == blobs_image.shape and semantic.dtype == np.int32
    assert set(np.unique(semantic)) <= {0, 1}
    instances = nc.segment(blobs_image, "nucleus", model=tiny_model, instances=True, instance_method="components")
    assert instances.dtype == np.int32
    np.testing.assert_array_equal(instances > 0, semantic > 0)
    refined = nc.segment(blobs_image, "nucleus", model=tiny_model, instances=True, refine=True,
                         instance_method="components")
    assert refined.shape == blobs_image.shape and refined.max() <= instances.max()
    with pytest.raises(ValueError, match="type a concept"):
        nc.segment(blobs_image, " ", model=tiny_model)


def test_masks_to_instances():
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[5:9, 5:10] = True  # 20 px
    mask[0, 11] = True  # 1 px
    labels = nc.masks_to_instances(mask)
    assert labels.max() == 3 and len(np.unique(labels)) == 4
    filtered = nc.masks_to_instances(mask, min_area=4)
    assert sorted(np.unique(filtered).tolist()) == [0, 1, 2]
    assert filtered[0, 11] == 0 and filtered[6, 6] > 0
    assert nc.masks_to_instances(np.zeros((4, 4), bool)).max() == 0


def test_refinement_prompts_each_instance(tiny_model, blobs_image, monkeypatch):
    from napari_clipsam.inference.instances import refine_instances

    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(blobs_image)
    predictor.set_concept("nucleus")
    instances = np.zeros(blobs_image.shape, dtype=np.int32)
    instances[15:35, 20:40] = 1
    instances[50:70, 90:110] = 2
    calls = []
    original = predictor.predict

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(predictor, "predict", spy)
    refined = refine_instances(predictor, instances)
    assert len(calls) == 2
    assert calls[0]["box"].tolist() == [20, 15, 39, 34]
    assert calls[0]["use_similarity_prompt"] is False
    x, y = calls[0]["point_coords"][0]
    assert instances[int(y), int(x)] == 1
    assert set(np.unique(refined)) <= {0, 1, 2}


def test_a_smaller_sam_input_size_runs_and_is_cached_separately(tiny_model, blobs_image):
    randomize_adapters(tiny_model)
    native = nc.ClipSamPredictor(tiny_model)
    small = nc.ClipSamPredictor(tiny_model, image_size=128)
    same = nc.ClipSamPredictor(tiny_model, image_size=256)  # the tiny model's own size
    results = {}
    for name, predictor in (("native", native), ("small", small), ("same", same)):
        predictor.set_image(blobs_image)
        predictor.set_concept("nucleus")
        results[name] = predictor.predict(point_coords=[[30, 25]])
        assert results[name][0].shape == (1, *blobs_image.shape)
    assert small.image_embedding.shape[-2:] == (8, 8) and native.image_embedding.shape[-2:] == (16, 16)
    assert results["small"][2].shape == (1, 32, 32)
    for a, b in zip(results["native"], results["same"]):
        np.testing.assert_array_equal(a, b)
    # The model is back at its own size afterwards.
    assert tiny_model.image_size == 256 and tiny_model.mask_input_size == (64, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        with tiny_model.at_resolution(100):
            pass
