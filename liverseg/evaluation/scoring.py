"""Compare predictions with references: per-case metrics, a summary, and QC pictures.

Cases come from two files, two folders, or a prediction folder plus a manifest split (references,
images and field-of-view masks from the manifest). Volumes (NIfTI/NRRD/MHA/DICOM label maps) must
share the reference's grid; surface distances are in mm. Photographs (PNG/JPG/TIFF/GIF masks) are
scored inside their field-of-view mask when the manifest gives one, surface distances in pixels, and
ROC AUC from the 16-bit probability map ``liverseg predict`` writes beside the mask. Volumes: ROC AUC
and ECE (10 bins) per label from ``probabilities.nii.gz`` when ``liverseg predict --save-probabilities``
wrote one beside ``segmentation.nii.gz``. ECE (expected calibration error) is reported wherever AUC is.

Outputs (``out_dir``): ``per_case.csv``, ``summary.csv`` (mean, sd, median, min, max of every metric
per label), ``qc/<case>.png`` with false negatives in blue, false positives in red and true positives
in green over the image (photographs: the whole photo; volumes: the axial slice with most errors).

Lesions (volumes only), as the LiTS challenge reports tumours: for one lesion label (``lesion_label``,
or by default the label whose name contains tumour/tumor/lesion in ``label_names``), per case its voxel
Dice and lesion-wise detection (connected components matched by overlap; TP/FP/FN, precision, recall, F1;
rules and NaN conventions in :mod:`liverseg.metrics`), written to ``lesions.csv``; over all cases the
global Dice 2 Σ|P ∩ R| / Σ(|P| + |R|) and the detection scores of the summed TP/FP/FN, written to
``summary.csv`` (``lesion_*`` rows). ``per_case.csv`` is the same with or without a lesion label.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .. import metrics
from ..atomic import write_text_atomic
from ..errors import GeometryError, InputError
from ..io import case_name, is_image_file, read_volume
from ..io.labels import read_label
from ..io.photos import check_same_size, is_photo_file, probability_filename, read_fov, read_mask, read_photo, read_probability_png
from ..preprocess import canonical_ornt, remap_labels, to_canonical

# What liverseg predict writes per case folder, in order of preference.
PREDICTION_FILES = ("segmentation.nii.gz", "mask.png")
EVALUATION_FOLDER = "evaluation"
METRICS = ("dice", "iou", "precision", "recall", "specificity", "accuracy", "hd95", "assd", "surface_dice",
           "relative_volume_error", "auc", "ece")
# What liverseg predict --save-probabilities writes beside segmentation.nii.gz (io.outputs.write_probability_map).
PROBABILITY_FILE = "probabilities.nii.gz"
# A label whose name contains one of these (any case) is the lesion label unless evaluate() is told
# otherwise: "tumour", "Liver_Tumor", "lesions" (the rule of liverseg.tumour_burden).
LESION_WORDS = ("lesion", "tumour", "tumor")


@dataclass(frozen=True)
class CaseResult:
    case: str
    label: int
    name: str
    dice: float
    iou: float
    precision: float
    recall: float
    specificity: float
    accuracy: float
    hd95: float  # in ``unit``
    assd: float
    surface_dice: float  # at the tolerance given to evaluate()
    relative_volume_error: float
    auc: float  # NaN when there is no probability map (or the reference is all one class)
    pred_voxels: int
    ref_voxels: int
    unit: str  # "mm" (volumes) or "px" (photographs)
    ece: float = float("nan")  # expected calibration error (10 bins) of the probability map; NaN without one


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
class _LesionSpec:
    value: int | None  # None: no lesion label in this evaluation
    explicit: bool  # given by the caller (an error on photographs) rather than found by name
    min_volume_ml: float
    min_iou: float
    connectivity: int
    out: list


@dataclass(frozen=True)
class EvalCase:
    case: str
    prediction: Path
    reference: Path
    image: Path | None = None
    fov: Path | None = None
    # how the reference is stored (manifest label_format / structures; see liverseg.io.labels)
    label_format: str = "volume"
    structures: dict | None = None


# ----------------------------------------------------------------------------- pairing

def pair_cases(pred: Path, ref: Path) -> list[EvalCase]:
    """Match predictions to references.

    Files: one pair. Folders: the prediction folder holds ``<case>/segmentation.nii.gz`` or
    ``<case>/mask.png`` (what ``liverseg predict`` writes) or ``<case>.<ext>``; the reference folder
    holds ``<case>.<ext>`` or ``<case>/...``. Cases present on one side only are an error naming them.
    """
    for path in (pred, ref):
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    if pred.is_file() and ref.is_file():
        return [EvalCase(_case_of(ref), pred, ref)]
    if pred.is_file() != ref.is_file():
        raise InputError(f"{pred} and {ref}: give two files or two folders")
    predictions = _index_folder(pred, prefer=PREDICTION_FILES)
    references = _index_folder(ref)
    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    if missing:
        raise InputError(f"{pred}: no prediction for reference case(s) {', '.join(missing[:10])}")
    if extra:
        raise InputError(f"{ref}: no reference for predicted case(s) {', '.join(extra[:10])}")
    if not references:
        raise InputError(f"{ref}: no label maps or mask images found")
    return [EvalCase(name, predictions[name], references[name]) for name in sorted(references)]


def manifest_cases(pred: Path, manifest, split: str) -> list[EvalCase]:
    """Cases of a manifest split, each with its prediction in ``pred/<case id>/`` (or ``pred/<case id>.<ext>``)."""
    if not pred.is_dir():
        raise InputError(f"{pred}: with --manifest the prediction must be the -o folder of liverseg predict")
    predictions = _index_folder(pred, prefer=PREDICTION_FILES)
    cases = []
    for case in manifest.split(split):
        if case.label is None:
            raise InputError(f"{manifest.path}: case {case.case_id} in split {split!r} has no label to compare with")
        if case.case_id not in predictions:
            raise InputError(f"{pred}: no prediction for case {case.case_id} of split {split!r}; run liverseg "
                             f"predict --manifest {manifest.path} --split {split} -o {pred}")
        cases.append(EvalCase(case.case_id, predictions[case.case_id], case.label, case.image, case.fov,
                              case.label_format, dict(case.structures)))
    return cases


def _case_of(path: Path) -> str:
    return path.stem if is_photo_file(path) else case_name(path)


def _is_label_file(path: Path) -> bool:
    return is_image_file(path) or is_photo_file(path)


def _index_folder(folder: Path, prefer: tuple[str, ...] = ()) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name == EVALUATION_FOLDER or entry.name.startswith("."):
            continue
        if entry.is_dir():
            preferred = [entry / name for name in prefer if (entry / name).is_file()]
            if preferred:
                found[entry.name] = preferred[0]
                continue
            files = sorted(p for p in entry.iterdir() if p.is_file() and _is_label_file(p))
            if len(files) == 1:
                found[entry.name] = files[0]
            elif len(files) > 1:
                raise InputError(f"{entry}: several label maps ({', '.join(p.name for p in files)}); "
                                 "keep one per case folder")
        elif _is_label_file(entry):
            found[_case_of(entry)] = entry
    return found


# ----------------------------------------------------------------------------- scoring

def lesion_label_of(label_names: dict[int, str] | None) -> int | None:
    """The label whose name contains a ``LESION_WORDS`` word (any case), or None; two such labels are an error."""
    found = sorted(v for v, name in (label_names or {}).items()
                   if v != 0 and any(word in name.lower() for word in LESION_WORDS))
    if len(found) > 1:
        raise InputError(f"labels {', '.join(f'{v}={label_names[v]}' for v in found)} are all named like lesions; "
                         "pick one with --lesion-label")
    return found[0] if found else None


def evaluate(pred: str | Path, ref: str | Path | None = None, label_names: dict[int, str] | None = None,
             ref_remap: dict[int, int] | None = None, *, manifest=None, split: str = "test",
             tolerance_mm: float = 1.0, qc_dir: str | Path | None = None,
             pooled_auc: dict[str, float] | None = None, lesions: list[LesionResult] | None = None,
             lesion_label: int | None = None, lesion_min_volume_ml: float = 0.0, lesion_min_iou: float = 0.0,
             lesion_connectivity: int = 26) -> list[CaseResult]:
    """Metrics for every case and every foreground label found in either map (or named in ``label_names``).

    Give ``ref`` (a file or folder) or ``manifest`` (+ ``split``). With ``qc_dir``, a QC picture per case.
    Photographs with probability maps: pass a dict as ``pooled_auc`` to receive, per label name, the
    ROC AUC over the pixels of all cases together (inside their fields of view), as vessel papers report
    it, besides the per-case AUC.

    Pass a list as ``lesions`` to receive a :class:`LesionResult` per volume case for the lesion label:
    ``lesion_label``, or else the label whose name in ``label_names`` contains tumour/tumor/lesion
    (none: the list stays empty). Components under ``lesion_min_volume_ml`` are ignored on both sides;
    a predicted component detects a reference lesion when they share a voxel and their IoU is at least
    ``lesion_min_iou`` (0: any overlap); components are ``lesion_connectivity``-connected (26, 18 or 6).
    """
    # Every case's field-of-view pixels, kept only when a pooled AUC was asked for.
    pooled_pixels: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = {} if pooled_auc is not None else None
    lesion = None
    if lesions is not None:
        if lesion_label is not None and int(lesion_label) <= 0:
            raise InputError(f"lesion label {lesion_label}: expected a foreground label value (> 0)")
        if not (math.isfinite(lesion_min_volume_ml) and lesion_min_volume_ml >= 0):
            raise InputError(f"lesion minimum volume {lesion_min_volume_ml} mL: expected a number >= 0")
        if not 0.0 <= lesion_min_iou <= 1.0:
            raise InputError(f"lesion minimum IoU {lesion_min_iou}: expected a number in [0, 1]")
        if lesion_connectivity not in (6, 18, 26):
            raise InputError(f"lesion connectivity {lesion_connectivity}: expected 6, 18 or 26")
        value = int(lesion_label) if lesion_label is not None else lesion_label_of(label_names)
        lesion = _LesionSpec(value, lesion_label is not None, float(lesion_min_volume_ml), float(lesion_min_iou),
                             int(lesion_connectivity), lesions)
    pred = Path(pred)
    if manifest is not None:
        cases = manifest_cases(pred, manifest, split)
    elif ref is None:
        raise InputError("evaluate needs a reference (file or folder) or --manifest with --split")
    else:
        cases = pair_cases(pred, Path(ref))
    results: list[CaseResult] = []
    for case in cases:
        if is_photo_file(case.prediction) != is_photo_file(case.reference):
            raise InputError(f"case {case.case}: prediction {case.prediction} and reference {case.reference} "
                             "must both be volumes or both be images")
        score = _score_photo if is_photo_file(case.prediction) else _score_volume
        results.extend(score(case, label_names, ref_remap or {}, tolerance_mm, qc_dir, pooled_pixels, lesion))
    if pooled_auc is not None and pooled_pixels is not None:
        for name, parts in pooled_pixels.items():
            scores, truth = np.concatenate([p for p, _ in parts]), np.concatenate([r for _, r in parts])
            if truth.any() and not truth.all():
                pooled_auc[name] = metrics.roc_auc(scores, truth)
    return results


def _values(pred_labels: np.ndarray, ref_labels: np.ndarray, label_names: dict[int, str] | None) -> list[int]:
    if label_names:
        return sorted(v for v in label_names if v != 0)
    return sorted((set(np.unique(pred_labels).tolist()) | set(np.unique(ref_labels).tolist())) - {0})


def _label_scores(case: str, pred: np.ndarray, ref: np.ndarray, value: int, name: str, spacing, unit: str,
                  tolerance: float, region: np.ndarray | None, probability: np.ndarray | None) -> CaseResult:
    """One label of one case. ``region`` (field of view) restricts every metric to its pixels."""
    p, r = pred == value, ref == value
    if region is not None:
        p, r = p & region, r & region
        p_in, r_in = p[region], r[region]
    else:
        p_in, r_in = p, r
    surface = metrics.surface_metrics(p, r, spacing, tolerance)  # one set of distance transforms for all three
    auc = ece = float("nan")
    if probability is not None and r_in.any() and not r_in.all():
        auc = metrics.roc_auc(probability, r, region)
    if probability is not None and r_in.size:
        ece = metrics.expected_calibration_error(probability, r, region)
    overlap = metrics.overlap_scores(p_in, r_in)  # one count of tp/fp/fn/tn for all of them
    return CaseResult(
        case, value, name,
        overlap["dice"], overlap["iou"], overlap["precision"], overlap["recall"], overlap["specificity"],
        overlap["accuracy"], surface["hd95"], surface["assd"], surface["surface_dice"],
        overlap["relative_volume_error"], auc, overlap["pred_voxels"], overlap["ref_voxels"], unit, ece)


def _lesion_scores(case: str, pred: np.ndarray, ref: np.ndarray, value: int, name: str, spacing,
                   spec: _LesionSpec) -> LesionResult:
    p, r = pred == value, ref == value
    found = metrics.lesion_detection(p, r, spacing, spec.min_volume_ml, spec.min_iou, spec.connectivity)
    overlap = int(np.count_nonzero(p & r))
    n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return LesionResult(case, value, name, metrics.dice(p, r), found.n_ref, found.n_pred, found.tp, found.fp,
                        found.fn, found.precision, found.recall, found.f1, overlap, n_pred, n_ref,
                        n_pred * voxel_ml, n_ref * voxel_ml, spec.connectivity, spec.min_volume_ml, spec.min_iou)


def _score_volume(case: EvalCase, label_names, ref_remap, tolerance, qc_dir, pooled,
                  lesion: _LesionSpec | None = None) -> list[CaseResult]:
    prediction = read_volume(case.prediction)
    image = read_volume(case.image) if case.image is not None and (qc_dir is not None or case.label_format != "volume") else None
    if case.label_format != "volume":  # DICOM mask folders, PNG slices, DICOM SEG: placed on the image's grid
        reference = read_label(case.reference, image, case.label_format, case.structures)
    else:
        reference = read_volume(case.reference)
    if not prediction.same_grid(reference, atol_mm=1e-3):
        raise GeometryError(
            f"case {case.case}: prediction {case.prediction} (shape {prediction.shape}, spacing "
            f"{np.round(prediction.spacing_mm, 4).tolist()}) and reference {case.reference} (shape "
            f"{reference.shape}, spacing {np.round(reference.spacing_mm, 4).tolist()}) are not on the "
            "same grid; predict on the reference's own image so the grids match")
    pred_labels = _as_labels(prediction.array, case.prediction)
    ref_labels = remap_labels(_as_labels(reference.array, case.reference), ref_remap)
    spacing = np.asarray(prediction.spacing_mm, dtype=float)
    probabilities = _volume_probabilities_beside(case.prediction, pred_labels.shape)
    results = [_label_scores(case.case, pred_labels, ref_labels, v, (label_names or {}).get(v, f"label_{v}"),
                             spacing, "mm", tolerance, None,
                             None if probabilities is None or v >= probabilities.shape[3]
                             else np.asarray(probabilities[..., v], dtype=np.float32) / 255.0)
               for v in _values(pred_labels, ref_labels, label_names)]
    del probabilities
    if lesion is not None and lesion.value is not None:
        name = (label_names or {}).get(lesion.value, f"label_{lesion.value}")
        lesion.out.append(_lesion_scores(case.case, pred_labels, ref_labels, lesion.value, name, spacing, lesion))
    if qc_dir is not None:
        if image is not None and not image.same_grid(reference, atol_mm=1e-3):
            image = None  # a QC picture over the wrong grid would mislead; fall back to the reference
        _write_volume_qc(Path(qc_dir) / f"{case.case}.png", pred_labels, ref_labels, reference.affine_ras, image)
    return results


def _score_photo(case: EvalCase, label_names, ref_remap, tolerance, qc_dir, pooled,
                 lesion: _LesionSpec | None = None) -> list[CaseResult]:
    if lesion is not None and lesion.explicit:
        raise InputError(f"case {case.case}: lesion detection (--lesion-label) works on volumes, not photographs")
    n_classes = max(label_names) + 1 if label_names else 2
    pred_labels = read_mask(case.prediction, n_classes)
    ref_labels = remap_labels(read_mask(case.reference, n_classes), ref_remap)
    check_same_size(ref_labels, pred_labels, case.reference, case.prediction, what="prediction")
    region = read_fov(case.fov, ref_labels, case.reference) if case.fov is not None else None
    results = []
    for value in _values(pred_labels, ref_labels, label_names):
        name = (label_names or {}).get(value, f"label_{value}")
        probability = _probability_beside(case.prediction, value, label_names, n_classes)
        if probability is not None:
            check_same_size(ref_labels, probability, case.reference, case.prediction.parent, what="probability map")
            if pooled is not None:
                inside = region if region is not None else np.ones(ref_labels.shape, dtype=bool)
                pooled.setdefault(name, []).append((probability[inside], ref_labels[inside] == value))
        results.append(_label_scores(case.case, pred_labels, ref_labels, value, name, (1.0, 1.0), "px", tolerance,
                                     region, probability))
    if qc_dir is not None:
        background = read_photo(case.image) if case.image is not None else None
        if background is not None and background.shape[:2] != ref_labels.shape:
            background = None
        _write_photo_qc(Path(qc_dir) / f"{case.case}.png", pred_labels, ref_labels, background, region)
    return results


def _probability_beside(prediction: Path, value: int, label_names, n_classes: int) -> np.ndarray | None:
    """The probability map ``liverseg predict`` wrote next to a mask, if there is one."""
    names = [(label_names or {}).get(v, f"label_{v}") for v in range(n_classes)]
    candidate = prediction.parent / probability_filename(names, value)
    return read_probability_png(candidate) if candidate.is_file() else None


def _volume_probabilities_beside(prediction: Path, shape: tuple) -> np.ndarray | None:
    """The uint8 (X, Y, Z, K) probabilities ``liverseg predict --save-probabilities`` wrote beside a label
    map (value = round(255 p)), or None when there are none; refused when not on the label map's grid."""
    candidate = prediction.parent / PROBABILITY_FILE
    if not candidate.is_file() or candidate == prediction:
        return None
    import nibabel as nib

    try:
        image = nib.load(str(candidate))
        raw = np.asanyarray(image.dataobj.get_unscaled())
    except Exception as exc:  # noqa: BLE001 - nibabel's many error types
        raise InputError(f"{candidate}: cannot be read as a probability map ({type(exc).__name__}: {exc})") from None
    if raw.ndim != 4 or tuple(raw.shape[:3]) != tuple(shape) or raw.dtype != np.uint8:
        raise InputError(f"{candidate}: {raw.dtype} of shape {tuple(raw.shape)}, not uint8 probabilities (x, y, z, "
                         f"label) on the grid {tuple(shape)} of {prediction.name}; remove it or predict again")
    return raw


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise InputError(f"{path}: holds non-integer values; a label map is expected")
    return rounded.astype(np.int32)


