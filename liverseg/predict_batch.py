"""Batch prediction: many inputs, a folder of inputs or a manifest split -> ``OUT/<case>/``.

One generic loop over cases calls one per-case function. Every case folder is assembled under a
hidden temporary name inside ``OUT`` and renamed into place only when complete, so a killed run
leaves no partial case folder (only a ``.<case>.*.partial`` folder, removed on the way out when
Python still can). A case that fails is reported in one line and skipped; the others go on.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .config import apply_overrides
from .errors import ConfigError, InputError, LiversegError
from .infer import TrainedModel, load_model, predict_volume
from .io import case_name, check_input, is_image_file, read_volume, write_label_map
from .io.outputs import label_voxel_counts
from .io.photos import is_photo_file
from .io.volume import Volume
from .manifest import Case, load_manifest
from .tumour_burden import burden_summary, tumour_burden

log = logging.getLogger(__name__)

SEGMENTATION = "segmentation.nii.gz"
LESIONS_CSV = "lesions.csv"


@dataclass(frozen=True)
class PredictOptions:
    """Runtime choices of a prediction run (not config: they depend on the machine and the user)."""

    device: str | None = None
    threads: int | None = None
    progress: bool = True
    overwrite: bool = False
    skip_existing: bool = False
    series: str | None = None  # DICOM SeriesInstanceUID or index (liverseg.io.read_volume)
    allow_gaps: bool = False
    memory_gb: float | None = None
    overrides: tuple[str, ...] = ()  # infer.KEY=VALUE
    preview: bool = True
    backend: str = "auto"  # auto | torch | onnx: see infer.load_model


@dataclass
class BatchResult:
    case_dirs: dict[str, Path] = field(default_factory=dict)
    segmentations: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- which cases

def cases_from_inputs(inputs: Sequence[str | Path]) -> list[Case]:
    """One case per input; a folder holding image files is a folder of inputs.

    Photographs (PNG/JPEG/TIFF/GIF/BMP, for photo models) are one case each, named by their stem; a
    folder holding photographs and no volumes is a folder of them.

    A folder with NIfTI/NRRD/MHA files directly in it gives one case per file. Any other folder is one
    DICOM input (searched recursively, as ``read_volume`` does), so a nested PACS export keeps working;
    give several series folders as several inputs (``series_root/*``).
    """
    cases = []
    for raw in inputs:
        path = Path(raw)
        if is_photo_file(path):  # 2D photographs (for photo models): the case is the file's stem
            cases.append(Case(path.stem, path, None))
            continue
        if path.is_dir():
            children = sorted(path.iterdir())
            photos = [c for c in children if c.is_file() and is_photo_file(c)]
            if photos and not any(is_image_file(c) for c in children):
                cases += [Case(c.stem, c, None) for c in photos]
                continue
            images = [c for c in children if is_image_file(c)]
            if images:
                cases += [Case(case_name(c), c, None) for c in images]
                continue
        cases.append(Case(case_name(path), path, None))
    return cases


def cases_from_manifest(manifest: str | Path, root: str | Path | None, split: str) -> list[Case]:
    return load_manifest(manifest, root).split(split)


# ----------------------------------------------------------------------------- the loop

def predict_batch(inputs: Sequence[str | Path], out_dir: str | Path, model: str | Path | None,
                  options: PredictOptions = PredictOptions()) -> BatchResult:
    return predict_cases(cases_from_inputs(inputs), out_dir, model, options)


def predict_cases(cases: Sequence[Case], out_dir: str | Path, model: str | Path | None,
                  options: PredictOptions = PredictOptions()) -> BatchResult:
    """Predict every case into ``out_dir/<case id>/``; failures are reported, skipped and returned.

    Checked before anything is predicted (an error here writes nothing): the model, every input's
    header or DICOM series, clashing case names, and case folders that already exist (kept unless
    ``overwrite``; ``skip_existing`` leaves them and predicts the rest).
    """
    cases = list(cases)
    if not cases:
        raise InputError("no input given: pass DICOM folders or NIfTI/NRRD/MHA files, a folder of them, "
                         "or --manifest M.json --split NAME")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir}: exists and is not a folder; give a folder for the outputs")
    names = [case.case_id for case in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"several inputs share the case name(s) {', '.join(duplicates)}; their outputs "
                         "would overwrite each other: predict them into separate -o folders")
    bundle = load_model(model, options.device, options.threads, options.backend)
    if options.overrides and getattr(bundle.model, "segment_volume", None) is not None:
        raise InputError(f"--set {options.overrides[0]}: a built-in model has no run config to override")
    if options.overrides:
        bundle = replace(bundle, cfg=_infer_overrides(bundle.cfg, options.overrides))
    if bundle.cfg.data.modality == "ct":
        problems = []
        for case in cases:
            try:
                check_input(case.image, series=options.series, allow_gaps=options.allow_gaps)
            except LiversegError as exc:
                problems.append(str(exc))
        if problems:
            raise InputError("; ".join(problems) + ("" if len(problems) == 1 else
                             f" ({len(problems)} inputs fail this check; fix or leave them out)"))
    result = BatchResult()
    existing = [case.case_id for case in cases if (out_dir / case.case_id).exists()]
    if existing and options.skip_existing:
        result.skipped = existing
        cases = [case for case in cases if case.case_id not in existing]
        log.info("skipping %d case(s) with existing outputs: %s", len(existing), ", ".join(existing[:10]))
    elif existing and not options.overwrite:
        shown = ", ".join(str(out_dir / name) for name in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise InputError(f"{shown}{more}: output folder(s) already exist; pass --overwrite to replace them, "
                         "--skip-existing to keep them and predict the rest, or choose another -o")
    single = len(cases) == 1
    bar = tqdm(cases, desc="cases", unit="case", disable=not options.progress or single)
    for case in bar:
        bar.set_postfix_str(case.case_id, refresh=False)
        try:
            case_dir = predict_case(bundle, case, out_dir, options, progress=options.progress and single)
        except (LiversegError, OSError, RuntimeError, ValueError, MemoryError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            result.failed.append((case.case_id, reason))
            log.error("%s: failed, skipped (%s: %s)", case.case_id, type(exc).__name__, reason[:300])
            continue
        result.case_dirs[case.case_id] = case_dir
        if (case_dir / SEGMENTATION).is_file():
            result.segmentations.append(case_dir / SEGMENTATION)
    bar.close()
    return result


def predict_case(bundle: TrainedModel, case: Case, out_dir: Path, options: PredictOptions,
                 progress: bool = False) -> Path:
    """Predict one case into ``out_dir/<case id>/``, assembled under a temporary name and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / case.case_id
    work = Path(tempfile.mkdtemp(prefix=f".{case.case_id}.", suffix=".partial", dir=out_dir))
    try:
        if bundle.cfg.data.modality == "photo":
            from .photos import predict_photo_case

            predict_photo_case(bundle, case, work)
        else:
            predict_ct_case(bundle, case, work, options, progress)
        _commit(work, final, options.overwrite)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def _commit(work: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an existing one is moved aside first, then removed."""
    old = None
    if final.exists():
        if not overwrite:
            raise InputError(f"{final}: appeared while predicting; pass --overwrite to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.rename(final, old / final.name)
    os.rename(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def predict_ct_case(bundle: TrainedModel, case: Case, case_dir: Path, options: PredictOptions,
                    progress: bool = False) -> list[Path]:
    """Read, segment and write one CT case into ``case_dir``; returns the files written."""
    cfg = bundle.cfg
    start = time.perf_counter()
    volume = read_volume(case.image, series=options.series, allow_gaps=options.allow_gaps)
    segment_volume = getattr(bundle.model, "segment_volume", None)  # built-in models bring their own road
    warnings: list[str] = []
    details: dict = {}
    if segment_volume is not None:
        labels, warnings, details = segment_volume(volume, threads=options.threads)
    else:
        labels = predict_volume(bundle.model, volume, cfg, bundle.device, progress=progress,
                                memory_gb=options.memory_gb)
    warnings = [*volume.meta.get("warnings", []), *warnings]  # the reader's repairs (e.g. qform/sform) first
    runtime_s = time.perf_counter() - start
    for warning in warnings:
        log.warning("%s: warning: %s", case.case_id, warning)
    burden = tumour_burden(labels, volume.affine_ras, cfg.data.labels, volume.array)
    written = write_case_outputs(bundle, case, volume, labels, case_dir, runtime_s, options,
                                 warnings=warnings, details=details, burden=burden)
    log.info("%s: %s in %.1f s", case.case_id, _label_summary(labels, volume, cfg.data.labels), runtime_s)
    if burden is not None:
        log.info("%s: %s", case.case_id, burden_summary(burden))
    return written


def write_case_outputs(bundle: TrainedModel, case: Case, volume: Volume, labels: np.ndarray, case_dir: Path,
                       runtime_s: float, options: PredictOptions, warnings: list[str] | None = None,
                       details: dict | None = None, burden: dict | None = None) -> list[Path]:
    """Every output of a case: the NIfTI label map and the Slicer-ready files beside it (``io.outputs``,
    ``report``).

    ``segmentation.nii.gz``, ``segmentation.seg.nrrd`` + ``labels.ctbl`` (names and colours for 3D
    Slicer), ``segmentation.dcm`` (DICOM SEG, DICOM input only), ``report.json`` (volumes, HU
    statistics, geometry, runtime, model, warnings; the tumour burden when the labels have a liver and
    a lesion label), ``lesions.csv`` (the lesion table, same condition) and ``preview.png`` (unless
    ``options.preview`` is off). ``burden``: ``tumour_burden.tumour_burden``'s result when the caller
    has it already (computed here otherwise). The compressed files are written in a second thread while
    this one writes the DICOM SEG and the report (zlib releases the GIL), so on two cores the slowest
    of them sets the time.
    """
    from .io.dicom_seg import write_dicom_seg
    from .io.outputs import write_color_table, write_seg_nrrd
    from .report import case_report, write_lesions_csv, write_preview_png, write_report

    names = list(bundle.cfg.data.labels)
    label_volume = volume.with_array(labels)
    if burden is None:
        burden = tumour_burden(labels, volume.affine_ras, names, volume.array)

    def compressed() -> list[Path]:
        files = [write_label_map(labels, volume, case_dir / SEGMENTATION),
                 write_seg_nrrd(label_volume, names, case_dir / "segmentation.seg.nrrd"),
                 write_color_table(names, case_dir / "labels.ctbl")]
        if options.preview:
            files.append(write_preview_png(volume, label_volume, case_dir / "preview.png", names))
        return files

    with ThreadPoolExecutor(max_workers=1) as pool:
        files = pool.submit(compressed)
        written = []
        if volume.meta.get("format") == "dicom":
            try:
                written.append(write_dicom_seg(label_volume, case.image, names, case_dir / "segmentation.dcm",
                                               model_id=bundle.model_id or "liverseg"))
            except (LiversegError, ValueError, AttributeError, KeyError) as exc:  # highdicom's refusals included
                log.warning("%s: segmentation.dcm not written (%s: %s); the other outputs are complete",
                            case.case_id, type(exc).__name__, " ".join(str(exc).split())[:300])
        report = case_report(volume, label_volume, names, runtime_s=runtime_s, model_id=bundle.model_id,
                             input_path=case.image, extra={"backend": bundle.backend, "case_id": case.case_id,
                                                           "warnings": list(warnings or []),
                                                           **({"model_details": details} if details else {})},
                             burden=burden)
        written.append(write_report(report, case_dir / "report.json"))
        if burden is not None:
            written.append(write_lesions_csv(burden, case_dir / LESIONS_CSV))
        return files.result() + written


def _infer_overrides(cfg, overrides: Sequence[str]):
    for item in overrides:
        if not item.strip().startswith("infer."):
            raise InputError(f"--set {item!r}: only infer.* settings can be changed at prediction time "
                             "(the rest is fixed by the trained model)")
    try:
        return apply_overrides(cfg, list(overrides))
    except ConfigError as exc:
        raise InputError(f"--set: {exc}") from None


def _label_summary(labels: np.ndarray, volume: Volume, names: Sequence[str]) -> str:
    counts = label_voxel_counts(labels, len(names))
    return ", ".join(f"{name} {counts[i] * volume.voxel_volume_ml:.1f} mL" for i, name in enumerate(names) if i > 0)


__all__ = ["PredictOptions", "BatchResult", "cases_from_inputs", "cases_from_manifest", "predict_batch",
           "predict_cases", "predict_case", "predict_ct_case"]
