"""Compare predicted label maps with references: Dice and IoU per label, printed and saved as CSV."""
from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GeometryError, InputError
from .io import case_name, is_image_file, read_volume
from .metrics import per_label
from .preprocess import remap_labels


@dataclass(frozen=True)
class CaseResult:
    case: str
    label: int
    name: str
    dice: float
    iou: float
    pred_voxels: int
    ref_voxels: int


def pair_cases(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    """Match predictions to references.

    Files: one pair. Folders: the prediction folder holds ``<case>/segmentation.nii.gz`` (what
    ``liverseg predict`` writes) or ``<case>.nii.gz``; the reference folder holds ``<case>.<ext>``
    or ``<case>/...``. Cases present on one side only are an error naming them.
    """
    for path in (pred, ref):
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    if pred.is_file() and ref.is_file():
        return [(case_name(ref), pred, ref)]
    if pred.is_file() != ref.is_file():
        raise InputError(f"{pred} and {ref}: give two files or two folders")
    predictions = _index_folder(pred, prefer="segmentation.nii.gz")
    references = _index_folder(ref)
    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    if missing:
        raise InputError(f"{pred}: no prediction for reference case(s) {', '.join(missing[:10])}")
    if extra:
        raise InputError(f"{ref}: no reference for predicted case(s) {', '.join(extra[:10])}")
    if not references:
        raise InputError(f"{ref}: no NIfTI/NRRD/MHA label maps found")
    return [(name, predictions[name], references[name]) for name in sorted(references)]


def _index_folder(folder: Path, prefer: str | None = None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            files = sorted(p for p in entry.iterdir() if is_image_file(p))
            chosen = [p for p in files if p.name == prefer] or files
            if len(chosen) == 1:
                found[entry.name] = chosen[0]
            elif len(chosen) > 1:
                raise InputError(f"{entry}: several label maps ({', '.join(p.name for p in chosen)}); "
                                 "keep one per case folder")
        elif is_image_file(entry):
            found[case_name(entry)] = entry
    return found


def evaluate(pred: str | Path, ref: str | Path, label_names: dict[int, str] | None = None,
             ref_remap: dict[int, int] | None = None) -> list[CaseResult]:
    """Dice/IoU for every case and every foreground label found in either map (or named)."""
    results = []
    for name, pred_path, ref_path in pair_cases(Path(pred), Path(ref)):
        prediction, reference = read_volume(pred_path), read_volume(ref_path)
        if not prediction.same_grid(reference, atol_mm=1e-3):
            raise GeometryError(
                f"case {name}: prediction {pred_path} (shape {prediction.shape}, spacing "
                f"{np.round(prediction.spacing_mm, 4).tolist()}) and reference {ref_path} (shape "
                f"{reference.shape}, spacing {np.round(reference.spacing_mm, 4).tolist()}) are not on the "
                "same grid; predict on the reference's own image so the grids match")
        pred_labels = _as_labels(prediction.array, pred_path)
        ref_labels = remap_labels(_as_labels(reference.array, ref_path), ref_remap or {})
        values = sorted(label_names) if label_names else sorted(
            set(np.unique(pred_labels).tolist()) | set(np.unique(ref_labels).tolist()) - {0})
        values = [v for v in values if v != 0]
        scores = per_label(pred_labels, ref_labels, values)
        for value in values:
            results.append(CaseResult(name, value, (label_names or {}).get(value, f"label_{value}"),
                                      scores[value]["dice"], scores[value]["iou"],
                                      int(np.count_nonzero(pred_labels == value)),
                                      int(np.count_nonzero(ref_labels == value))))
    return results


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise InputError(f"{path}: holds non-integer values; a label map is expected")
    return rounded.astype(np.int32)


def write_csv(results: list[CaseResult], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "label", "name", "dice", "iou", "pred_voxels", "ref_voxels"])
    for r in results:
        writer.writerow([r.case, r.label, r.name, f"{r.dice:.6f}", f"{r.iou:.6f}", r.pred_voxels, r.ref_voxels])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, path)
    return path


def format_table(results: list[CaseResult]) -> str:
    lines = [f"{'case':<28} {'label':<14} {'Dice':>7} {'IoU':>7}"]
    for r in results:
        lines.append(f"{r.case:<28} {r.name:<14} {r.dice:7.4f} {r.iou:7.4f}")
    for name in sorted({r.name for r in results}):
        dices = [r.dice for r in results if r.name == name]
        ious = [r.iou for r in results if r.name == name]
        lines.append(f"{'mean (' + str(len(dices)) + ' cases)':<28} {name:<14} {np.mean(dices):7.4f} "
                     f"{np.mean(ious):7.4f}")
    return "\n".join(lines)
