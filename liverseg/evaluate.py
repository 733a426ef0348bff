"""Compare predictions with references: per-case metrics, a summary, and QC pictures.

Cases come from two files, two folders, or a prediction folder plus a manifest split (references,
images and field-of-view masks from the manifest). Volumes (NIfTI/NRRD/MHA/DICOM label maps) must
share the reference's grid; surface distances are in mm. Photographs (PNG/JPG/TIFF/GIF masks) are
scored inside their field-of-view mask when the manifest gives one, surface distances in pixels, and
ROC AUC from the 16-bit probability map ``liverseg predict`` writes beside the mask.

Outputs (``out_dir``): ``per_case.csv``, ``summary.csv`` (mean, sd, median, min, max of every metric
per label), ``qc/<case>.png`` with false negatives in blue, false positives in red and true positives
in green over the image (photographs: the whole photo; volumes: the axial slice with most errors).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import metrics
from .atomic import write_text_atomic
from .errors import GeometryError, InputError
from .io import case_name, is_image_file, read_volume
from .io.labels import read_label
from .io.photos import check_same_size, is_photo_file, probability_filename, read_fov, read_mask, read_photo, read_probability_png
from .preprocess import canonical_ornt, remap_labels, to_canonical

# What liverseg predict writes per case folder, in order of preference.
PREDICTION_FILES = ("segmentation.nii.gz", "mask.png")
EVALUATION_FOLDER = "evaluation"
METRICS = ("dice", "iou", "precision", "recall", "specificity", "accuracy", "hd95", "assd", "surface_dice",
           "relative_volume_error", "auc")


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
             pooled_auc: dict[str, float] | None = None) -> list[CaseResult]:
    """Metrics for every case and every foreground label found in either map (or named in ``label_names``).

    Give ``ref`` (a file or folder) or ``manifest`` (+ ``split``). With ``qc_dir``, a QC picture per case.
    Photographs with probability maps: pass a dict as ``pooled_auc`` to receive, per label name, the
    ROC AUC over the pixels of all cases together (inside their fields of view), as vessel papers report
    it, besides the per-case AUC.
    """
    # Every case's field-of-view pixels, kept only when a pooled AUC was asked for.
    pooled_pixels: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = {} if pooled_auc is not None else None
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
        results.extend(score(case, label_names, ref_remap or {}, tolerance_mm, qc_dir, pooled_pixels))
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
    auc = float("nan")
    if probability is not None and r_in.any() and not r_in.all():
        auc = metrics.roc_auc(probability, r, region)
    overlap = metrics.overlap_scores(p_in, r_in)  # one count of tp/fp/fn/tn for all of them
    return CaseResult(
        case, value, name,
        overlap["dice"], overlap["iou"], overlap["precision"], overlap["recall"], overlap["specificity"],
        overlap["accuracy"], surface["hd95"], surface["assd"], surface["surface_dice"],
        overlap["relative_volume_error"], auc, overlap["pred_voxels"], overlap["ref_voxels"], unit)


def _score_volume(case: EvalCase, label_names, ref_remap, tolerance, qc_dir, pooled) -> list[CaseResult]:
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
    results = [_label_scores(case.case, pred_labels, ref_labels, v, (label_names or {}).get(v, f"label_{v}"),
                             spacing, "mm", tolerance, None, None)
               for v in _values(pred_labels, ref_labels, label_names)]
    if qc_dir is not None:
        if image is not None and not image.same_grid(reference, atol_mm=1e-3):
            image = None  # a QC picture over the wrong grid would mislead; fall back to the reference
        _write_volume_qc(Path(qc_dir) / f"{case.case}.png", pred_labels, ref_labels, reference.affine_ras, image)
    return results


def _score_photo(case: EvalCase, label_names, ref_remap, tolerance, qc_dir, pooled) -> list[CaseResult]:
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


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise InputError(f"{path}: holds non-integer values; a label map is expected")
    return rounded.astype(np.int32)


# ----------------------------------------------------------------------------- QC pictures

def _write_photo_qc(path: Path, pred: np.ndarray, ref: np.ndarray, background: np.ndarray | None,
                    region: np.ndarray | None) -> Path:
    from .report import error_overlay, save_png

    if background is None:
        background = np.zeros((*ref.shape, 3), dtype=np.uint8)
    if region is not None:
        pred, ref = pred * region, ref * region
    return save_png(error_overlay(background, pred > 0, ref > 0), path)


def _write_volume_qc(path: Path, pred: np.ndarray, ref: np.ndarray, affine: np.ndarray, image) -> Path:
    """The axial slice (canonical RAS orientation, radiological display) with the most errors."""
    from .report import CT_DISPLAY_WINDOW, error_overlay, save_png

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

def summarise(results: list[CaseResult]) -> list[dict]:
    """Per label and metric: n, mean, sd (sample, ddof=1), median, min, max over the finite values."""
    rows = []
    for name in sorted({r.name for r in results}):
        of_label = [r for r in results if r.name == name]
        for metric in METRICS:
            values = np.array([getattr(r, metric) for r in of_label], dtype=float)
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                continue
            rows.append({"label": name, "metric": metric, "n": int(finite.size), "n_not_finite": int(values.size - finite.size),
                         "mean": float(finite.mean()), "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
                         "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max())})
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


def write_summary_csv(results: list[CaseResult], path: str | Path, pooled_auc: dict[str, float] | None = None) -> Path:
    """summarise() rows, plus an ``auc_pooled`` row per label (one value over all cases' pixels) when given."""
    buffer = io.StringIO()
    rows = summarise(results)
    for name, auc in (pooled_auc or {}).items():
        n = sum(1 for r in results if r.name == name)
        rows.append({"label": name, "metric": "auc_pooled", "n": n, "n_not_finite": 0, "mean": auc, "sd": 0.0,
                     "median": auc, "min": auc, "max": auc})
    writer = csv.DictWriter(buffer, fieldnames=["label", "metric", "n", "n_not_finite", "mean", "sd", "median",
                                                "min", "max"])
    writer.writeheader()
    writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)
    return write_text_atomic(buffer.getvalue(), path)


