"""Other concepts compete in the text-only mode: each region of a mask goes to the concept that claims most of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam._jobs import Progress, run
from napari_clipsam._sample_data import synthetic_nuclei
from napari_clipsam.inference.other_concepts import (
    check_other_concepts,
    image_logits,
    iter_keep_strongest,
    keep_regions_won,
    resolve_other_concepts,
)
from napari_clipsam.inference.pipeline import SegmentOptions, iter_segment
from tests.helpers import load_tiny, randomize_adapters


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = load_tiny()
    randomize_adapters(model, seed=3)
    return model


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_nuclei(shape=(160, 160), n_nuclei=14, seed=2)[0]


def text_logits(model, image, concept) -> np.ndarray:
    """A concept's text-only logits at the image's size, on a predictor of its own."""
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    predictor.set_concept(concept)
    _, _, low_res = predictor.predict()
    return image_logits(predictor, low_res[0])


def test_the_option_is_auto_none_or_a_list_of_names():
    assert check_other_concepts("auto") == "auto"
    assert check_other_concepts(None) == ()
    assert check_other_concepts([" cell   membrane ", "spot", "spot"]) == ("cell membrane", "spot")
    for bad in ("spot", ["spot", ""], [3], 3):
        with pytest.raises(ValueError, match="other_concepts"):
            check_other_concepts(bad)
    with pytest.raises(ValueError, match=r"\['spot'\]"):
        SegmentOptions(other_concepts="spot")
    assert SegmentOptions(other_concepts=["spot"]).other_concepts == ("spot",)


def test_auto_takes_the_models_concepts_and_never_the_concept_itself():
    listed = ("nucleus", "spot", "bacterium")
    assert resolve_other_concepts(listed, "nucleus", "auto") == ("spot", "bacterium")
    assert resolve_other_concepts((), "nucleus", "auto") == ()
    assert resolve_other_concepts(listed, " nucleus ", ["spot", "nucleus"]) == ("spot",)
    assert resolve_other_concepts(listed, "nucleus", None) == ()
    assert resolve_other_concepts(listed, None, "auto") == ()  # plain SAM has no text-only mode


def test_a_region_stays_whole_where_the_concept_wins_half_of_it_or_more():
    mask = np.zeros((6, 12), dtype=bool)
    mask[1:5, 1:4] = True  # 12 pixels, won on 6: kept whole
    mask[1:5, 6:11] = True  # 20 pixels, won on 9: dropped whole
    won = np.zeros_like(mask)
    won[1:3, 1:4] = True
    won[1:3, 6:10] = True
    won[4, 6] = True
    won[0, :] = True  # outside the mask: no say
    expected = np.zeros_like(mask)
    expected[1:5, 1:4] = True
    np.testing.assert_array_equal(keep_regions_won(mask, won), expected)
    np.testing.assert_array_equal(keep_regions_won(np.zeros_like(mask), won), np.zeros_like(mask))


def test_the_text_only_mask_keeps_the_regions_the_concept_wins(model, image):
    nucleus, spot = text_logits(model, image, "nucleus"), text_logits(model, image, "spot")
    alone = nc.segment(image, "nucleus", model, other_concepts=None) > 0
    competing = nc.segment(image, "nucleus", model, other_concepts=["spot"]) > 0
    np.testing.assert_array_equal(alone, nucleus > model.sam.mask_threshold)
    np.testing.assert_array_equal(competing, keep_regions_won(alone, nucleus >= spot))
    # Not a vacuous comparison: the other concept wins some regions, not all of them.
    assert 0 < competing.sum() < alone.sum()


def test_auto_competes_with_the_concepts_the_model_lists(model, image):
    explicit = nc.segment(image, "nucleus", model, other_concepts=["spot", "bacterium"])
    before = model.concepts
    try:
        model.concepts = ("nucleus", "spot", "bacterium")
        np.testing.assert_array_equal(nc.segment(image, "nucleus", model), explicit)
        model.concepts = ()
        np.testing.assert_array_equal(nc.segment(image, "nucleus", model),
                                      nc.segment(image, "nucleus", model, other_concepts=None))
    finally:
        model.concepts = before


def test_points_and_boxes_are_not_contested(model, image):
    points, labels = np.array([[80.0, 80.0], [40.0, 50.0]]), np.array([1, 0])
    box = np.array([30.0, 30.0, 120.0, 110.0])
    for prompts in (dict(points=points, point_labels=labels), dict(box=box)):
        np.testing.assert_array_equal(nc.segment(image, "nucleus", model, other_concepts=["spot"], **prompts),
                                      nc.segment(image, "nucleus", model, other_concepts=None, **prompts))


def test_objects_are_made_from_the_contested_mask_with_the_concepts_own_clicks(model, image):
    options = dict(instances=True, instance_method="components")
    competing = nc.segment(image, "nucleus", model, other_concepts=["spot"], **options)
    nucleus, spot = text_logits(model, image, "nucleus"), text_logits(model, image, "spot")
    contested = keep_regions_won(nucleus > 0, nucleus >= spot)
    np.testing.assert_array_equal(competing > 0, contested)
    # The seeds decode clicks on the concept's embedding, not the last other concept's.
    seeds = dict(instances=True, diameter=24, score_threshold=0.0)
    predictor = nc.ClipSamPredictor(model)
    labels = nc.segment(image, "nucleus", model, predictor=predictor, other_concepts=["spot"], **seeds)
    assert predictor.concept == "nucleus"
    assert labels.max() >= 1
    # The seeds share out the contested mask: no object reaches into a region the other concept won.
    assert not (labels > 0)[~contested].any()
    fresh = nc.segment(image, "nucleus", model, other_concepts=["spot"], **seeds)
    np.testing.assert_array_equal(labels, fresh)


def test_closing_the_job_while_another_concept_is_encoded_sets_the_concept_back(model, image):
    predictor = nc.ClipSamPredictor(model)
    job = iter_segment(predictor, image, "nucleus", options=SegmentOptions(other_concepts=["spot", "bacterium"]))
    for event in job:
        assert isinstance(event, Progress)
        if "other concept 'spot'" in event.stage:
            assert predictor.concept == "spot"
            break
    else:
        pytest.fail("no progress was reported for the other concept")
    job.close()
    assert predictor.concept == "nucleus"
    # The predictor goes on as if nothing had happened: the same mask as a fresh one's.
    result = run(iter_segment(predictor, image, "nucleus", options=SegmentOptions(other_concepts=["spot"])))
    np.testing.assert_array_equal(result.labels, nc.segment(image, "nucleus", model, other_concepts=["spot"]))


def test_tiles_compete_tile_by_tile(model, image):
    tiled = dict(tile_shape=(64, 64), halo=16)
    alone = nc.segment(image, "nucleus", model, other_concepts=None, **tiled) > 0
    competing = nc.segment(image, "nucleus", model, other_concepts=["spot"], **tiled) > 0
    assert competing.sum() < alone.sum() and not (competing & ~alone).any()


def test_an_empty_mask_encodes_no_other_concept(model, image):
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    predictor.set_concept("nucleus")
    _, _, low_res = predictor.predict()
    empty = np.zeros(image.shape[:2], dtype=bool)
    assert not run(iter_keep_strongest(predictor, empty, low_res[0], ["spot"])).any()
    assert "spot" not in predictor.features.embeddings and predictor.concept == "nucleus"
    some = predictor.predict()[0][0]
    assert some.any()
    run(iter_keep_strongest(predictor, some, low_res[0], ["spot"]))
    assert "spot" in predictor.features.embeddings  # the check above can fail
