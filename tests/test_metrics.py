"""Metrics in liverseg.metrics against scikit-learn and MONAI, hand-computed cases and conventions.

Arrays stay tiny (at most 40 x 36 in 2D, 24 x 20 x 16 in 3D). MONAI computes surface distances in
float32, so comparisons with it use a relative tolerance of 1e-6 (plus 1e-6 absolute).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from liverseg import metrics as m

TOL = {"rel": 1e-6, "abs": 1e-6}
SEEDS = [0, 1, 2]
SHAPES = [(40, 36), (24, 20, 16)]
# Dyadic voxel sizes keep physical distances exactly representable, so a distance equal to a
# surface-Dice tolerance compares the same way in MONAI's float32 and our float64.
SPACINGS = {2: [(1.0, 1.0), (0.75, 2.5)], 3: [(1.0, 1.0, 1.0), (2.5, 0.75, 1.25)]}


def _blob(rng: np.random.Generator, shape, sigma: float = 2.0, fraction: float = 0.3) -> np.ndarray:
    """A smooth random mask (thresholded smoothed noise) covering about ``fraction`` of the array."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, 1.0 - fraction)


def _pair(seed: int, shape, speckle: bool = False):
    rng = np.random.default_rng(seed)
    ref = _blob(rng, shape)
    pred = ref ^ (_blob(rng, shape, sigma=1.5, fraction=0.15))  # add and remove some regions
    if speckle:  # isolated voxels: many small surfaces, including on the array border
        pred ^= rng.random(shape) < 0.02
    return pred, ref


def _cases():
    for seed in SEEDS:
        for shape in SHAPES:
            yield seed, shape


CASES = list(_cases())
CASE_IDS = [f"seed{s}-{len(sh)}d" for s, sh in CASES]


# ----------------------------------------------------------------------------- scikit-learn

@pytest.fixture(scope="module")
def skm():
    return pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed, shape", CASES, ids=CASE_IDS)
def test_overlap_metrics_match_sklearn(skm, seed, shape):
    pred, ref = _pair(seed, shape, speckle=True)
    y_true, y_pred = ref.ravel(), pred.ravel()
    assert m.dice(pred, ref) == pytest.approx(skm.f1_score(y_true, y_pred), abs=1e-12)
    assert m.f1(pred, ref) == pytest.approx(skm.f1_score(y_true, y_pred), abs=1e-12)
    assert m.iou(pred, ref) == pytest.approx(skm.jaccard_score(y_true, y_pred), abs=1e-12)
    assert m.precision(pred, ref) == pytest.approx(skm.precision_score(y_true, y_pred), abs=1e-12)
    assert m.recall(pred, ref) == pytest.approx(skm.recall_score(y_true, y_pred), abs=1e-12)
    assert m.sensitivity(pred, ref) == m.recall(pred, ref)
    assert m.specificity(pred, ref) == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=0), abs=1e-12)
    assert m.accuracy(pred, ref) == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
def test_confusion_matrix_matches_sklearn(skm, seed, shape):
    rng = np.random.default_rng(seed)
    n_classes = 4
    ref = rng.integers(0, n_classes - 1, size=shape)       # class 3 never in the reference
    pred = np.where(rng.random(shape) < 0.7, ref, rng.integers(0, n_classes, size=shape))
    ours = m.confusion_matrix(pred, ref, n_classes)
    theirs = skm.confusion_matrix(ref.ravel(), pred.ravel(), labels=list(range(n_classes)))
    np.testing.assert_array_equal(ours, theirs)
    assert ours.sum() == ref.size
    # Binary masks: [[tn, fp], [fn, tp]].
    p, r = pred == 1, ref == 1
    np.testing.assert_array_equal(m.confusion_matrix(p, r, 2), skm.confusion_matrix(r.ravel(), p.ravel()))


@pytest.mark.parametrize("seed, shape", CASES, ids=CASE_IDS)
def test_roc_auc_matches_sklearn(skm, seed, shape):
    rng = np.random.default_rng(seed)
    ref = _blob(rng, shape)
    prob = np.clip(0.35 * ref + rng.random(shape) * 0.8, 0, 1)
    assert m.roc_auc(prob, ref) == pytest.approx(skm.roc_auc_score(ref.ravel(), prob.ravel()), abs=1e-12)
    # Heavy ties: scores rounded to one decimal (11 distinct values).
    tied = np.round(prob, 1)
    assert m.roc_auc(tied, ref) == pytest.approx(skm.roc_auc_score(ref.ravel(), tied.ravel()), abs=1e-12)
    # Restricted to a mask (e.g. a body or liver region).
    mask = _blob(rng, shape, fraction=0.6)
    assert m.roc_auc(tied, ref, mask=mask) == pytest.approx(
        skm.roc_auc_score(ref[mask], tied[mask]), abs=1e-12)
    assert m.roc_auc(prob, ref, mask=mask) == pytest.approx(skm.roc_auc_score(ref[mask], prob[mask]), abs=1e-12)