# ----------------------------------------------------------------------------- QC pictures

def _write_photo_qc(path: Path, pred: np.ndarray, ref: np.ndarray, background: np.ndarray | None,
                    region: np.ndarray | None) -> Path:
    from ..report import error_overlay, save_png

    if background is None:
        background = np.zeros((*ref.shape, 3), dtype=np.uint8)
    if region is not None:
        pred, ref = pred * region, ref * region
    return save_png(error_overlay(background, pred > 0, ref > 0), path)


def _write_volume_qc(path: Path, pred: np.ndarray, ref: np.ndarray, affine: np.ndarray, image) -> Path:
    """The axial slice (canonical RAS orientation, radiological display) with the most errors."""
    from ..report import CT_DISPLAY_WINDOW, error_overlay, save_png

    ornt = canonical_ornt(affine)
    pred_c, ref_c = to_canonical(pred > 0, ornt), to_canonical(ref > 0, ornt)
    errors = np.count_nonzero(pred_c != ref_c, axis=(0, 1))
    k = int(np.argmax(errors)) if errors.any() else int(np.argmax(np.count_nonzero(ref_c, axis=(0, 1))))

    def display(slice_xy: np.ndarray) -> np.ndarray:  # rows anterior -> posterior, columns patient right -> left
        return np.ascontiguousarray(slice_xy.T[::-1, ::-1])

    if image is not None:
        hu = display(to_canonical(image.array, ornt)[:, :, k].astype(np.float32))
        low, high = CT_DISPLAY_WINDOW
        grey = np.clip((hu - low) / (high - low), 0.0, 1.0)
    else:
        grey = display(ref_c[:, :, k]).astype(np.float32) * 0.3
    background = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    return save_png(error_overlay(background, display(pred_c[:, :, k]), display(ref_c[:, :, k])), path)


