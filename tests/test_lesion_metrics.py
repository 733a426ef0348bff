"""liverseg.metrics lesion detection: connected components, matching, TP/FP/FN, NaN conventions, size filter."""
from __future__ import annotations

import math

import numpy as np
import pytest

from liverseg import metrics


def _boxes(shape, *boxes) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for lo, hi in boxes:
        mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


SHAPE = (20, 20, 20)
# Reference: A (64 voxels), C (27 voxels, missed), B (128 voxels, split in two by the prediction).
A, C, B = ((2, 2, 2), (6, 6, 6)), ((2, 12, 12), (5, 15, 15)), ((10, 2, 2), (14, 10, 6))
# Prediction: A' inside A (48), B's two halves with a 2-voxel gap (48 + 48), two false positives (8, 12).
A_HIT, B_LOW, B_HIGH = ((3, 2, 2), (6, 6, 6)), ((10, 2, 2), (14, 5, 6)), ((10, 7, 2), (14, 10, 6))
FP1, FP2 = ((16, 16, 16), (18, 18, 18)), ((16, 2, 16), (19, 4, 18))


def _hand_case():
    return _boxes(SHAPE, A_HIT, B_LOW, B_HIGH, FP1, FP2), _boxes(SHAPE, A, C, B)


def test_three_lesions_two_found_one_split_and_two_false_positives():
    pred, ref = _hand_case()
    found = metrics.lesion_detection(pred, ref, (1.0, 1.0, 1.0))
    assert (found.n_ref, found.n_pred) == (3, 5)
    # A and B detected (B once, although two components hit it), C missed, FP1 and FP2 unmatched.
    assert (found.tp, found.fp, found.fn) == (2, 2, 1)
    assert found.precision == pytest.approx(2 / 4)  # TP / (TP + FP)
    assert found.recall == pytest.approx(2 / 3)  # TP / reference lesions
    assert found.f1 == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))  # 4/7
    # Components are numbered in raster order: ref A=1, C=2, B=3; the missed one is C (27 voxels).
    assert found.missed == (2,) and found.ref_volumes_ml[1] == pytest.approx(27 / 1000)
    assert sorted(found.ref_volumes_ml) == pytest.approx([0.027, 0.064, 0.128])
    assert len([m for m in found.matches if m[0] == 3]) == 2  # B: matched by both halves
    assert len(found.false_positives) == 2
    overlaps = sorted(shared for _, _, shared, _ in found.matches)
    assert overlaps == [48, 48, 48]
    # voxel Dice by hand: |P ∩ R| = 48 + 96, |P| = 48 + 96 + 8 + 12, |R| = 64 + 27 + 128
    assert metrics.dice(pred, ref) == pytest.approx(2 * 144 / (164 + 219))


def test_min_iou_makes_the_split_halves_misses_and_false_positives():
    pred, ref = _hand_case()
    found = metrics.lesion_detection(pred, ref, (1.0, 1.0, 1.0), min_iou=0.5)
    # A' IoU 48/64 = 0.75 matches; each half of B has IoU 48/128 = 0.375 < 0.5.
    assert (found.tp, found.fp, found.fn) == (1, 4, 2)
    assert [round(iou, 4) for _, _, _, iou in found.matches] == [0.75]
    assert metrics.lesion_detection(pred, ref, (1, 1, 1), min_iou=0.375).tp == 2  # the threshold is inclusive
    with pytest.raises(ValueError, match="min_iou"):
        metrics.lesion_detection(pred, ref, (1, 1, 1), min_iou=1.5)


def test_one_component_merging_two_lesions_detects_both():
    ref = _boxes((12, 12, 12), ((1, 1, 1), (4, 4, 4)), ((6, 1, 1), (9, 4, 4)))
    pred = _boxes((12, 12, 12), ((2, 2, 2), (8, 3, 3)))
    found = metrics.lesion_detection(pred, ref, (1, 1, 1))
    assert (found.n_ref, found.n_pred, found.tp, found.fp, found.fn) == (2, 1, 2, 0, 0)
    assert found.f1 == 1.0


