"""Threshold-free scores of a probability map against a binary reference: ROC AUC and expected
calibration error (definitions in :mod:`liverseg.metrics`)."""
from __future__ import annotations

import numpy as np

__all__ = ["expected_calibration_error", "roc_auc"]


# ----------------------------------------------------------------------------- ROC AUC

def _scored_voxels(prob: np.ndarray, ref: np.ndarray, mask: np.ndarray | None, metric: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(float64 scores, bool reference) of the voxels in ``mask`` (all if None), flat; ValueError naming
    ``metric`` for mismatched shapes, no voxels or non-finite scores."""
    prob = np.asarray(prob, dtype=np.float64)
    ref = np.asarray(ref, dtype=bool)
    if prob.shape != ref.shape:
        raise ValueError(f"probability shape {prob.shape} differs from reference shape {ref.shape}")
    where = ""
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ref.shape:
            raise ValueError(f"mask shape {mask.shape} differs from reference shape {ref.shape}")
        prob, ref, where = prob[mask], ref[mask], " inside the mask"
    else:
        prob, ref = prob.ravel(), ref.ravel()
    if prob.size == 0:
        raise ValueError(f"{metric} is undefined: no voxels{where}")
    if not np.all(np.isfinite(prob)):
        raise ValueError(f"{metric} needs finite scores; found NaN or inf{where}")
    return prob, ref


def roc_auc(prob: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Exact ROC AUC of scores ``prob`` against the binary reference, over the voxels in ``mask`` (all if None).

    Computed from average ranks (Mann-Whitney U / (n_pos n_neg)), so tied scores count 1/2, as in
    ``sklearn.metrics.roc_auc_score``. Raises ``ValueError`` when the selection holds no voxels, only
    positive or only negative reference voxels, or non-finite scores.
    """
    from scipy.stats import rankdata  # 0.45 s to import: kept off prediction, which never scores

    prob, ref = _scored_voxels(prob, ref, mask, "ROC AUC")
    where = " inside the mask" if mask is not None else ""
    n_pos = int(np.count_nonzero(ref))
    n_neg = ref.size - n_pos
    if n_pos == 0 or n_neg == 0:
        only = "negative (background)" if n_pos == 0 else "positive (foreground)"
        raise ValueError(f"ROC AUC is undefined: only {only} reference voxels{where} ({ref.size} voxels)")
    ranks = rankdata(prob, method="average")
    u = float(ranks[ref].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def expected_calibration_error(prob: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None,
                               bins: int = 10) -> float:
    """Expected calibration error of the probabilities ``prob`` of one label against the binary reference.

    The voxels (in ``mask``, all if None) are put in ``bins`` equal-width bins of [0, 1] by their
    probability (1.0 in the last bin); ECE = sum over bins of (bin voxels / all voxels) * |fraction of
    reference-positive voxels in the bin - mean probability in the bin|. 0 is perfectly calibrated.
    Raises ``ValueError`` when the selection holds no voxels or non-finite probabilities.
    """
    prob, ref = _scored_voxels(prob, ref, mask, "ECE")
    index = np.clip((prob * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    prob_sums = np.bincount(index, weights=prob, minlength=bins)
    pos_sums = np.bincount(index, weights=ref.astype(np.float64), minlength=bins)
    return float(np.abs(pos_sums - prob_sums).sum() / prob.size)