# ----------------------------------------------------------------------------- tables

def _stat_row(label: str, metric: str, values) -> dict | None:
    """n, mean, sd (sample, ddof=1), median, min, max over the finite values; None when there are none."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return {"label": label, "metric": metric, "n": int(finite.size), "n_not_finite": int(values.size - finite.size),
            "mean": float(finite.mean()), "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max())}


def summarise(results: list[CaseResult]) -> list[dict]:
    """Per label and metric: n, mean, sd (sample, ddof=1), median, min, max over the finite values."""
    rows = []
    for name in sorted({r.name for r in results}):
        of_label = [r for r in results if r.name == name]
        for metric in METRICS:
            row = _stat_row(name, metric, [getattr(r, metric) for r in of_label])
            if row is not None:
                rows.append(row)
    return rows


def worst_cases(results: list[CaseResult], count: int = 3) -> dict[str, list[CaseResult]]:
    """The ``count`` lowest-Dice cases of every label."""
    return {name: sorted((r for r in results if r.name == name), key=lambda r: r.dice)[:count]
            for name in sorted({r.name for r in results})}


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.6f}")
    return str(value)


def write_csv(results: list[CaseResult], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = [f.name for f in fields(CaseResult)]
    writer.writerow(names)
    for r in results:
        writer.writerow([_fmt(v) for v in asdict(r).values()])
    return write_text_atomic(buffer.getvalue(), path)


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


def _lesion_summary_rows(lesions: list[LesionResult]) -> list[dict]:
    """summary.csv rows of the lesion label: per-case statistics of lesion_dice, lesion_precision,
    lesion_recall and lesion_f1; one-value rows (n = cases) of lesion_dice_global, the pooled
    lesion_*_pooled scores (left out when undefined) and the ``*_total`` lesion counts."""
    rows = []
    for name, pooled in pool_lesions(lesions).items():
        of_label = [r for r in lesions if r.name == name]
        for metric in ("dice", "precision", "recall", "f1"):
            row = _stat_row(name, f"lesion_{metric}", [getattr(r, metric) for r in of_label])
            if row is not None:
                rows.append(row)
        single = [("lesion_dice_global", pooled["dice_global"])]
        single += [(f"lesion_{key}_pooled", pooled[key]) for key in ("precision", "recall", "f1")]
        single += [(f"{key}_total", pooled[key]) for key in ("ref_lesions", "pred_lesions")]
        single += [(f"lesion_{key}_total", pooled[key]) for key in ("tp", "fp", "fn")]
        for metric, value in single:
            if isinstance(value, float) and math.isnan(value):
                continue
            rows.append({"label": name, "metric": metric, "n": pooled["cases"], "n_not_finite": 0, "mean": value,
                         "sd": 0.0, "median": value, "min": value, "max": value})
    return rows


def write_lesions_csv(lesions: list[LesionResult], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([f.name for f in fields(LesionResult)])
    for r in lesions:
        writer.writerow([_fmt(v) for v in asdict(r).values()])
    return write_text_atomic(buffer.getvalue(), path)


def write_summary_csv(results: list[CaseResult], path: str | Path, pooled_auc: dict[str, float] | None = None,
                      lesions: list[LesionResult] | None = None) -> Path:
    """summarise() rows, plus an ``auc_pooled`` row per label (one value over all cases' pixels) when given,
    plus the lesion label's ``lesion_*`` rows (see ``_lesion_summary_rows``) when ``lesions`` holds any."""
    buffer = io.StringIO()
    rows = summarise(results)
    for name, auc in (pooled_auc or {}).items():
        n = sum(1 for r in results if r.name == name)
        rows.append({"label": name, "metric": "auc_pooled", "n": n, "n_not_finite": 0, "mean": auc, "sd": 0.0,
                     "median": auc, "min": auc, "max": auc})
    rows += _lesion_summary_rows(lesions or [])
    writer = csv.DictWriter(buffer, fieldnames=["label", "metric", "n", "n_not_finite", "mean", "sd", "median",
                                                "min", "max"])
    writer.writeheader()
    writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)
    return write_text_atomic(buffer.getvalue(), path)


