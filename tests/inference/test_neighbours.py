"""inference/neighbours.py: a click's mask gives back the concept's other objects it spread onto."""

import numpy as np
import pytest

import napari_clipsam as nc
from napari_clipsam._jobs import run
from napari_clipsam.inference.neighbours import iter_concept_objects, iter_prompted_object, without_neighbours
from tests.inference.test_seeds import XX, YY, disc  # discs on a 96 x 128 grid


def three_objects():
    """Objects 1 (clicked), 2 and 3 of a concept, and a click's mask over all of 1, a third of 2
    (a spread onto a touching neighbour) and most of 3 (a piece of the clicked object cut off)."""
    objects = np.zeros(YY.shape, dtype=np.int32)
    objects[disc(48, 40, 14)] = 1
    objects[disc(48, 68, 14) & (objects == 0)] = 2
    objects[disc(20, 100, 8)] = 3
    mask = (objects == 1) | ((objects == 2) & (XX < 60)) | ((objects == 3) & (XX < 106))
    return objects, mask


def test_objects_the_mask_covers_less_than_half_of_leave_it_and_the_clicked_one_stays():
    objects, mask = three_objects()
    assert 0.1 < mask[objects == 2].mean() < 0.5 and mask[objects == 3].mean() > 0.5
    kept = without_neighbours(mask, objects, [[40, 48]], [1])
    np.testing.assert_array_equal(kept, mask & (objects != 2))
    # A mask on no object (the text mode missed it) keeps its own pixels.
    outside = mask | disc(85, 10, 6)
    np.testing.assert_array_equal(without_neighbours(outside, objects, [[40, 48]], [1]), outside & (objects != 2))


def test_an_object_holding_a_positive_click_stays_however_little_the_mask_covers():
    objects, mask = three_objects()
    kept = without_neighbours(mask, objects, [[40, 48], [66, 48]], [1, 1])  # object 2 clicked too
    np.testing.assert_array_equal(kept, mask)
    # A negative click does not keep it, and a click outside the image changes nothing.
    np.testing.assert_array_equal(without_neighbours(mask, objects, [[40, 48], [66, 48], [500, 3]], [1, 0, 1]),
                                  mask & (objects != 2))


def test_objects_of_another_shape_are_refused():
    objects, mask = three_objects()
    with pytest.raises(ValueError, match="objects must have the mask's shape"):
        without_neighbours(mask, objects[:, :-1], [[40, 48]], [1])


@pytest.fixture
def prepared(tiny_model, blobs_image):
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(blobs_image)
    predictor.set_concept("nucleus")
    return predictor


def test_the_concepts_objects_are_made_once_per_image_and_concept(prepared, blobs_image, monkeypatch):
    calls = []
    predict = prepared.predict
    monkeypatch.setattr(prepared, "predict", lambda *a, **k: calls.append(k) or predict(*a, **k))
    events = []
    first = run(iter_concept_objects(prepared), events.append)
    assert first.shape == blobs_image.shape and first.dtype == np.int32
    assert events[0].stage == "finding the concept's objects" and len(calls) == 1
    np.testing.assert_array_equal(run(iter_concept_objects(prepared)), first)
    assert len(calls) == 1  # kept with the image's features
    prepared.set_concept("spot")
    run(iter_concept_objects(prepared))
    prepared.set_image(blobs_image[::-1].copy())
    prepared.set_concept("nucleus")
    run(iter_concept_objects(prepared))
    assert len(calls) == 3
    prepared.set_concept(None)
    with pytest.raises(ValueError, match="need a concept"):
        run(iter_concept_objects(prepared))


def test_a_box_or_no_concept_or_no_positive_click_never_asks_for_the_objects(prepared, monkeypatch):
    def refuse(*_):
        raise AssertionError("the concept's objects were asked for")

    monkeypatch.setattr("napari_clipsam.inference.neighbours.iter_concept_objects", refuse)
    objects, mask = three_objects()
    box = np.array([20, 30, 60, 66.0])
    boxed = run(iter_prompted_object(prepared, mask, np.array([[40, 48.0]]), np.array([1]), box))
    np.testing.assert_array_equal(boxed, mask & (XX >= 20) & (XX <= 60) & (YY >= 30) & (YY <= 66))
    only_negative = run(iter_prompted_object(prepared, mask, np.array([[90, 90.0]]), np.array([0]), None))
    np.testing.assert_array_equal(only_negative, mask)
    unseeded = run(iter_prompted_object(prepared, mask, np.array([[40, 48.0]]), np.array([1]), None,
                                        neighbours=False))
    np.testing.assert_array_equal(unseeded, mask & (objects != 3))  # object 3 lies apart from the click
    prepared.set_concept(None)
    run(iter_prompted_object(prepared, mask, np.array([[40, 48.0]]), np.array([1]), None))
