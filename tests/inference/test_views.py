"""inference/views.py: the text-only logits averaged over the image's eight flips and quarter turns."""

from __future__ import annotations

import numpy as np
import pytest

import napari_clipsam as nc
from napari_clipsam._jobs import Progress, run
from napari_clipsam._sample_data import synthetic_nuclei
from napari_clipsam.inference.pipeline import SegmentOptions, iter_segment
from napari_clipsam.inference.views import VIEWS, check_augment, from_view, iter_view_logits, resolve_augment, to_view
from tests.inference import test_other_concepts as shared
from tests.inference.test_other_concepts import text_logits

model = shared.model  # the fixture: the tiny model with random adapters, one per module


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_nuclei(shape=(120, 160), n_nuclei=10, seed=4)[0]


def test_the_eight_views_are_distinct_and_each_is_undone():
    array = np.arange(5 * 7 * 3).reshape(5, 7, 3)
    seen = set()
    for view in VIEWS:
        viewed = to_view(array, view)
        assert viewed.shape in ((5, 7, 3), (7, 5, 3))
        np.testing.assert_array_equal(from_view(viewed, view), array)
        seen.add(viewed.tobytes() + bytes(viewed.shape))
    assert len(VIEWS) == 8 and len(seen) == 8


def test_the_views_are_the_flips_and_quarter_turns(model, image):
    """Averaged by hand with numpy's own rotations, each view on a predictor of its own."""
    hand = []
    for turns in range(4):
        for mirrored in (False, True):
            seen = np.rot90(image, turns)
            seen = seen[:, ::-1] if mirrored else seen
            logits = text_logits(model, np.ascontiguousarray(seen), "nucleus")
            logits = logits[:, ::-1] if mirrored else logits
            hand.append(np.rot90(logits, -turns))
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    predictor.set_concept("nucleus")
    averaged = run(iter_view_logits(predictor, ["nucleus"]))["nucleus"]
    assert averaged.shape == image.shape and averaged.dtype == np.float32
    np.testing.assert_allclose(averaged, np.mean(hand, axis=0), atol=1e-4)
    # Not the plain view's logits: the average changes them.
    assert np.abs(averaged - hand[0]).max() > 1e-2


def test_the_average_turns_with_the_image(model, image):
    """Averaging over a group of views: the average of a turned image is the average turned."""
    averages = []
    for view in (VIEWS[0], VIEWS[5]):
        predictor = nc.ClipSamPredictor(model)
        predictor.set_image(to_view(image, view))
        predictor.set_concept("nucleus")
        averages.append(from_view(run(iter_view_logits(predictor, ["nucleus"]))["nucleus"], view))
    np.testing.assert_allclose(averages[1], averages[0], atol=1e-4)


def test_the_users_predictor_keeps_its_image_concept_and_caches(model, image):
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    predictor.set_concept("spot")
    predictor.predict()
    digest, embeddings = predictor.image_digest, dict(predictor.features.embeddings)
    events = []
    job = iter_view_logits(predictor, ["nucleus", "spot"])
    try:
        while True:
            events.append(next(job))
    except StopIteration as stop:
        logits = stop.value
    assert [event.stage for event in events] == [f"view {n} of 8" for n in range(1, 9)]
    assert set(logits) == {"nucleus", "spot"}
    assert predictor.image_digest == digest and predictor.concept == "spot"
    # The image itself was decoded on it: its embeddings are kept, the new concept's added.
    assert set(predictor.features.embeddings) == {"spot", "nucleus"}
    assert all(predictor.features.embeddings[key] is value for key, value in embeddings.items())
    # Kept with the image: asked again, nothing is encoded.
    again = list(iter_view_logits(predictor, ["spot", "nucleus"]))
    assert again == []
    assert predictor.features.view_logits["spot"] is logits["spot"]


def test_closing_the_job_between_views_sets_the_concept_back(model, image):
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    predictor.set_concept("spot")
    job = iter_view_logits(predictor, ["nucleus", "cell"])
    next(job)
    next(job)  # the image itself decoded, set to "cell" last
    job.close()
    assert predictor.concept == "spot" and predictor.features.view_logits == {}
    predictor.predict()  # still usable by this thread: nothing changed under it


