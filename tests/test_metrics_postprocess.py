"""Overlap metrics on hand-computed arrays, and label-map clean-up."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.metrics import dice, iou, overlap_scores
from liverseg.engine.postprocess import (fill_holes, keep_largest_component_inplace, largest_component,
                                         remove_small_objects)


def keep_largest_component(labels: np.ndarray, values: list[int]) -> np.ndarray:
    out = labels.copy()
    for value in values:
        keep_largest_component_inplace(out, value)
    return out


# ----------------------------------------------------------------------------- metrics

@pytest.mark.parametrize("pred, ref, expected_dice, expected_iou", [
    ([1, 1, 0, 0], [1, 0, 1, 0], 2 * 1 / (2 + 2), 1 / 3),        # tp 1, fp 1, fn 1
    ([1, 1, 1, 0], [1, 1, 0, 0], 2 * 2 / (3 + 2), 2 / 3),        # tp 2, fp 1, fn 0
    ([1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], 2 / 5, 1 / 4),      # tp 1, fn 3
    ([1, 1, 0, 0], [1, 1, 0, 0], 1.0, 1.0),
    ([1, 1, 0, 0], [0, 0, 1, 1], 0.0, 0.0),
])
def test_dice_and_iou_on_hand_computed_arrays(pred, ref, expected_dice, expected_iou):
    pred, ref = np.array(pred), np.array(ref)
    assert dice(pred, ref) == pytest.approx(expected_dice, abs=1e-12)
    assert iou(pred, ref) == pytest.approx(expected_iou, abs=1e-12)
    # Symmetric in its arguments, and Dice = 2 IoU / (1 + IoU).
    assert dice(ref, pred) == pytest.approx(expected_dice, abs=1e-12)
    assert dice(pred, ref) == pytest.approx(2 * expected_iou / (1 + expected_iou), abs=1e-12)


def test_dice_on_a_3d_array():
    pred = np.zeros((4, 4, 4), dtype=bool)
    ref = np.zeros((4, 4, 4), dtype=bool)
    pred[:2] = True   # 32 voxels
    ref[1:3] = True   # 32 voxels, 16 shared
    assert dice(pred, ref) == pytest.approx(0.5)
    assert iou(pred, ref) == pytest.approx(16 / 48)


def test_empty_mask_conventions():
    empty = np.zeros((3, 3, 3), dtype=bool)
    full = np.zeros((3, 3, 3), dtype=bool)
    full[1, 1, 1] = True
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0
    assert dice(full, empty) == 0.0
    assert dice(empty, full) == 0.0
    assert iou(full, empty) == 0.0
    assert iou(empty, full) == 0.0


def test_metrics_treat_any_nonzero_as_foreground():
    assert dice(np.array([2, 0, 7]), np.array([1, 0, 1])) == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_overlap_scores_per_label_are_one_vs_rest():
    pred = np.array([0, 1, 1, 2, 2, 2])
    ref = np.array([0, 1, 2, 2, 2, 0])
    scores = {v: overlap_scores(pred == v, ref == v) for v in (1, 2, 3)}
    assert scores[1]["dice"] == pytest.approx(2 * 1 / (2 + 1))
    assert scores[1]["iou"] == pytest.approx(1 / 2)
    assert scores[2]["dice"] == pytest.approx(2 * 2 / (3 + 3))
    assert scores[2]["iou"] == pytest.approx(2 / 4)
    assert (scores[3]["dice"], scores[3]["iou"]) == (1.0, 1.0)  # absent from both


# ----------------------------------------------------------------------------- post-processing

def _labels_with_two_liver_blobs() -> np.ndarray:
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[1:5, 1:5, 1:5] = 1       # 64 voxels: the liver
    labels[8:10, 8:10, 8:10] = 1    # 8 voxels: a stray blob
    labels[8:11, 1:3, 1:3] = 2      # another label, small and separate
    labels[1:5, 7:8, 1:2] = 2       # a second, smaller blob of that other label
    return labels


def test_keep_largest_component_keeps_the_biggest_blob_and_leaves_other_labels():
    labels = _labels_with_two_liver_blobs()
    original = labels.copy()
    out = keep_largest_component(labels, [1])
    np.testing.assert_array_equal(labels, original)  # input untouched
    assert out.dtype == labels.dtype
    assert out.shape == labels.shape
    assert np.count_nonzero(out == 1) == 64
    assert np.all(out[1:5, 1:5, 1:5] == 1)
    assert np.all(out[8:10, 8:10, 8:10] == 0)  # the stray blob became background
    np.testing.assert_array_equal(out == 2, original == 2)  # both label-2 blobs untouched


def test_keep_largest_component_per_label_value():
    labels = _labels_with_two_liver_blobs()
    out = keep_largest_component(labels, [1, 2])
    assert np.count_nonzero(out == 1) == 64
    assert np.count_nonzero(out == 2) == 12  # 3x2x2 kept, the 4-voxel one dropped
    assert np.all(out[1:5, 7:8, 1:2] == 0)


def test_keep_largest_component_ignores_absent_labels():
    labels = _labels_with_two_liver_blobs()
    np.testing.assert_array_equal(keep_largest_component(labels, [5]), labels)
    np.testing.assert_array_equal(keep_largest_component(np.zeros((4, 4, 4), np.uint8), [1]), 0)


def test_diagonal_neighbours_are_one_component():
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[0:2, 0:2, 0:2] = True  # 8 voxels
    mask[2:3, 2:3, 2:3] = True  # touches the cube at a corner only (26-connectivity)
    mask[4:6, 4:6, 5] = True    # 4 voxels, separate
    kept = largest_component(mask)
    assert np.count_nonzero(kept) == 9
    assert not kept[4:6, 4:6, 5].any()


def test_fill_holes_and_remove_small_objects():
    mask = np.zeros((7, 7, 7), dtype=bool)
    mask[1:6, 1:6, 1:6] = True
    mask[3, 3, 3] = False  # an enclosed hole
    filled = fill_holes(mask)
    assert filled[3, 3, 3]
    assert np.count_nonzero(filled) == 125

    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[0:3, 0:3, 0:3] = True  # 27
    mask[6, 6, 6] = True        # 1
    cleaned = remove_small_objects(mask, min_voxels=2)
    assert np.count_nonzero(cleaned) == 27
    assert not cleaned[6, 6, 6]
    assert not remove_small_objects(np.zeros((3, 3, 3), bool), 1).any()
