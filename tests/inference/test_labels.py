"""Planning label writes: nothing existing is overwritten, new objects get new values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clipsam.inference.labels import check_label_dtype, next_free_label, plan_label_write


def _apply(labels, write):
    out = labels.copy()
    out[write.indices] = write.values
    return out


def test_semantic_write_keeps_existing_labels():
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[0:2, 0:2] = 3
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:4, 1:4] = True
    write = plan_label_write(labels, mask)
    out = _apply(labels, write)
    assert write.new_labels == [4]
    assert out[1, 1] == 3  # kept
    assert out[2, 2] == 4 and out[3, 3] == 4
    assert (out == 4).sum() == 9 - 1


def test_replace_overwrites_and_semantic_value_is_reused():
    labels = np.zeros((5, 5), dtype=np.int32)
    labels[0:2, 0:2] = 7
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:3, 1:3] = True
    out = _apply(labels, plan_label_write(labels, mask, replace=True, semantic_value=2))
    assert out[1, 1] == 2 and out[0, 0] == 7 and (out == 2).sum() == 4


def test_instances_take_the_next_free_values_across_all_planes():
    labels = np.zeros((3, 8, 8), dtype=np.uint16)
    labels[0, 0, 0] = 9  # another plane
    result = np.zeros((8, 8), dtype=np.int32)
    result[1:3, 1:3] = 1
    result[5:7, 5:7] = 4
    write = plan_label_write(labels, result, plane=(2,), instances=True)
    out = _apply(labels, write)
    assert write.new_labels == [10, 11]
    assert set(np.unique(out[2])) == {0, 10, 11}
    assert out[2, 1, 1] == 10 and out[2, 5, 5] == 11
    np.testing.assert_array_equal(out[:2], labels[:2])


def test_empty_result_plans_nothing():
    labels = np.ones((4, 4), dtype=np.uint8)
    write = plan_label_write(labels, np.ones((4, 4), bool))
    assert write.empty and write.new_labels == []
    assert next_free_label(np.zeros((2, 2), np.uint8)) == 1


def test_shape_mismatch_and_dtype_overflow_are_errors():
    with pytest.raises(ValueError, match="does not fit"):
        plan_label_write(np.zeros((4, 4)), np.zeros((4, 4), bool), plane=(0,))
    with pytest.raises(ValueError, match="differs"):
        plan_label_write(np.zeros((4, 4)), np.zeros((3, 4), bool))
    labels = np.full((2, 2), 255, dtype=np.uint8)
    labels[0, 0] = 0
    write = plan_label_write(labels, np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="larger integer type"):
        check_label_dtype(labels, write)
