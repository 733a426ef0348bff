"""``liverseg evaluate`` as one call: the checks of its arguments, the label names (given, or the manifest's),
the output folder, the metrics, the files written and the text the command prints."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..datasets.manifest import load_manifest
from .lesions import LesionResult
from .scoring import EVALUATION_FOLDER, CaseResult, evaluate
from .tables import format_table, write_csv, write_outputs

__all__ = ["EvaluationRun", "run_evaluation"]


@dataclass(frozen=True)
class EvaluationRun:
    """What :func:`run_evaluation` computed and wrote."""
    results: list[CaseResult]
    lesions: list[LesionResult] | None  # None when lesion evaluation was turned off (lesion_label=False)
    pooled_auc: dict[str, float]  # per label name: ROC AUC over all cases' pixels (photographs with probabilities)
    out_dir: Path | None  # where per_case.csv, summary.csv (lesions.csv) and qc/ went; None: not written
    written: dict[str, Path]  # "per_case", "summary", "lesions" (in out_dir) and "csv" (the extra copy), as written
    text: str  # the lines echoed, joined by newlines: the table, the pooled AUCs, what was written where


def run_evaluation(prediction: str | Path, reference: str | Path | None = None, *,
                   manifest_path: str | Path | None = None, root: str | Path | None = None, split: str = "test",
                   out_dir: str | Path | None = None, csv: str | Path | None = None, qc: bool = True,
                   tolerance_mm: float = 1.0, label_names: dict[int, str] | None = None,
                   ref_remap: dict[int, int] | None = None, lesion_label: int | None | bool = None,
                   lesion_min_volume_ml: float = 0.0, lesion_min_iou: float = 0.0, lesion_connectivity: int = 26,
                   echo: Callable[[str], object] | None = None) -> EvaluationRun:
    """Evaluate ``prediction`` against ``reference`` (a file or folder) or the ``split`` of the manifest at
    ``manifest_path`` (paths relative to ``root``), as ``liverseg evaluate`` does; see :func:`evaluate`.

    ``label_names`` default to the manifest's labels. ``out_dir`` defaults to ``prediction/evaluation`` when
    ``prediction`` is a folder (a single file: nothing written there); ``qc``: QC pictures in ``out_dir/qc``;
    ``csv``: the per-case results also to this file. ``lesion_label``: None picks the label named like a
    lesion, False turns lesion evaluation off, N is that label. ``echo`` (e.g. ``print``) receives each piece
    of the text as soon as it is final, so a failure while writing still leaves the table shown.
    """
    prediction = Path(prediction)
    manifest = load_manifest(manifest_path, root) if manifest_path else None
    if manifest is None and reference is None:
        raise InputError("evaluate: give a REFERENCE file/folder, or --manifest M.json --split SPLIT")
    if manifest is not None and reference is not None:
        raise InputError("evaluate: give either a REFERENCE or --manifest, not both")
    names = label_names or (
        {value: name for name, value in manifest.labels.items() if value != 0} if manifest and manifest.labels
        else None)
    if out_dir is not None:
        out_dir = Path(out_dir)
    elif prediction.is_dir():
        out_dir = prediction / EVALUATION_FOLDER
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        if echo is not None:
            echo(text)

    pooled: dict[str, float] = {}
    lesions: list[LesionResult] | None = None if lesion_label is False else []
    results = evaluate(prediction, reference, names, ref_remap, manifest=manifest, split=split,
                       tolerance_mm=tolerance_mm, qc_dir=None if not qc or out_dir is None else out_dir / "qc",
                       pooled_auc=pooled, lesions=lesions, lesion_label=None if lesion_label is False else lesion_label,
                       lesion_min_volume_ml=lesion_min_volume_ml, lesion_min_iou=lesion_min_iou,
                       lesion_connectivity=lesion_connectivity)
    say(format_table(results, lesions))
    for name, auc in pooled.items():
        say(f"{name}: ROC AUC over all cases' pixels together (inside the field of view): {auc:.4f}")
    written: dict[str, Path] = {}
    if out_dir is not None:
        written.update(write_outputs(results, out_dir, pooled, lesions))
        say(f"per-case results: {written['per_case']}\nsummary: {written['summary']}")
        if "lesions" in written:
            say(f"lesions per case: {written['lesions']}")
        if qc:
            say(f"QC pictures (false negatives blue, false positives red): {out_dir / 'qc'}")
    if csv is not None:
        written["csv"] = write_csv(results, csv)
        say(f"per-case results: {written['csv']}")
    return EvaluationRun(results, lesions, pooled, out_dir, written, "\n".join(lines))