def test_roc_auc_hand_computed():
    # sklearn documentation example, and pure ties.
    assert m.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert m.roc_auc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5
    assert m.roc_auc([0.2, 0.9], [1, 0]) == 0.0
    # The mask drops the voxel that would otherwise be misranked.
    assert m.roc_auc([0.9, 0.1, 0.8, 0.2], [0, 0, 1, 1], mask=[0, 1, 1, 1]) == 1.0


# ----------------------------------------------------------------------------- MONAI

@pytest.fixture(scope="module")
def monai_metrics():
    pytest.importorskip("torch")
    return pytest.importorskip("monai.metrics")


def _onehot(mask: np.ndarray):
    import torch
    return torch.from_numpy(mask[None, None].astype(np.float32))


def _monai(fn, pred, ref, **kwargs) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(_onehot(pred), _onehot(ref), include_background=True, **kwargs)[0, 0])


@pytest.mark.parametrize("seed, shape", CASES, ids=CASE_IDS)
def test_dice_matches_monai(monai_metrics, seed, shape):
    pred, ref = _pair(seed, shape, speckle=True)
    assert m.dice(pred, ref) == pytest.approx(_monai(monai_metrics.compute_dice, pred, ref), **TOL)
    metric = monai_metrics.DiceMetric(include_background=True, reduction="mean")
    metric(_onehot(pred), _onehot(ref))
    assert m.dice(pred, ref) == pytest.approx(float(metric.aggregate()), **TOL)
    # Both empty: MONAI's ignore_empty=False convention is ours (1.0).
    empty = np.zeros(shape, dtype=bool)
    assert m.dice(empty, empty) == _monai(monai_metrics.compute_dice, empty, empty, ignore_empty=False) == 1.0


@pytest.mark.parametrize("speckle", [False, True], ids=["blobs", "speckle"])
@pytest.mark.parametrize("seed, shape", CASES, ids=CASE_IDS)
def test_surface_metrics_match_monai(monai_metrics, seed, shape, speckle):
    pred, ref = _pair(seed, shape, speckle=speckle)
    for spacing in SPACINGS[len(shape)]:
        ours = m.hd95(pred, ref, spacing)
        theirs = _monai(monai_metrics.compute_hausdorff_distance, pred, ref, percentile=95, spacing=list(spacing))
        assert ours == pytest.approx(theirs, **TOL)
        ours = m.assd(pred, ref, spacing)
        theirs = _monai(monai_metrics.compute_average_surface_distance, pred, ref, symmetric=True,
                        spacing=list(spacing))
        assert ours == pytest.approx(theirs, **TOL)
        for tolerance in (0.0, 1.0, 1.5, 2.5, 4.0):
            ours = m.surface_dice(pred, ref, spacing, tolerance)
            theirs = _monai(monai_metrics.compute_surface_dice, pred, ref, class_thresholds=[tolerance],
                            spacing=list(spacing))
            assert ours == pytest.approx(theirs, **TOL), (spacing, tolerance)


def test_surface_metrics_match_monai_for_masks_touching_the_border(monai_metrics):
    # Masks that fill whole rows/faces of the array: border voxels are surface voxels in both.
    pred = np.zeros((12, 10, 8), dtype=bool)
    ref = np.zeros((12, 10, 8), dtype=bool)
    pred[:6, :, :] = True
    ref[:, :4, 2:] = True
    spacing = (1.25, 0.5, 2.0)
    assert m.hd95(pred, ref, spacing) == pytest.approx(
        _monai(monai_metrics.compute_hausdorff_distance, pred, ref, percentile=95, spacing=list(spacing)), **TOL)
    assert m.assd(pred, ref, spacing) == pytest.approx(
        _monai(monai_metrics.compute_average_surface_distance, pred, ref, symmetric=True,
               spacing=list(spacing)), **TOL)
    assert m.surface_dice(pred, ref, spacing, 1.0) == pytest.approx(
        _monai(monai_metrics.compute_surface_dice, pred, ref, class_thresholds=[1.0], spacing=list(spacing)), **TOL)