def test_empty_cases_give_zero_counts_and_nan_where_undefined():
    empty = np.zeros((6, 6, 6), dtype=bool)
    blob = _boxes((6, 6, 6), ((1, 1, 1), (3, 3, 3)))
    none = metrics.lesion_detection(empty, empty, (1, 1, 1))
    assert (none.n_ref, none.n_pred, none.tp, none.fp, none.fn, none.matches) == (0, 0, 0, 0, 0, ())
    assert math.isnan(none.precision) and math.isnan(none.recall) and math.isnan(none.f1)
    only_pred = metrics.lesion_detection(blob, empty, (1, 1, 1))  # no reference lesion: recall undefined
    assert (only_pred.tp, only_pred.fp, only_pred.fn) == (0, 1, 0)
    assert only_pred.precision == 0.0 and math.isnan(only_pred.recall) and only_pred.f1 == 0.0
    only_ref = metrics.lesion_detection(empty, blob, (1, 1, 1))  # nothing predicted: precision undefined
    assert (only_ref.tp, only_ref.fp, only_ref.fn) == (0, 0, 1)
    assert math.isnan(only_ref.precision) and only_ref.recall == 0.0 and only_ref.f1 == 0.0


def test_min_volume_filter_uses_anisotropic_spacing_on_both_sides():
    spacing = (0.5, 1.0, 2.5)  # 1.25 mm^3 per voxel
    small = ((1, 1, 1), (3, 3, 3))  # 8 voxels = 10 mm^3 = 0.01 mL
    large = ((6, 6, 6), (10, 10, 10))  # 64 voxels = 0.08 mL
    tiny_fp = ((12, 12, 12), (13, 14, 14))  # 4 voxels = 0.005 mL
    ref = _boxes((16, 16, 16), small, large)
    pred = _boxes((16, 16, 16), small, large, tiny_fp)
    labels, volumes = metrics.lesion_components(ref, spacing)
    assert labels.max() == 2 and volumes.tolist() == pytest.approx([0.01, 0.08])
    every = metrics.lesion_detection(pred, ref, spacing)
    assert (every.n_ref, every.n_pred, every.tp, every.fp, every.fn) == (2, 3, 2, 1, 0)
    at_limit = metrics.lesion_detection(pred, ref, spacing, min_volume_ml=0.01)  # 0.01 mL is kept (>=)
    assert (at_limit.n_ref, at_limit.n_pred, at_limit.tp, at_limit.fp, at_limit.fn) == (2, 2, 2, 0, 0)
    above = metrics.lesion_detection(pred, ref, spacing, min_volume_ml=0.02)
    assert (above.n_ref, above.n_pred, above.tp, above.fp, above.fn) == (1, 1, 1, 0, 0)
    assert above.ref_volumes_ml == pytest.approx((0.08,))
    # the same voxels on an isotropic 1 mm grid: 8 voxels = 0.008 mL, below 0.01 mL
    assert metrics.lesion_detection(pred, ref, (1, 1, 1), min_volume_ml=0.01).n_ref == 1
    kept, _ = metrics.lesion_components(ref, spacing, min_volume_ml=0.02)
    assert set(np.unique(kept).tolist()) == {0, 1} and int(kept.sum()) == 64  # renumbered 1..n
    with pytest.raises(ValueError, match="min_volume_ml"):
        metrics.lesion_components(ref, spacing, min_volume_ml=-1)


def test_connectivity_26_joins_corner_neighbours_18_edges_6_faces():
    corner = np.zeros((4, 4, 4), dtype=bool)
    corner[1, 1, 1] = corner[2, 2, 2] = True
    edge = np.zeros((4, 4, 4), dtype=bool)
    edge[1, 1, 1] = edge[2, 2, 1] = True
    counts = {c: (len(metrics.lesion_components(corner, (1, 1, 1), connectivity=c)[1]),
                  len(metrics.lesion_components(edge, (1, 1, 1), connectivity=c)[1])) for c in (6, 18, 26)}
    assert counts == {6: (2, 2), 18: (2, 1), 26: (1, 1)}
    assert len(metrics.lesion_components(corner, (1, 1, 1))[1]) == 1  # default 26
    with pytest.raises(ValueError, match="connectivity"):
        metrics.lesion_components(corner, (1, 1, 1), connectivity=8)


def test_detection_scores_pool_summed_counts():
    cases = [(2, 2, 1), (0, 0, 0), (3, 0, 1)]
    tp, fp, fn = (sum(c[i] for c in cases) for i in range(3))
    pooled = metrics.detection_scores(tp, fp, fn)
    assert pooled == pytest.approx({"precision": 5 / 7, "recall": 5 / 7, "f1": 10 / 14})
    assert all(math.isnan(v) for v in metrics.detection_scores(0, 0, 0).values())
