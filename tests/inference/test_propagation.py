"""One object followed through a stack by SAM prompts from the previous plane (demo model)."""

from __future__ import annotations

import numpy as np
import pytest

import napari_clipsam as nc
from napari_clipsam._jobs import run
from napari_clipsam.inference.instances import interior_point
from napari_clipsam.inference.propagation import iter_propagate
from napari_clipsam.synthetic import generate_scene
from napari_clipsam.training.metrics import semantic_iou


@pytest.fixture(scope="module")
def predictor():
    return nc.ClipSamPredictor(nc.load_model(preset="demo", device="cpu", precision="fp32"))


@pytest.fixture(scope="module")
def drifting():
    """Five planes of one nuclei scene drifting 2 px per plane, and the true labels of each plane."""
    scene = generate_scene(2_000_700, size=256, kind="nuclei")
    shifts = [0, 2, 4, 6, 8]
    image = np.stack([np.roll(scene.image, s, axis=1) for s in shifts])
    truth = np.stack([np.roll(scene.labels["nucleus"], s, axis=1) for s in shifts])
    return image, truth


def _largest_object(labels):
    values, areas = np.unique(labels[labels > 0], return_counts=True)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return max((a, v) for v, a in zip(values, areas) if v not in edge)[1]


def _click(predictor, image, labels, value):
    """The mask a user gets by clicking the object's deepest point."""
    predictor.set_image(image)
    predictor.set_concept("nucleus")
    return predictor.predict(point_coords=interior_point(labels == value)[None], point_labels=[1])[0][0]


def test_an_object_is_followed_through_the_planes(predictor, drifting):
    """From the mask of a click in the middle plane, each other plane gets about the mask a click
    there would give (the demo model's own click masks: this checks the following, not the model)."""
    image, truth = drifting
    value = _largest_object(truth[2])
    start = _click(predictor, image[2], truth[2], value)
    events = []
    masks = run(iter_propagate(predictor, image, 2, start, "nucleus"), events.append)
    assert masks.shape == truth.shape and (masks[2] == start).all()
    ious = [semantic_iou(masks[z], _click(predictor, image[z], truth[z], value)) for z in range(5)]
    # Measured: 0.62-1.0, mean 0.76 with the demo file of stage 10 (stage 9: 0.36-1.0, mean 0.69; stage 7:
    # 0.43-1.0, 0.76): on this large nucleus the click masks themselves match it with IoU 0.5-0.66, and the
    # following drifts most where it starts from the poorest of them. A broken following (another object,
    # nothing) scores near 0.
    assert min(ious) >= 0.3 and np.mean(ious) >= 0.65, ious
    assert [event.stage for event in events] == ["plane 2/5", "plane 1/5", "plane 4/5", "plane 5/5"]


def test_the_object_ends_where_the_planes_no_longer_hold_it(predictor, drifting):
    image, truth = drifting
    value = _largest_object(truth[0])
    blank = np.concatenate([image[:2], np.full_like(image[:3], int(np.median(image)))])
    masks = run(iter_propagate(predictor, blank, 0, _click(predictor, image[0], truth[0], value), "nucleus"))
    assert masks[1].any() and not masks[2:].any()


@pytest.mark.parametrize(("plane", "mask", "words"), [(5, np.ones((256, 256), bool), "outside"),
                                                      (0, np.zeros((256, 256), bool), "empty"),
                                                      (0, np.ones((10, 10), bool), "shape")])
def test_bad_requests_are_refused(predictor, drifting, plane, mask, words):
    with pytest.raises(ValueError, match=words):
        run(iter_propagate(predictor, drifting[0], plane, mask, "nucleus"))
