"""The lesion label of an evaluation, as the LiTS challenge reports tumours: which label it is, and per
case its voxel Dice and lesion-wise detection (rules in :mod:`liverseg.metrics`); pooled over cases."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import metrics
from ..errors import InputError
from ..reports.tumour_burden import LESION_WORDS

__all__ = ["LESION_WORDS", "LesionResult", "LesionSpec", "lesion_spec", "lesion_label_of", "lesion_scores",
           "pool_lesions"]


@dataclass(frozen=True)
class LesionResult:
    """The lesion label of one case: voxel Dice and lesion-wise detection (see liverseg.metrics)."""
    case: str
    label: int
    name: str
    dice: float  # voxel Dice of the whole label (no size filter), as in per_case.csv
    ref_lesions: int  # connected components at least min_volume_ml large
    pred_lesions: int
    tp: int  # reference lesions matched by a predicted component
    fp: int  # predicted components matching no reference lesion
    fn: int  # reference lesions matched by none
    precision: float  # tp / (tp + fp); NaN when 0/0
    recall: float  # tp / (tp + fn); NaN without reference lesions
    f1: float  # 2 tp / (2 tp + fp + fn); NaN without lesions on either side
    overlap_voxels: int  # |P ∩ R| of the label, for the global Dice
    pred_voxels: int
    ref_voxels: int
    pred_volume_ml: float  # whole label
    ref_volume_ml: float
    connectivity: int
    min_volume_ml: float
    min_iou: float  # 0: any shared voxel matches


@dataclass(frozen=True)
class LesionSpec:
    """How evaluate() scores the lesion label; ``out`` receives a LesionResult per volume case."""
    value: int | None  # None: no lesion label in this evaluation
    explicit: bool  # given by the caller (an error on photographs) rather than found by name
    min_volume_ml: float
    min_iou: float
    connectivity: int
    out: list


def lesion_spec(out: list, lesion_label: int | None, label_names: dict[int, str] | None, min_volume_ml: float,
                min_iou: float, connectivity: int) -> LesionSpec:
    """Checked lesion settings of evaluate(): ``lesion_label``, or else the label named like a lesion
    (``lesion_label_of``; none: ``value`` None)."""
    if lesion_label is not None and int(lesion_label) <= 0:
        raise InputError(f"lesion label {lesion_label}: expected a foreground label value (> 0)")
    if not (math.isfinite(min_volume_ml) and min_volume_ml >= 0):
        raise InputError(f"lesion minimum volume {min_volume_ml} mL: expected a number >= 0")
    if not 0.0 <= min_iou <= 1.0:
        raise InputError(f"lesion minimum IoU {min_iou}: expected a number in [0, 1]")
    if connectivity not in (6, 18, 26):
        raise InputError(f"lesion connectivity {connectivity}: expected 6, 18 or 26")
    value = int(lesion_label) if lesion_label is not None else lesion_label_of(label_names)
    return LesionSpec(value, lesion_label is not None, float(min_volume_ml), float(min_iou), int(connectivity),
                      out)


def lesion_label_of(label_names: dict[int, str] | None) -> int | None:
    """The label whose name contains a ``LESION_WORDS`` word (any case: "tumour", "Liver_Tumor", "lesions"; the
    rule of ``reports.tumour_burden``), or None unless evaluate() is told otherwise; two such labels are an error."""
    found = sorted(v for v, name in (label_names or {}).items()
                   if v != 0 and any(word in name.lower() for word in LESION_WORDS))
    if len(found) > 1:
        raise InputError(f"labels {', '.join(f'{v}={label_names[v]}' for v in found)} are all named like lesions; "
                         "pick one with --lesion-label")
    return found[0] if found else None


def lesion_scores(case: str, pred: np.ndarray, ref: np.ndarray, value: int, name: str, spacing,
                  spec: LesionSpec) -> LesionResult:
    """Voxel Dice, lesion-wise detection and volumes of label ``value`` in one case (spacing in mm)."""
    p, r = pred == value, ref == value
    found = metrics.lesion_detection(p, r, spacing, spec.min_volume_ml, spec.min_iou, spec.connectivity)
    overlap = int(np.count_nonzero(p & r))
    n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return LesionResult(case, value, name, metrics.dice(p, r), found.n_ref, found.n_pred, found.tp, found.fp,
                        found.fn, found.precision, found.recall, found.f1, overlap, n_pred, n_ref,
                        n_pred * voxel_ml, n_ref * voxel_ml, spec.connectivity, spec.min_volume_ml, spec.min_iou)


def pool_lesions(lesions: list[LesionResult]) -> dict[str, dict]:
    """Per lesion label name, over all cases: ``cases``, ``dice_global`` (2 Σ|P ∩ R| / Σ(|P| + |R|);
    1.0 when every case is empty on both sides, as the per-case Dice), the summed ``ref_lesions``,
    ``pred_lesions``, ``tp``, ``fp``, ``fn`` and ``precision``, ``recall``, ``f1`` of those sums
    (NaN when 0/0)."""
    pooled = {}
    for name in sorted({r.name for r in lesions}):
        of_label = [r for r in lesions if r.name == name]
        overlap = sum(r.overlap_voxels for r in of_label)
        total = sum(r.pred_voxels + r.ref_voxels for r in of_label)
        row = {"cases": len(of_label), "dice_global": 2.0 * overlap / total if total else 1.0}
        for key in ("ref_lesions", "pred_lesions", "tp", "fp", "fn"):
            row[key] = sum(getattr(r, key) for r in of_label)
        row.update(metrics.detection_scores(row["tp"], row["fp"], row["fn"]))
        pooled[name] = row
    return pooled