def test_one_empty_mask_agrees_with_monai(monai_metrics):
    ref = np.zeros((10, 10, 10), dtype=bool)
    ref[3:6, 3:6, 3:6] = True
    empty = np.zeros_like(ref)
    spacing = [1.0, 1.0, 2.0]
    for a, b in ((empty, ref), (ref, empty)):
        # MONAI's plain Hausdorff distance is inf here; with percentile=95 it returns NaN (torch.quantile
        # interpolating between infs gives inf - inf). We return inf, as for the plain maximum.
        assert m.hd95(a, b, spacing) == _monai(monai_metrics.compute_hausdorff_distance, a, b,
                                               spacing=spacing) == np.inf
        assert np.isnan(_monai(monai_metrics.compute_hausdorff_distance, a, b, percentile=95, spacing=spacing))
        assert m.assd(a, b, spacing) == _monai(monai_metrics.compute_average_surface_distance, a, b,
                                               symmetric=True, spacing=spacing) == np.inf
        assert m.surface_dice(a, b, spacing, 2.0) == _monai(monai_metrics.compute_surface_dice, a, b,
                                                            class_thresholds=[2.0], spacing=spacing) == 0.0
    # Both empty: MONAI gives NaN; we give 0.0 / 1.0 (documented convention).
    assert np.isnan(_monai(monai_metrics.compute_hausdorff_distance, empty, empty, percentile=95))
    assert m.hd95(empty, empty, spacing) == 0.0


# ----------------------------------------------------------------------------- hand-computed

def _cubes(axis: int, shift: int = 2):
    """Two 3x3x3 cubes, the second shifted by ``shift`` voxels along ``axis``."""
    a = np.zeros((12, 12, 12), dtype=bool)
    a[3:6, 3:6, 3:6] = True
    return a, np.roll(a, shift, axis=axis)


def test_cubes_offset_along_the_2mm_axis():
    # Surface of a 3x3x3 cube = all but the centre (26 voxels). Shift 2 voxels along axis 2 (2 mm):
    # per cube, 9 surface voxels on the shared face (0 mm), 8 on the middle ring (1 voxel = 2 mm)
    # and 9 on the far face (2 voxels = 4 mm).
    pred, ref = _cubes(axis=2)
    spacing = (1.0, 1.0, 2.0)
    forward, backward = m.surface_distances(pred, ref, spacing)
    expected = np.array([0.0] * 9 + [2.0] * 8 + [4.0] * 9)
    np.testing.assert_allclose(np.sort(forward), expected)
    np.testing.assert_allclose(np.sort(backward), expected)
    assert m.assd(pred, ref, spacing) == pytest.approx((8 * 2.0 + 9 * 4.0) / 26)  # = 2.0
    assert m.hd95(pred, ref, spacing) == pytest.approx(4.0)  # index 0.95 * 25 = 23.75 lies in the 4 mm block
    assert m.surface_dice(pred, ref, spacing, 1.9) == pytest.approx(18 / 52)
    assert m.surface_dice(pred, ref, spacing, 2.0) == pytest.approx(34 / 52)  # tolerance is inclusive
    assert m.surface_dice(pred, ref, spacing, 4.0) == 1.0
    assert m.dice(pred, ref) == pytest.approx(2 * 9 / 54)
    assert m.iou(pred, ref) == pytest.approx(9 / 45)
    assert m.relative_volume_error(pred, ref) == 0.0


def test_cubes_offset_along_a_1mm_axis_use_that_axis_spacing():
    pred, ref = _cubes(axis=0)
    spacing = (1.0, 1.0, 2.0)
    assert m.assd(pred, ref, spacing) == pytest.approx((8 * 1.0 + 9 * 2.0) / 26)
    assert m.hd95(pred, ref, spacing) == pytest.approx(2.0)
    assert m.surface_dice(pred, ref, spacing, 1.0) == pytest.approx(34 / 52)