def format_table(results: list[CaseResult], lesions: list[LesionResult] | None = None) -> str:
    """Per-case rows, then per label: mean ± sd and median of the main metrics, and the worst cases;
    then, when ``lesions`` holds any, the lesion table (see ``format_lesion_table``)."""
    has_auc = any(not math.isnan(r.auc) for r in results)
    unit = results[0].unit if results else "mm"
    has_ece = any(not math.isnan(r.ece) for r in results)
    head = f"{'case':<28} {'label':<12} {'Dice':>7} {'IoU':>7} {'Sens':>7} {'Spec':>7} {'HD95':>8}"
    lines = [head + (f" {'AUC':>7}" if has_auc else "") + (f" {'ECE':>7}" if has_ece else "")]
    for r in results:
        line = (f"{r.case:<28} {r.name:<12} {r.dice:7.4f} {r.iou:7.4f} {r.recall:7.4f} {r.specificity:7.4f} "
                f"{r.hd95:8.2f}")
        lines.append(line + (f" {r.auc:7.4f}" if has_auc else "") + (f" {r.ece:7.4f}" if has_ece else ""))
    summary = {(row["label"], row["metric"]): row for row in summarise(results)}
    shown = (["dice", "iou", "recall", "specificity", "accuracy", "hd95", "assd", "surface_dice"]
             + (["auc"] if has_auc else []) + (["ece"] if has_ece else []))
    for name, worst in worst_cases(results).items():
        lines.append("")
        lines.append(f"{name}: {sum(1 for r in results if r.name == name)} cases (distances in {unit})")
        for metric in shown:
            row = summary.get((name, metric))
            if row:
                extra = f"  ({row['n_not_finite']} not finite)" if row["n_not_finite"] else ""
                lines.append(f"  {metric:<14} mean {row['mean']:.4f} ± {row['sd']:.4f}   median {row['median']:.4f}   "
                             f"min {row['min']:.4f}   max {row['max']:.4f}{extra}")
        lines.append("  worst Dice: " + ", ".join(f"{r.case} {r.dice:.4f}" for r in worst))
    if lesions:
        lines += ["", format_lesion_table(lesions)]
    return "\n".join(lines)