def format_table(results: list[CaseResult]) -> str:
    """Per-case rows, then per label: mean ± sd and median of the main metrics, and the worst cases."""
    has_auc = any(not math.isnan(r.auc) for r in results)
    unit = results[0].unit if results else "mm"
    head = f"{'case':<28} {'label':<12} {'Dice':>7} {'IoU':>7} {'Sens':>7} {'Spec':>7} {'HD95':>8}"
    lines = [head + (f" {'AUC':>7}" if has_auc else "")]
    for r in results:
        line = (f"{r.case:<28} {r.name:<12} {r.dice:7.4f} {r.iou:7.4f} {r.recall:7.4f} {r.specificity:7.4f} "
                f"{r.hd95:8.2f}")
        lines.append(line + (f" {r.auc:7.4f}" if has_auc else ""))
    summary = {(row["label"], row["metric"]): row for row in summarise(results)}
    shown = ["dice", "iou", "recall", "specificity", "accuracy", "hd95", "assd", "surface_dice"] + (["auc"] if has_auc else [])
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
    return "\n".join(lines)


def write_outputs(results: list[CaseResult], out_dir: str | Path,
                  pooled_auc: dict[str, float] | None = None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"per_case": write_csv(results, out_dir / "per_case.csv"),
            "summary": write_summary_csv(results, out_dir / "summary.csv", pooled_auc)}


__all__ = ["CaseResult", "EvalCase", "pair_cases", "manifest_cases", "evaluate", "summarise", "worst_cases",
           "write_csv", "write_summary_csv", "format_table", "write_outputs", "METRICS", "EVALUATION_FOLDER"]