def test_single_pixels_in_2d():
    pred = np.zeros((5, 9), dtype=bool)
    ref = np.zeros((5, 9), dtype=bool)
    pred[2, 3] = True
    ref[2, 7] = True
    spacing = (1.0, 0.5)
    assert m.hd95(pred, ref, spacing) == pytest.approx(2.0)
    assert m.assd(pred, ref, spacing) == pytest.approx(2.0)
    assert m.surface_dice(pred, ref, spacing, 1.99) == 0.0
    assert m.surface_dice(pred, ref, spacing, 2.0) == 1.0
    # A diagonal offset of (3, 4) voxels: sqrt((3 * 1.0)^2 + (4 * 0.5)^2) = sqrt(13).
    ref2 = np.zeros_like(ref)
    ref2[4, 7] = True
    pred2 = np.zeros_like(pred)
    pred2[1, 3] = True
    assert m.hd95(pred2, ref2, spacing) == pytest.approx(np.sqrt(13.0))


def test_identical_masks_have_zero_distance():
    mask = _blob(np.random.default_rng(5), (20, 18, 14))
    assert m.hd95(mask, mask, (1.0, 2.0, 3.0)) == 0.0
    assert m.assd(mask, mask, (1.0, 2.0, 3.0)) == 0.0
    assert m.surface_dice(mask, mask, (1.0, 2.0, 3.0), 0.0) == 1.0


def test_relative_volume_error_hand_computed():
    ref = np.zeros(50, dtype=bool)
    pred = np.zeros(50, dtype=bool)
    ref[:20] = True
    pred[10:40] = True
    assert m.relative_volume_error(pred, ref) == pytest.approx(0.5)
    assert m.relative_volume_error(ref, pred) == pytest.approx(-1 / 3)


def test_precision_recall_specificity_accuracy_hand_computed():
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    ref = np.array([1, 1, 0, 1, 0, 0, 0, 0])   # tp 2, fp 1, fn 1, tn 4
    assert m.precision(pred, ref) == pytest.approx(2 / 3)
    assert m.recall(pred, ref) == pytest.approx(2 / 3)
    assert m.specificity(pred, ref) == pytest.approx(4 / 5)
    assert m.accuracy(pred, ref) == pytest.approx(6 / 8)
    np.testing.assert_array_equal(m.confusion_matrix(pred, ref, 2), [[4, 1], [1, 2]])


# ----------------------------------------------------------------------------- conventions

@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 6)], ids=["2d", "3d"])
def test_empty_mask_conventions(shape):
    empty = np.zeros(shape, dtype=bool)
    some = np.zeros(shape, dtype=bool)
    some[1:3, 1:3] = True
    full = np.ones(shape, dtype=bool)
    spacing = [1.0] * len(shape)
    for fn in (m.dice, m.f1, m.iou):
        assert fn(empty, empty) == 1.0
        assert fn(some, empty) == 0.0
        assert fn(empty, some) == 0.0
    assert m.precision(empty, empty) == 1.0
    assert m.precision(empty, some) == 0.0
    assert m.precision(some, empty) == 0.0
    assert m.recall(empty, empty) == 1.0
    assert m.recall(some, empty) == 0.0
    assert m.recall(empty, some) == 0.0
    assert m.specificity(full, full) == 1.0
    assert m.specificity(some, full) == 0.0
    assert m.specificity(empty, empty) == 1.0
    assert m.accuracy(empty, empty) == 1.0
    for fn in (m.hd95, m.assd):
        assert fn(empty, empty, spacing) == 0.0
        assert fn(some, empty, spacing) == np.inf
        assert fn(empty, some, spacing) == np.inf
    assert m.surface_dice(empty, empty, spacing, 1.0) == 1.0
    assert m.surface_dice(some, empty, spacing, 1.0) == 0.0
    assert m.surface_dice(empty, some, spacing, 1.0) == 0.0
    assert m.relative_volume_error(empty, empty) == 0.0
    assert m.relative_volume_error(some, empty) == np.inf
    assert m.relative_volume_error(empty, some) == -1.0


def test_empty_conventions_match_sklearn_zero_division_1(skm):
    empty = np.zeros(10, dtype=bool)
    assert m.precision(empty, empty) == skm.precision_score(empty, empty, zero_division=1.0)
    assert m.recall(empty, empty) == skm.recall_score(empty, empty, zero_division=1.0)
    assert m.dice(empty, empty) == skm.f1_score(empty, empty, zero_division=1.0)
    assert m.iou(empty, empty) == skm.jaccard_score(empty, empty, zero_division=1.0)


