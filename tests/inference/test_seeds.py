"""Instances that keep touching objects apart: seeds, one click per seed, overlaps resolved."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from segment_anything.utils.transforms import ResizeLongestSide

import napari_clipsam as nc
from napari_clipsam._jobs import run
from napari_clipsam.inference.basins import object_length, object_width
from napari_clipsam.inference.instances import clicked_object
from napari_clipsam.inference.pipeline import SegmentOptions, iter_segment
from napari_clipsam.inference.seeds import (
    estimate_diameter,
    find_seeds,
    iter_mask_instances,
    iter_seeded_instances,
    resolve_overlaps,
)
from tests.helpers import randomize_adapters

YY, XX = np.mgrid[:96, :128]


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def touching_discs() -> np.ndarray:
    """(96, 128) int32: two overlapping discs (1, 2), a separate one (3), a small one touching a large one (4, 5)."""
    labels = np.zeros(YY.shape, dtype=np.int32)
    for value, (cy, cx, r) in enumerate(((30, 30, 14), (30, 54, 13), (75, 25, 10), (65, 90, 16), (48, 106, 9)), 1):
        labels[disc(cy, cx, r) & (labels == 0)] = value
    return labels


# ------------------------------------------------------------------ seeds
def test_two_overlapping_discs_give_one_seed_each():
    first, second = disc(40, 40, 15), disc(40, 65, 15)
    seeds = find_seeds(first | second)
    assert seeds.shape == (2, 2) and seeds.dtype == np.float64
    (x0, y0), (x1, y1) = seeds  # raster order: the left disc first
    assert first[int(y0), int(x0)] and not second[int(y0), int(x0)]
    assert second[int(y1), int(x1)] and not first[int(y1), int(x1)]
    # XY order: both seeds near row 40, one near each centre column.
    np.testing.assert_allclose(seeds, [[40, 40], [65, 40]], atol=2)


def test_every_object_of_touching_discs_gets_a_seed():
    labels = touching_discs()
    seeds = find_seeds(labels > 0)
    hit = {int(labels[int(y), int(x)]) for x, y in seeds}
    assert hit == {1, 2, 3, 4, 5}


def test_every_region_gets_a_seed_however_small_or_thin():
    mask = disc(40, 40, 15)
    mask[5:7, 80:120] = True  # a thin line
    mask[90, 5] = True  # a single pixel
    seeds = find_seeds(mask, diameter=30)
    regions, count = ndimage.label(mask)
    assert count == 3
    assert {int(regions[int(y), int(x)]) for x, y in seeds} == {1, 2, 3}


def test_a_larger_diameter_means_fewer_seeds():
    mask = disc(40, 40, 15) | disc(40, 65, 15)
    assert len(find_seeds(mask, diameter=30)) == 2
    assert len(find_seeds(mask, diameter=200)) == 1  # one object this large: one region, one seed


def test_an_empty_mask_has_no_seeds_and_no_diameter():
    empty = np.zeros((20, 30), dtype=bool)
    assert find_seeds(empty).shape == (0, 2)
    assert estimate_diameter(empty) == 0.0


@pytest.mark.parametrize("radius", [6, 10, 20])
def test_the_diameter_of_discs_is_estimated(radius):
    mask = disc(48, 30, radius) | disc(48, 90, radius)
    assert abs(estimate_diameter(mask) - 2 * radius) <= 1.5


def test_the_estimate_holds_for_touching_discs_and_ignores_specks():
    mask = disc(30, 30, 10) | disc(30, 48, 10) | disc(70, 60, 10) | disc(70, 100, 10)
    mask[5, 5] = mask[90, 120] = True  # specks of noise
    assert abs(estimate_diameter(mask) - 20) <= 2


def rod(x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """A capsule: the pixels within width / 2 of the segment from (x0, y0) to (x1, y1)."""
    direction = np.array([x1 - x0, y1 - y0], dtype=float)
    t = np.clip(((XX - x0) * direction[0] + (YY - y0) * direction[1]) / (direction @ direction), 0, 1)
    return np.hypot(XX - (x0 + t * direction[0]), YY - (y0 + t * direction[1])) <= width / 2


def three_rods(length: float = 32, width: float = 8) -> np.ndarray:
    return (rod(10, 15, 10 + length, 15, width) | rod(20, 50, 20 + length * 0.6, 50 + length * 0.8, width)
            | rod(120, 20, 120 - length * 0.8, 20 + length * 0.6, width))


@pytest.mark.parametrize("length", [24, 40])
def test_the_diameter_of_rods_is_their_length(length):
    """Separate elongated objects (bacteria): the diameter is their length, not their width, so a
    rod's seeds are not a width apart along it."""
    mask = three_rods(length)
    assert object_length(mask) == pytest.approx(length + 8, abs=2)  # the caps add the width
    assert estimate_diameter(mask) == pytest.approx(object_length(mask))
    assert object_width(mask) == pytest.approx(9, abs=1)  # the width (9 px across) is still there to ask for
    for region in range(1, 4):
        one = ndimage.label(mask)[0] == region
        assert len(find_seeds(one, estimate_diameter(mask))) <= 3
        assert len(find_seeds(one, 8)) >= 5  # a width apart: a seed every 2 to 5 px of the ridge