def plain_and_augmented(model, image, **options):
    results = []
    for augment in (False, True):
        predictor = nc.ClipSamPredictor(model)
        events = []
        job = iter_segment(predictor, image, "nucleus", options=SegmentOptions(augment=augment, **options))
        try:
            while True:
                events.append(next(job))
        except StopIteration as stop:
            results.append((stop.value, predictor, events))
    return results


def test_the_text_only_mask_is_where_the_averaged_logits_are_positive(model, image):
    (plain, predictor, events), (augmented, augmented_predictor, augmented_events) = plain_and_augmented(
        model, image, other_concepts=None)
    _, _, low_res = predictor.predict()
    masks = predictor.predict()[0]
    np.testing.assert_array_equal(plain.mask, masks[0])  # off: the decoder's own mask, as before
    assert not any("view" in event.stage for event in events)
    averaged = augmented_predictor.features.view_logits["nucleus"]
    np.testing.assert_array_equal(augmented.mask, averaged > 0)
    assert 0 < augmented.mask.sum() and not np.array_equal(augmented.mask, plain.mask)
    assert sum("view" in event.stage for event in augmented_events) == 8
    assert all(isinstance(event, Progress) for event in augmented_events)
    # The low-resolution logits a follow-up prompt takes stay the plain view's.
    np.testing.assert_array_equal(augmented.logits, low_res[0])


def test_objects_are_made_from_the_averaged_mask(model, image):
    (_, _, _), (augmented, predictor, _) = plain_and_augmented(model, image, other_concepts=None, instances=True,
                                                               instance_method="components", min_area=4)
    assert augmented.labels.max() > 0
    np.testing.assert_array_equal(augmented.labels > 0, augmented.mask & (augmented.labels > 0))
    assert (augmented.labels > 0).sum() <= augmented.mask.sum()


def test_other_concepts_compete_with_averaged_logits_too(model, image):
    (_, _, _), (alone, _, _) = plain_and_augmented(model, image, other_concepts=None)
    (_, _, _), (competing, predictor, _) = plain_and_augmented(model, image, other_concepts=["spot"])
    assert set(predictor.features.view_logits) == {"nucleus", "spot"}
    assert not (competing.mask & ~alone.mask).any()  # regions only leave


def test_points_and_boxes_are_never_averaged(model, image):
    predictor = nc.ClipSamPredictor(model)
    labels = nc.segment(image, "nucleus", predictor=predictor, points=np.array([[50, 40]]), augment=True)
    assert predictor.features.view_logits == {}
    np.testing.assert_array_equal(labels, nc.segment(image, "nucleus", model, points=np.array([[50, 40]]),
                                                     augment=False))


def test_auto_is_on_for_the_demo_model_only(model):
    assert not model.auto_augment and not resolve_augment(model, "auto")
    assert resolve_augment(model, True) and not resolve_augment(model, False)
    model.auto_augment = True
    try:
        assert resolve_augment(model, "auto")
    finally:
        model.auto_augment = False


def view_events(model, image, augment, **options) -> int:
    from napari_clipsam.inference.pipeline import iter_segment_stack

    predictor, events = nc.ClipSamPredictor(model), []
    job = iter_segment_stack(predictor, image, "nucleus", options=SegmentOptions(augment=augment, other_concepts=None,
                                                                                 **options))
    try:
        while True:
            events.append(next(job))
    except StopIteration as stop:
        assert stop.value.shape == image.shape
    return sum("view " in event.stage for event in events)


def test_auto_averages_one_image_read_in_one_pass_and_neither_tiles_nor_stacks(model, image, monkeypatch):
    monkeypatch.setattr(model, "auto_augment", True)  # as the demo model says
    assert view_events(model, image, "auto", tile_shape=None) == 8
    assert view_events(model, image, "auto", tile_shape=(64, 64)) == 0
    assert view_events(model, np.stack([image, image[::-1]]), "auto", tile_shape=None) == 0
    assert view_events(model, image[None], "auto", tile_shape=None) == 8  # a stack of one plane is one image
    # Asked for, tiles and planes are averaged too: 8 views each.
    assert view_events(model, image, True, tile_shape=(64, 64), halo=16) == 8 * 6
    assert view_events(model, np.stack([image, image[::-1]]), True, tile_shape=None) == 16


def test_the_option_is_auto_true_or_false():
    assert check_augment("auto") == "auto" and check_augment(np.bool_(True)) is True
    for bad in ("on", 1, None, 8):
        with pytest.raises(ValueError, match="augment must be 'auto', True or False"):
            SegmentOptions(augment=bad)