def test_roc_auc_with_one_class_is_an_error():
    prob = np.linspace(0, 1, 8)
    with pytest.raises(ValueError, match="only negative"):
        m.roc_auc(prob, np.zeros(8))
    with pytest.raises(ValueError, match="only positive"):
        m.roc_auc(prob, np.ones(8))
    ref = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="only negative.*inside the mask"):
        m.roc_auc(prob, ref, mask=ref == 0)
    with pytest.raises(ValueError, match="no voxels inside the mask"):
        m.roc_auc(prob, ref, mask=np.zeros(8, dtype=bool))
    with pytest.raises(ValueError, match="finite"):
        m.roc_auc(np.where(ref == 1, np.nan, prob), ref)


# ----------------------------------------------------------------------------- validation

def test_shape_mismatch_names_both_shapes():
    a, b = np.zeros((3, 4)), np.zeros((4, 3))
    for call in (lambda: m.dice(a, b), lambda: m.precision(a, b), lambda: m.specificity(a, b),
                 lambda: m.accuracy(a, b), lambda: m.relative_volume_error(a, b),
                 lambda: m.hd95(a, b, (1, 1)), lambda: m.assd(a, b, (1, 1)),
                 lambda: m.surface_dice(a, b, (1, 1), 1.0), lambda: m.confusion_matrix(a, b, 2),
                 lambda: m.roc_auc(a, b), lambda: m.roc_auc(a, a, mask=b)):
        with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)|\(4, 3\).*\(3, 4\)"):
            call()


def test_spacing_must_have_one_value_per_axis():
    a = np.zeros((4, 4, 4), dtype=bool)
    a[1:3, 1:3, 1:3] = True
    for bad in ((1.0, 1.0), (1.0, 1.0, 1.0, 1.0), 1.0):
        for fn in (m.hd95, m.assd):
            with pytest.raises(ValueError, match="one voxel size per array axis"):
                fn(a, a, bad)
        with pytest.raises(ValueError, match="one voxel size per array axis"):
            m.surface_dice(a, a, bad, 1.0)
    # Checked even when the masks are empty (no distances needed).
    with pytest.raises(ValueError, match="one voxel size per array axis"):
        m.hd95(np.zeros((4, 4)), np.zeros((4, 4)), (1.0,))
    with pytest.raises(ValueError, match="positive"):
        m.assd(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        m.surface_dice(a, a, (1.0, 1.0, 1.0), -1.0)


def test_confusion_matrix_rejects_labels_outside_range():
    with pytest.raises(ValueError, match="prediction labels span"):
        m.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="reference labels span"):
        m.confusion_matrix(np.array([0, 1]), np.array([-1, 1]), 3)
    with pytest.raises(ValueError, match="integers"):
        m.confusion_matrix(np.array([0.5, 1.0]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="n_classes"):
        m.confusion_matrix(np.array([0, 1]), np.array([0, 1]), 0)


def test_surface_metrics_gives_the_three_definitions_from_one_pass(monkeypatch):
    """hd95, assd and surface Dice from the directed distances, as the module docstring defines them,
    computed here independently; and surface_metrics computes the distances once for all three."""
    rng = np.random.default_rng(11)
    spacing = (1.5, 0.7, 3.0)
    calls = []
    real = m.surface_distances
    monkeypatch.setattr(m, "surface_distances", lambda *a: calls.append(1) or real(*a))
    for _ in range(5):
        pred, ref = rng.random((14, 12, 9)) < 0.3, rng.random((14, 12, 9)) < 0.3
        calls.clear()
        both = m.surface_metrics(pred, ref, spacing, 2.0)
        assert len(calls) == 1
        to_ref, to_pred = real(pred, ref, spacing)
        expected = {"hd95": max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)),
                    "assd": float(np.concatenate([to_ref, to_pred]).mean()),
                    "surface_dice": float((np.count_nonzero(to_ref <= 2.0) + np.count_nonzero(to_pred <= 2.0))
                                          / (to_ref.size + to_pred.size))}
        assert both == pytest.approx(expected, rel=1e-12)
        assert both == {"hd95": m.hd95(pred, ref, spacing), "assd": m.assd(pred, ref, spacing),
                        "surface_dice": m.surface_dice(pred, ref, spacing, 2.0)}
    empty = np.zeros((4, 4, 4), bool)
    full = np.ones((4, 4, 4), bool)
    assert m.surface_metrics(empty, empty, spacing) == {"hd95": 0.0, "assd": 0.0, "surface_dice": 1.0}
    assert m.surface_metrics(full, empty, spacing) == {"hd95": float("inf"), "assd": float("inf"),
                                                             "surface_dice": 0.0}
    with pytest.raises(ValueError, match="tolerance_mm"):
        m.surface_metrics(full, full, spacing, -1.0)
