"""One CT case, the CT modality's prediction of an input: read (proven whole), segment, write the
outputs on the input's own grid. Batch prediction (``inference.batch``) runs these three steps for every
case, pipelined across cases (``inference.cohort``), and assembles each case folder atomically.

``options`` is batch prediction's ``PredictOptions`` (series, allow_gaps, threads, memory_gb,
save_probabilities, preview are read here).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..datasets.manifest import Case
from ..engine.loaded import Ensemble, TrainedModel, predict
from ..errors import InputError, LiversegError
from ..io import read_volume, write_label_map
from ..io.dicom_seg import write_dicom_seg
from ..io.integrity import check_ct_values
from ..io.outputs import (label_voxel_counts, probability_map_description, write_color_table, write_probability_map,
                          write_seg_nrrd)
from ..io.volume import Volume
from ..reports.case_report import case_report, write_lesions_csv, write_preview_png, write_report
from ..reports.tumour_burden import burden_summary, tumour_burden

log = logging.getLogger(__name__)

SEGMENTATION = "segmentation.nii.gz"
PROBABILITIES = "probabilities.nii.gz"  # --save-probabilities: io.outputs.write_probability_map
LESIONS_CSV = "lesions.csv"


def read_ct_case(case: Case, options: Any) -> tuple[Volume, float]:
    """(volume, seconds) of a CT case to segment, when its turn comes (read ahead in a pipelined batch).
    The reader proves the data whole; a volume of one value (blank export) is refused here for every
    format; any reader's error is one unreadable input (``InputError``)."""
    start = time.perf_counter()
    try:
        volume = read_volume(case.image, series=options.series, allow_gaps=options.allow_gaps)
    except (LiversegError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a reader's own exception types
        message = (str(exc).splitlines() or [""])[0][:200]
        raise InputError(f"{case.image}: cannot be read ({type(exc).__name__}: {message})") from None
    check_ct_values(case.image, volume.array)
    return volume, time.perf_counter() - start


def segment_ct_case(bundle: TrainedModel, read: tuple[Volume, float], options: Any, progress: bool = False) -> dict:
    """Segment one CT case from ``read_ct_case``'s (volume, seconds); its runtime counts the reading."""
    volume, read_s = read
    start = time.perf_counter() - read_s
    labels, probabilities, warnings, details = predict(
        bundle, volume, threads=options.threads, progress=progress, memory_gb=options.memory_gb,
        probabilities=options.save_probabilities)
    warnings = [*volume.meta.get("warnings", []), *warnings]  # the reader's repairs (e.g. qform/sform) first
    return {"volume": volume, "labels": labels, "warnings": warnings, "details": details,
            "runtime_s": time.perf_counter() - start, "probabilities": probabilities}


def write_ct_case(bundle: TrainedModel, case: Case, case_dir: Path, options: Any,
                  segmented: dict) -> list[Path]:
    """Write ``segment_ct_case``'s result into ``case_dir``; returns the files written."""
    cfg = bundle.cfg
    volume, labels, warnings, details = (segmented[key] for key in ("volume", "labels", "warnings", "details"))
    runtime_s = segmented["runtime_s"]
    for warning in warnings:
        log.warning("%s: warning: %s", case.case_id, warning)
    burden = tumour_burden(labels, volume.affine_ras, cfg.data.labels, volume.array)
    written = write_case_outputs(bundle, case, volume, labels, case_dir, runtime_s, options,
                                 warnings=warnings, details=details, burden=burden,
                                 probabilities=segmented.get("probabilities"))
    log.info("%s: %s in %.1f s", case.case_id, label_summary(labels, volume, cfg.data.labels), runtime_s)
    if burden is not None:
        log.info("%s: %s", case.case_id, burden_summary(burden))
    return written


def write_case_outputs(bundle: TrainedModel, case: Case, volume: Volume, labels: np.ndarray, case_dir: Path,
                       runtime_s: float, options: Any, warnings: list[str] | None = None,
                       details: dict | None = None, burden: dict | None = None,
                       probabilities: np.ndarray | None = None) -> list[Path]:
    """Every output of a case: the NIfTI label map and the Slicer-ready files beside it (``io.outputs``,
    ``report``).

    ``segmentation.nii.gz``, ``segmentation.seg.nrrd`` + ``labels.ctbl`` (names and colours for 3D
    Slicer), ``segmentation.dcm`` (DICOM SEG, DICOM input only), ``report.json`` (volumes, HU
    statistics, geometry, runtime, model, warnings; the tumour burden when the labels have a liver and
    a lesion label), ``lesions.csv`` (the lesion table, same condition) and ``preview.png`` (unless
    ``options.preview`` is off). ``burden``: ``tumour_burden.tumour_burden``'s result when the caller
    has it already (computed here otherwise). ``probabilities`` (uint8 (X, Y, Z, K) on the volume's
    grid, ``volume.predict_volume_probabilities``): written as ``probabilities.nii.gz`` and described in
    the report. The compressed files are written in a second thread while
    this one writes the DICOM SEG and the report (zlib releases the GIL), so on two cores the slowest
    of them sets the time.
    """
    names = list(bundle.cfg.data.labels)
    label_volume = volume.with_array(labels)
    if burden is None:
        burden = tumour_burden(labels, volume.affine_ras, names, volume.array)

    def compressed() -> list[Path]:
        files = [write_label_map(labels, volume, case_dir / SEGMENTATION),
                 write_seg_nrrd(labels, volume, case_dir / "segmentation.seg.nrrd", names),
                 write_color_table(names, case_dir / "labels.ctbl")]
        if options.preview:
            files.append(write_preview_png(volume, label_volume, case_dir / "preview.png", names))
        return files

    with ThreadPoolExecutor(max_workers=1) as pool:
        files = pool.submit(compressed)
        written = []
        if volume.dicom is not None:  # read from a DICOM series: its SEG can reference the slices
            try:
                written.append(write_dicom_seg(labels, volume, case_dir / "segmentation.dcm", names,
                                               model_id=bundle.model_id or "liverseg"))
            except (LiversegError, ValueError, AttributeError, KeyError) as exc:  # highdicom's refusals included
                log.warning("%s: segmentation.dcm not written (%s: %s); the other outputs are complete",
                            case.case_id, type(exc).__name__, " ".join(str(exc).split())[:300])
        extra = {"backend": bundle.backend, "case_id": case.case_id, "warnings": list(warnings or []),
                 **({"model_details": details} if details else {})}
        if isinstance(bundle.model, Ensemble):
            extra["ensemble_members"] = list(bundle.meta.get("members", []))
        if probabilities is not None:
            written.append(write_probability_map(probabilities, volume, case_dir / PROBABILITIES, names))
            extra["probabilities"] = {"file": PROBABILITIES, **probability_map_description(names)}
        report = case_report(volume, label_volume, names, runtime_s=runtime_s, model_id=bundle.model_id,
                             input_path=case.image, extra=extra, burden=burden)
        written.append(write_report(report, case_dir / "report.json"))
        if burden is not None:
            written.append(write_lesions_csv(burden, case_dir / LESIONS_CSV))
        return files.result() + written


def label_summary(labels: np.ndarray, volume: Volume, names: Sequence[str]) -> str:
    counts = label_voxel_counts(labels, len(names))
    return ", ".join(f"{name} {counts[i] * volume.voxel_volume_ml:.1f} mL" for i, name in enumerate(names) if i > 0)


__all__ = ["SEGMENTATION", "PROBABILITIES", "LESIONS_CSV", "read_ct_case", "segment_ct_case", "write_ct_case",
           "write_case_outputs", "label_summary"]