def format_lesion_table(lesions: list[LesionResult]) -> str:
    """Per case: Dice, lesion counts, TP/FP/FN, precision, recall, F1; per label: the global Dice and the
    detection scores of the summed counts."""
    def score(value: float) -> str:
        return f"{'nan':>7}" if math.isnan(value) else f"{value:7.4f}"

    lines = []
    for name, pooled in pool_lesions(lesions).items():
        of_label = [r for r in lesions if r.name == name]
        first = of_label[0]
        match = "any overlap" if first.min_iou == 0 else f"overlap with IoU >= {first.min_iou:g}"
        size = (f"components under {first.min_volume_ml:g} mL ignored" if first.min_volume_ml
                else "every component counts")
        lines.append(f"{name} (label {first.label}) lesions: {first.connectivity}-connected components, detected by "
                     f"{match}, {size}")
        lines.append(f"{'case':<28} {'Dice':>7} {'ref':>5} {'pred':>5} {'TP':>5} {'FP':>5} {'FN':>5} "
                     f"{'Prec':>7} {'Recall':>7} {'F1':>7}")
        for r in of_label:
            lines.append(f"{r.case:<28} {r.dice:7.4f} {r.ref_lesions:5d} {r.pred_lesions:5d} {r.tp:5d} {r.fp:5d} "
                         f"{r.fn:5d} {score(r.precision)} {score(r.recall)} {score(r.f1)}")
        dices = [r.dice for r in of_label]
        lines.append(f"  Dice per case: mean {np.mean(dices):.4f}   Dice global (all {pooled['cases']} cases' voxels "
                     f"pooled): {pooled['dice_global']:.4f}")
        detection = ", ".join(f"{key} {'undefined' if math.isnan(pooled[key]) else format(pooled[key], '.4f')}"
                              for key in ("precision", "recall", "f1"))
        lines.append(f"  detection over all cases: {pooled['ref_lesions']} reference lesions, {pooled['pred_lesions']} "
                     f"predicted; TP {pooled['tp']}, FP {pooled['fp']}, FN {pooled['fn']}; {detection}")
    return "\n".join(lines)


def write_outputs(results: list[CaseResult], out_dir: str | Path, pooled_auc: dict[str, float] | None = None,
                  lesions: list[LesionResult] | None = None) -> dict[str, Path]:
    """per_case.csv and summary.csv; lesions.csv too when ``lesions`` holds any."""
    out_dir = Path(out_dir)
    written = {"per_case": write_csv(results, out_dir / "per_case.csv"),
               "summary": write_summary_csv(results, out_dir / "summary.csv", pooled_auc, lesions)}
    if lesions:
        written["lesions"] = write_lesions_csv(lesions, out_dir / "lesions.csv")
    return written


__all__ = ["CaseResult", "LesionResult", "EvalCase", "pair_cases", "manifest_cases", "evaluate", "lesion_label_of",
           "summarise", "worst_cases", "pool_lesions", "write_csv", "write_lesions_csv", "write_summary_csv",
           "format_table", "format_lesion_table", "write_outputs", "METRICS", "LESION_WORDS", "EVALUATION_FOLDER"]
