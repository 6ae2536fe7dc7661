"""Quality metrics on hand-made masks whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clipsam.training.metrics import (
    click_quality,
    cross_overlap,
    match_instances,
    pair_ious,
    pooled_f1,
    rim_errors,
    semantic_iou,
)


def _box(shape, top, left, height, width, value=1, into=None):
    labels = np.zeros(shape, dtype=np.int32) if into is None else into
    labels[top : top + height, left : left + width] = value
    return labels


def test_semantic_iou():
    truth = _box((10, 10), 0, 0, 4, 5) > 0  # 20 px
    prediction = _box((10, 10), 0, 2, 4, 5) > 0  # 20 px, 12 shared
    assert semantic_iou(prediction, truth) == pytest.approx(12 / 28)
    assert semantic_iou(truth, truth) == 1.0
    empty = np.zeros((10, 10), bool)
    assert semantic_iou(empty, empty) == 1.0
    assert semantic_iou(empty, truth) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        semantic_iou(empty, np.zeros((5, 5), bool))


def test_cross_overlap_counts_only_the_other_concepts_own_pixels():
    own = _box((10, 10), 0, 0, 10, 4) > 0
    other = _box((10, 10), 0, 2, 10, 6) > 0  # columns 2..7; 2..3 also own
    prediction = _box((10, 10), 0, 0, 10, 6) > 0  # columns 0..5: covers other's 4..5
    # Other's pixels outside own: columns 4..7 (40 px); the prediction covers 20.
    assert cross_overlap(prediction, other, own) == pytest.approx(0.5)
    assert cross_overlap(prediction, np.zeros_like(other), own) == 0.0
    assert cross_overlap(prediction, own, own) == 0.0  # nothing of other left


def test_click_quality():
    object_mask = _box((10, 10), 2, 2, 4, 4) > 0  # 16 px
    mask = _box((10, 10), 2, 2, 4, 6) > 0  # 24 px: the object and 8 more
    iou, outside = click_quality(mask, object_mask)
    assert iou == pytest.approx(16 / 24) and outside == pytest.approx(8 / 24)
    assert click_quality(np.zeros_like(mask), object_mask) == (0.0, 0.0)
    assert click_quality(object_mask, object_mask) == (1.0, 0.0)


def test_match_instances_known_case():
    shape = (20, 20)
    truth = _box(shape, 0, 0, 4, 4, 1)
    _box(shape, 0, 10, 4, 4, 2, truth)
    _box(shape, 10, 0, 4, 4, 3, truth)
    _box(shape, 10, 10, 4, 4, 4, truth)
    predicted = _box(shape, 0, 0, 4, 4, 7)  # exact: IoU 1
    _box(shape, 0, 11, 4, 4, 3, predicted)  # shifted by 1: IoU 12/20 = 0.6
    _box(shape, 10, 2, 4, 4, 9, predicted)  # shifted by 2: IoU 8/24 < 0.5
    _box(shape, 16, 16, 4, 4, 5, predicted)  # nothing there
    match = match_instances(predicted, truth)
    assert (match.true_positives, match.false_positives, match.false_negatives) == (2, 2, 2)
    assert match.precision == pytest.approx(0.5) and match.recall == pytest.approx(0.5)
    assert match.f1 == pytest.approx(0.5)
    assert match.mean_matched_iou == pytest.approx((1.0 + 0.6) / 2)
    # A lower threshold takes the IoU-1/3 pair too.
    loose = match_instances(predicted, truth, iou_threshold=0.3)
    assert loose.true_positives == 3 and loose.f1 == pytest.approx(6 / 8)


def test_match_instances_is_one_to_one():
    shape = (10, 20)
    truth = _box(shape, 0, 0, 10, 10, 1)
    predicted = _box(shape, 0, 0, 10, 6, 1)  # IoU 0.6 with truth 1
    _box(shape, 0, 6, 10, 4, 2, predicted)  # IoU 0.4, same truth object
    match = match_instances(predicted, truth, iou_threshold=0.3)
    # Both over 0.3, but truth 1 can be matched once: the better pair wins.
    assert (match.true_positives, match.false_positives, match.false_negatives) == (1, 1, 0)
    assert match.mean_matched_iou == pytest.approx(0.6)


def test_match_instances_empty_cases():
    empty = np.zeros((8, 8), dtype=np.int32)
    objects = _box((8, 8), 1, 1, 3, 3)
    nothing = match_instances(empty, empty)
    assert (nothing.precision, nothing.recall, nothing.f1) == (1.0, 1.0, 1.0)
    missed = match_instances(empty, objects)
    assert (missed.false_negatives, missed.recall, missed.f1) == (1, 0.0, 0.0)
    spurious = match_instances(objects, empty)
    assert (spurious.false_positives, spurious.precision, spurious.f1) == (1, 0.0, 0.0)
    assert spurious.mean_matched_iou == 0.0
    # A bool mask is one object.
    assert match_instances(objects > 0, objects).f1 == 1.0


def test_pooled_f1_counts_every_object_once():
    empty = np.zeros((8, 8), dtype=np.int32)
    objects = _box((8, 8), 1, 1, 3, 3)
    found, missed = match_instances(objects, objects), match_instances(empty, objects)
    # One image right, one with its object missed: 2 x 1 / (2 x 1 + 0 + 1), not the mean of 1.0 and 0.0.
    assert pooled_f1([found, missed]) == {"f1": 2 / 3, "true_positives": 1, "false_positives": 0,
                                          "false_negatives": 1}
    assert pooled_f1([])["f1"] == 1.0 and pooled_f1([missed])["f1"] == 0.0


def test_pair_ious_match_a_direct_computation():
    rng = np.random.default_rng(0)
    predicted = rng.integers(0, 6, size=(30, 30)) * 10
    truth = rng.integers(0, 5, size=(30, 30))
    rows, columns, ious, n_predicted, n_true = pair_ious(predicted, truth)
    assert (n_predicted, n_true) == (5, 4)
    for row, column, iou in zip(rows, columns, ious):
        first, second = predicted == (row + 1) * 10, truth == column + 1
        assert iou == pytest.approx((first & second).sum() / (first | second).sum())
    assert len(ious) == 20  # every pair overlaps somewhere in noise


def test_label_maps_without_background():
    everywhere = np.ones((6, 6), dtype=np.int32)
    halves = np.ones((6, 6), dtype=np.int32)
    halves[:, 3:] = 2
    match = match_instances(halves, everywhere)
    # Each half has IoU 0.5 with the whole: one of them matches.
    assert (match.true_positives, match.false_positives, match.false_negatives) == (1, 1, 0)
    assert match.mean_matched_iou == pytest.approx(0.5)
    assert match_instances(everywhere, everywhere).f1 == 1.0


def test_rim_errors_tell_outlines_off_by_a_pixel_from_objects_missed_or_invented():
    truth = _box((12, 12), 3, 3, 6, 6) > 0  # 36 px
    smaller = _box((12, 12), 4, 4, 4, 4) > 0  # a pixel too small all round: every miss on the rim
    assert rim_errors(smaller, truth) == {"missed": 20, "missed_at_rim": 20, "false": 0, "false_at_rim": 0}
    larger = _box((12, 12), 2, 2, 8, 8) > 0
    larger[11, 11] = True  # and a speck 3 px away from the truth
    assert rim_errors(larger, truth) == {"missed": 0, "missed_at_rim": 0, "false": 29, "false_at_rim": 24}
    assert rim_errors(larger, truth, width=1.5)["false_at_rim"] == 28  # the ring's corners lie 1.41 px away
    # A missed object: its inner pixels are not on the rim; 2 px wide rims with width=2.
    assert rim_errors(np.zeros_like(truth), truth) == {"missed": 36, "missed_at_rim": 20, "false": 0,
                                                       "false_at_rim": 0}
    assert rim_errors(np.zeros_like(truth), truth, width=2)["missed_at_rim"] == 32
    # Nothing to find: every predicted pixel is false and none is near a truth.
    assert rim_errors(truth, np.zeros_like(truth)) == {"missed": 0, "missed_at_rim": 0, "false": 36,
                                                       "false_at_rim": 0}
    with pytest.raises(ValueError, match="one shape"):
        rim_errors(truth, truth[:5])