def test_round_or_touching_objects_keep_the_width_as_their_diameter():
    # Ellipses 1.2 times as long as wide are round enough; so are discs (the tests above).
    ellipses = np.zeros(YY.shape, dtype=bool)
    for cy, cx in ((20, 20), (20, 70), (70, 30), (70, 90)):
        ellipses |= ((XX - cx) / 12) ** 2 + ((YY - cy) / 10) ** 2 <= 1
    assert object_length(ellipses) == 0.0
    assert abs(estimate_diameter(ellipses) - 20) <= 2
    # Rods that all touch make concave regions: no single object to measure, the width stays.
    crossed = rod(10, 30, 60, 30, 8) | rod(35, 5, 35, 60, 8) | rod(70, 80, 120, 80, 8) | rod(95, 55, 95, 95, 8)
    assert object_length(crossed) == 0.0
    assert estimate_diameter(crossed) <= 12  # the width, a little more where they cross
    # Fewer than three separate objects cannot tell a length.
    assert object_length(rod(10, 15, 50, 15, 8) | rod(10, 60, 50, 60, 8)) == 0.0


def test_bad_masks_and_diameters_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        find_seeds(np.ones((2, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="positive"):
        find_seeds(disc(40, 40, 10), diameter=0)


# ------------------------------------------------------- overlap resolution
def test_the_better_mask_keeps_shared_pixels_and_repeats_are_dropped():
    a = np.zeros((10, 10), dtype=bool)
    b, c, d = a.copy(), a.copy(), a.copy()
    a[0:5, 0:5] = True  # 25 px, best
    b[0:5, 3:8] = True  # 25 px, 10 shared with a: keeps 15 (60 %)
    c[1:4, 1:5] = True  # inside a: nothing of it is left
    d[8:10, 8:10] = True  # 4 px, alone
    labels = resolve_overlaps([b, c, d, a], [0.8, 0.7, 0.6, 0.9])
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels == 1, a)  # numbered best first
    np.testing.assert_array_equal(labels == 2, b & ~a)
    np.testing.assert_array_equal(labels == 3, d)
    assert labels.max() == 3
    # Less than half left: dropped; fewer than min_area pixels: dropped, labels stay consecutive.
    b[0:5, 0:5] = True  # now 40 px, 15 of them free
    labels = resolve_overlaps([a, b, d], [0.9, 0.8, 0.6], min_area=5)
    assert set(np.unique(labels)) == {0, 1} and (labels == 1).sum() == 25


def test_ties_go_to_the_earlier_mask_and_empty_masks_are_ignored():
    a = np.zeros((6, 6), dtype=bool)
    b, empty = a.copy(), a.copy()
    a[0:4, 0:4] = True
    b[2:6, 2:6] = True  # 4 px shared: a keeps 12 of its 16
    labels = resolve_overlaps([empty, b, a], [0.9, 0.5, 0.5])
    np.testing.assert_array_equal(labels == 1, b)
    np.testing.assert_array_equal(labels == 2, a & ~b)


def test_overlaps_need_matching_masks_and_scores():
    with pytest.raises(ValueError, match="masks"):
        resolve_overlaps(np.zeros((2, 4, 4), bool), [0.5])


# ------------------------------------------- decoding, with a perfect decoder
class PerfectDecoder:
    """Stands in for SAM's decoder: each click's mask is the true object under it.

    It reads the clicks in SAM's input frame, as the real decoder does, so the frame
    conversion, batching and the prompts sent are all checked. ``scores`` gives an
    object's predicted IoU (default 0.9); logits are far from 0, so masks are stable.
    """

    def __init__(self, predictor, truth: np.ndarray, scores: dict[int, float] | None = None, spread: int = 0) -> None:
        self.predictor, self.truth, self.scores = predictor, truth, scores or {}
        self.spread = spread  # > 0: masks this many pixels too wide (a little-trained model's)
        self.point_labels: list[np.ndarray] = []
        self.mask_prompts: list = []

    def __call__(self, points, boxes, mask_prompt, multimask_output=False, refine=True):
        model = self.predictor.model
        coords, labels = points
        height, width = self.truth.shape
        new_height, new_width = ResizeLongestSide.get_preprocess_shape(height, width, model.image_size)
        xy = coords[:, 0].cpu().numpy() * [width / new_width, height / new_height]
        objects = [int(self.truth[int(round(y)), int(round(x))]) for x, y in xy]
        masks = np.stack([(self.truth == value) & (value > 0) for value in objects])[:, None]
        if self.spread:
            masks = ndimage.binary_dilation(masks, np.ones((1, 1, 3, 3), bool), iterations=self.spread)
        iou = torch.tensor([[self.scores.get(value, 0.9)] for value in objects])
        self.point_labels.append(labels.cpu().numpy())
        # (shape sent, shape of one prompt per click)
        self.mask_prompts.append((None if mask_prompt is None else tuple(mask_prompt.shape),
                                  (len(objects), 1, *model.mask_input_size)))
        low_res = torch.full((len(objects), 1, *model.mask_input_size), 10.0)
        return torch.from_numpy(masks), iou, low_res


@pytest.fixture
def perfect(tiny_model, monkeypatch):
    """A predictor on the touching discs whose semantic mask is true and whose clicks decode perfectly."""
    truth = touching_discs()
    predictor = nc.ClipSamPredictor(tiny_model)
    decoder = PerfectDecoder(predictor, truth)
    monkeypatch.setattr(predictor, "predict_torch", decoder)

    def predict(point_coords=None, point_labels=None, box=None, **_):
        return (truth > 0)[None], np.array([0.9], np.float32), np.zeros((1, 256, 256), np.float32)

    monkeypatch.setattr(predictor, "predict", predict)
    image = np.where(truth > 0, 200, 30).astype(np.uint8)
    return predictor, image, truth, decoder


def assert_same_objects(labels: np.ndarray, truth: np.ndarray) -> None:
    """The same objects, whatever their numbers."""
    pairs = np.unique(np.stack([labels.ravel(), truth.ravel()]), axis=1)
    assert len(pairs[0]) == len(np.unique(labels)) == len(np.unique(truth)), pairs
    np.testing.assert_array_equal(labels > 0, truth > 0)


def test_touching_objects_come_apart_where_components_merge_them(perfect):
    predictor, image, truth, decoder = perfect
    result = run(iter_segment(predictor, image, "nucleus", options=SegmentOptions(instances=True)))
    assert result.labels.dtype == np.int32
    assert_same_objects(result.labels, truth)
    # Each seed was one positive click; the similarity mask prompt went with every one.
    assert all((labels == 1).all() and labels.shape[1] == 1 for labels in decoder.point_labels)
    assert decoder.mask_prompts and all(sent == expected for sent, expected in decoder.mask_prompts)
    components = run(iter_segment(predictor, image, "nucleus",
                                  options=SegmentOptions(instances=True, instance_method="components")))
    assert components.labels.max() == 3  # the two touching pairs merge


def test_the_user_points_are_the_seeds_with_the_negatives_on_every_click(perfect):
    predictor, image, truth, decoder = perfect
    points = np.array([[30, 30], [54, 30], [90, 65], [5, 5]], dtype=float)  # XY
    result = run(iter_segment(predictor, image, "nucleus", points=points, point_labels=[1, 1, 1, 0],
                              options=SegmentOptions(instances=True)))
    assert_same_objects(result.labels, np.where(np.isin(truth, [1, 2, 4]), truth, 0))
    assert [labels.tolist() for labels in decoder.point_labels] == [[[1, 0]] * 3]


def test_uncertain_objects_are_dropped_unless_the_user_clicked_them(perfect):
    predictor, image, truth, decoder = perfect
    decoder.scores = {3: 0.3}
    options = SegmentOptions(instances=True, score_threshold=0.5)
    labels = run(iter_segment(predictor, image, "nucleus", options=options)).labels
    assert_same_objects(labels, np.where(truth == 3, 0, truth))
    clicked = run(iter_segment(predictor, image, "nucleus", points=[[25, 75]], options=options)).labels
    np.testing.assert_array_equal(clicked > 0, truth == 3)


def test_a_missed_small_object_is_found_by_the_second_pass(tiny_model, monkeypatch):
    truth = np.zeros(YY.shape, dtype=np.int32)
    truth[disc(48, 50, 16)] = 1
    truth[disc(48, 68, 10) & (truth == 0)] = 2  # mostly under the large one: no peak of its own
    assert len(find_seeds(truth > 0)) == 1
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(np.where(truth > 0, 200, 30).astype(np.uint8))
    predictor.set_concept("nucleus")
    decoder = PerfectDecoder(predictor, truth)
    monkeypatch.setattr(predictor, "predict_torch", decoder)
    events = []
    labels = run(iter_mask_instances(predictor, truth > 0), events.append)
    assert_same_objects(labels, truth)
    assert [len(batch) for batch in decoder.point_labels] == [1, 1]  # one click per pass
    assert [event.stage for event in events] == ["separating objects", "separating objects (second pass)"]


def test_masks_spreading_into_touching_neighbours_still_give_every_object(tiny_model, monkeypatch):
    truth = touching_discs()
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(np.where(truth > 0, 200, 30).astype(np.uint8))
    predictor.set_concept("nucleus")
    decoder = PerfectDecoder(predictor, truth, spread=6)
    monkeypatch.setattr(predictor, "predict_torch", decoder)
    labels = run(iter_mask_instances(predictor, truth > 0))
    np.testing.assert_array_equal(labels > 0, truth > 0)
    assert labels.max() == truth.max()
    for value in range(1, truth.max() + 1):
        found = np.bincount(labels[truth == value]).argmax()
        overlap = ((labels == found) & (truth == value)).sum() / ((labels == found) | (truth == value)).sum()
        assert overlap > 0.85, (value, overlap)


def test_one_click_one_object_where_the_decoder_merges_touching_objects(tiny_model, monkeypatch):
    truth = touching_discs()
    merged = np.where(truth == 2, 1, truth)  # a click on disc 1 or 2 decodes to both
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(np.where(truth > 0, 200, 30).astype(np.uint8))
    predictor.set_concept("nucleus")
    monkeypatch.setattr(predictor, "predict_torch", PerfectDecoder(predictor, merged))

    def iou(first, second):
        return (first & second).sum() / (first | second).sum()

    clicks = np.array([[30.0, 30.0], [54.0, 30.0]])  # XY: the centres of discs 1 and 2
    labels = run(iter_seeded_instances(predictor, clicks, score_threshold=0))
    np.testing.assert_array_equal(labels > 0, merged == 1)
    first, second = labels[30, 30], labels[30, 54]
    assert first and second and first != second  # each click keeps its half, parted halfway between them
    assert iou(labels == first, truth == 1) > 0.9 and iou(labels == second, truth == 2) > 0.9
    # A negative click on the neighbour parts it the same way.
    alone = run(iter_seeded_instances(predictor, clicks[:1], clicks[1:], score_threshold=0))
    np.testing.assert_array_equal(alone > 0, labels == first)


def test_objects_mostly_outside_the_mask_are_dropped_and_the_rest_clipped(perfect):
    predictor, image, truth, _ = perfect
    predictor.set_image(image)
    predictor.set_concept("nucleus")
    inside = truth > 0
    inside[:, :40] = False  # most of disc 1, and all of disc 3, are outside; a part of disc 2 too
    seeds = np.array([[30, 30], [54, 30], [25, 75]], dtype=float)
    labels = run(iter_seeded_instances(predictor, seeds, restrict_to=inside))
    assert_same_objects(labels, np.where(truth == 2, 2, 0) * inside)


# ------------------------------------------------------- the tiny real model
@pytest.fixture
def prepared(tiny_model, blobs_image):
    randomize_adapters(tiny_model, seed=3)
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(blobs_image)
    predictor.set_concept("nucleus")
    return predictor


def test_a_seed_is_decoded_as_a_users_click(prepared):
    seed, negative = np.array([[40.0, 60.0]]), np.array([[100.0, 10.0]])
    labels = run(iter_seeded_instances(prepared, seed, negative, score_threshold=0))
    masks, _, _ = prepared.predict(point_coords=np.vstack([seed, negative]), point_labels=[1, 0])
    assert masks[0].any()
    # Its object is the click's mask where it connects to the seed (the random model's mask is scattered).
    expected = clicked_object(masks[0], np.vstack([seed, negative]), np.array([1, 0]))
    assert expected.any() and expected.sum() < masks[0].sum()
    np.testing.assert_array_equal(labels > 0, expected)


def test_the_batch_size_does_not_change_the_labels(prepared, blobs_image):
    seeds = np.stack(np.meshgrid(np.arange(10, 128, 30), np.arange(10, 96, 30)), axis=-1).reshape(-1, 2).astype(float)
    events = []
    reference = run(iter_seeded_instances(prepared, seeds, score_threshold=0, batch_size=64), events.append)
    assert reference.max() >= 1 and len(events) == 1
    for batch_size in (1, 5):
        events = []
        labels = run(iter_seeded_instances(prepared, seeds, score_threshold=0, batch_size=batch_size), events.append)
        np.testing.assert_array_equal(labels, reference)
        assert [event.done for event in events] == list(range(-(-len(seeds) // batch_size)))
