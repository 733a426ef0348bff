"""Per-case results: pairing predictions with references (two files, two folders or a manifest split),
reading them, and every metric per case and label (see :mod:`liverseg.evaluation`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics
from ..errors import GeometryError, InputError
from ..io import case_name, is_image_file, read_volume
from ..io.labels import read_label
from ..io.photos import check_same_size, is_photo_file, probability_filename, read_fov, read_mask, read_photo, read_probability_png
from ..grid.road import remap_labels
from .lesions import LesionResult, LesionSpec, lesion_scores, lesion_spec
from .qc import write_photo_qc, write_volume_qc

__all__ = ["CaseResult", "EvalCase", "pair_cases", "manifest_cases", "evaluate", "METRICS", "EVALUATION_FOLDER",
           "PREDICTION_FILES", "PROBABILITY_FILE"]

# What liverseg predict writes per case folder, in order of preference.
PREDICTION_FILES = ("segmentation.nii.gz", "mask.png")
EVALUATION_FOLDER = "evaluation"
METRICS = ("dice", "iou", "precision", "recall", "specificity", "accuracy", "hd95", "assd", "surface_dice",
           "relative_volume_error", "auc", "ece")
# What liverseg predict --save-probabilities writes beside segmentation.nii.gz (io.outputs.write_probability_map).
PROBABILITY_FILE = "probabilities.nii.gz"


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
    lesion = None if lesions is None else lesion_spec(lesions, lesion_label, label_names, lesion_min_volume_ml,
                                                      lesion_min_iou, lesion_connectivity)
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


def _score_volume(case: EvalCase, label_names, ref_remap, tolerance, qc_dir, pooled,
                  lesion: LesionSpec | None = None) -> list[CaseResult]:
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
        lesion.out.append(lesion_scores(case.case, pred_labels, ref_labels, lesion.value, name, spacing, lesion))
    if qc_dir is not None:
        if image is not None and not image.same_grid(reference, atol_mm=1e-3):
            image = None  # a QC picture over the wrong grid would mislead; fall back to the reference
        write_volume_qc(Path(qc_dir) / f"{case.case}.png", pred_labels, ref_labels, reference.affine_ras, image)
    return results


def _score_photo(case: EvalCase, label_names, ref_remap, tolerance, qc_dir, pooled,
                 lesion: LesionSpec | None = None) -> list[CaseResult]:
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
        write_photo_qc(Path(qc_dir) / f"{case.case}.png", pred_labels, ref_labels, background, region)
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
