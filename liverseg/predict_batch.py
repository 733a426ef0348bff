"""Batch prediction: many inputs, a folder of inputs or a manifest split -> ``OUT/<case>/``.

One generic loop over cases calls one per-case function. Every case folder is assembled under a
hidden temporary name inside ``OUT`` and renamed into place only when complete, so a killed run
leaves no partial case folder (only a ``.<case>.*.partial`` folder, removed on the way out when
Python still can, and by the next run in ``OUT`` once its process is gone: ``clean_stale_partials``).
A case that fails (an unreadable input included) is reported in one line and skipped; the others go
on, and ``OUT/batch_summary.csv`` lists every case at the end.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import shared_mode, write_text_atomic
from .cohort import CaseSteps, live_claims, pipeline_enabled, run_cases
from .config import apply_overrides
from .errors import ConfigError, InputError, LiversegError
from .infer import Ensemble, TrainedModel, load_ensemble, load_model, predict_volume, predict_volume_probabilities
from .io import case_name, is_image_file, read_volume, write_label_map
from .io.integrity import check_ct_values
from .io.dicom import holds_dicom
from .io.outputs import label_voxel_counts
from .io.photos import is_photo_file
from .io.volume import Volume
from .manifest import Case, load_manifest
from .tumour_burden import burden_summary, tumour_burden

log = logging.getLogger(__name__)

SEGMENTATION = "segmentation.nii.gz"
PROBABILITIES = "probabilities.nii.gz"  # --save-probabilities: io.outputs.write_probability_map
LESIONS_CSV = "lesions.csv"
BATCH_SUMMARY = "batch_summary.csv"
OWNER_FILE = ".liverseg-owner.json"  # inside a .partial/.old folder: the process that made it
STALE_AGE_S = 48 * 3600  # debris of another host (or without an owner record) untouched this long is removed


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
    pipeline: bool = True  # read the next case and write the last while the network runs (liverseg.cohort)
    save_probabilities: bool = False  # also write PROBABILITIES (uint8 softmax per label on the input grid)


@dataclass
class BatchResult:
    case_dirs: dict[str, Path] = field(default_factory=dict)
    segmentations: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)  # the rows of batch_summary.csv, in case order


# ----------------------------------------------------------------------------- which cases

def cases_from_inputs(inputs: Sequence[str | Path]) -> list[Case]:
    """One case per input; a folder holding image files is a folder of inputs.

    Photographs (PNG/JPEG/TIFF/GIF/BMP, for photo models) are one case each, named by their stem; a
    folder holding photographs and no volumes is a folder of them.

    A folder with NIfTI/NRRD/MHA files directly in it gives one case per file. Any other folder is one
    DICOM input (searched recursively, as ``read_volume`` does), so a nested PACS export keeps working;
    give several series folders as several inputs (``series_root/*``).

    A case is named after its file (without the image suffix) or its DICOM folder. When several inputs
    would get the same name (``s0001/ct.nii.gz``, ``s0002/ct.nii.gz``), each of them is named after the
    folder holding it instead (``s0001``, ``s0002``; ``a_s0001`` when those clash too): unique, and the
    same on every run with the same inputs.
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
            # a DICOM export with a viewer thumbnail (PACS CDs) is DICOM, not a folder of photographs
            if photos and not any(is_image_file(c) for c in children) and not holds_dicom(path):
                cases += [Case(c.stem, c, None) for c in photos]
                continue
            images = [c for c in children if is_image_file(c)]
            if images:
                cases += [Case(case_name(c), c, None) for c in images]
                continue
        cases.append(Case(case_name(path), path, None))
    return _unique_case_names(cases)


def _unique_case_names(cases: list[Case]) -> list[Case]:
    """Cases sharing a name are named after the folder holding their input (more of its path when the
    folders' names clash too); a clash that no folder resolves (one folder, or one file twice) is left
    for ``predict_cases`` to refuse."""
    names = [case.case_id for case in cases]
    result = list(cases)
    for name in sorted({n for n in names if names.count(n) > 1}):
        group = [i for i, n in enumerate(names) if n == name]
        parents = [Path(os.path.abspath(cases[i].image)).parent.parts[1:] for i in group]
        for depth in range(1, max(len(parts) for parts in parents) + 1):
            candidates = ["_".join(parts[-depth:]) for parts in parents]
            if all(candidates) and len(set(candidates)) == len(candidates):
                break
        else:
            continue
        for i, new_name in zip(group, candidates):
            result[i] = replace(cases[i], case_id=new_name)
        log.info("%d inputs are named %s: their cases are named after their folders (%s%s)", len(group), name,
                 ", ".join(candidates[:3]), ", ..." if len(candidates) > 3 else "")
    return result


def cases_from_manifest(manifest: str | Path, root: str | Path | None, split: str) -> list[Case]:
    return load_manifest(manifest, root).split(split)


# ----------------------------------------------------------------------------- the loop

def predict_batch(inputs: Sequence[str | Path], out_dir: str | Path,
                  model: str | Path | Sequence[str | Path] | None,
                  options: PredictOptions = PredictOptions()) -> BatchResult:
    return predict_cases(cases_from_inputs(inputs), out_dir, model, options)


def predict_cases(cases: Sequence[Case], out_dir: str | Path, model: str | Path | Sequence[str | Path] | None,
                  options: PredictOptions = PredictOptions()) -> BatchResult:
    """Predict every case into ``out_dir/<case id>/``; failures are reported, skipped and returned.

    ``model``: one model, or a list of them: several form an ensemble (``infer.load_ensemble``: their
    input-grid probabilities are averaged before the argmax). ``options.save_probabilities`` writes
    ``probabilities.nii.gz`` beside each label map (``io.outputs.write_probability_map``).

    Checked before anything is predicted (an error here writes nothing): the options, the model,
    clashing case names, case folders that already exist (kept unless ``overwrite``;
    ``skip_existing`` leaves them and predicts the rest) and, when there is only one case, the input
    itself (read once, and segmented as read). In a batch each input is read, and so checked, when its
    turn comes (the next one while the current one is predicted, unless pipelining is off): an
    unreadable input, or one that does not exist, is one failed case, reported in one line and skipped. Stale ``.partial`` folders of dead
    runs are removed first (``clean_stale_partials``); ``out_dir/batch_summary.csv`` (case, status
    ok/failed/skipped, seconds, volume per label in mL, warnings, error) is written at the end.
    """
    cases = list(cases)
    if not cases:
        raise InputError("no input given: pass DICOM folders or NIfTI/NRRD/MHA files, a folder of them, "
                         "or --manifest M.json --split NAME")
    _check_memory_gb(options.memory_gb)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir}: exists and is not a folder; give a folder for the outputs")
    names = [case.case_id for case in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"several inputs share the case name(s) {', '.join(duplicates)}; their outputs "
                         "would overwrite each other: predict them into separate -o folders")
    models = [model] if model is None or isinstance(model, (str, os.PathLike)) else list(model)
    if len(models) > 1:
        bundle = load_ensemble(models, options.device, options.threads, options.backend)
        log.info("ensemble of %d models: %s", len(models), "; ".join(bundle.meta["members"]))
    else:
        bundle = load_model(models[0] if models else None, options.device, options.threads, options.backend)
    if options.save_probabilities and getattr(bundle.model, "segment_volume", None) is not None and \
            getattr(bundle.model, "segment_volume_with_probabilities", None) is None:
        raise InputError(f"--save-probabilities: the model {getattr(bundle.model, 'name', '')} gives labels "
                         "only; use a run folder or an exported model")
    if options.overrides and getattr(bundle.model, "segment_volume", None) is not None:
        raise InputError(f"--set {options.overrides[0]}: a built-in model has no run config to override")
    if options.overrides:
        bundle = replace(bundle, cfg=_infer_overrides(bundle.cfg, options.overrides))
        if isinstance(bundle.model, Ensemble):
            bundle.model.members = [replace(m, cfg=_infer_overrides(m.cfg, options.overrides))
                                    for m in bundle.model.members]
    check_headers = bundle.cfg.data.modality == "ct"
    # a batch of one: read (and so proven whole) before anything is written, its error the run's; the
    # volume is then segmented as read, not read a second time
    first_read = (cases[0].case_id, _read_case(cases[0], options)) if check_headers and len(cases) == 1 else None
    result = BatchResult()
    existing = [case.case_id for case in cases if (out_dir / case.case_id).exists()]
    if existing and not options.skip_existing and not options.overwrite and live_claims(out_dir):
        # other workers are filling this folder now (a job array started at slightly different times):
        # the finished cases are theirs, not outputs of an earlier run to protect
        log.info("other workers are predicting into %s: their %d finished case(s) are left as they are",
                 out_dir, len(existing))
        options = replace(options, skip_existing=True)
    if existing and options.skip_existing:
        result.skipped = existing
        cases = [case for case in cases if case.case_id not in existing]
        log.info("skipping %d case(s) with existing outputs: %s", len(existing), ", ".join(existing[:10]))
    elif existing and not options.overwrite:
        shown = ", ".join(str(out_dir / name) for name in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise InputError(f"{shown}{more}: output folder(s) already exist; pass --overwrite to replace them, "
                         "--skip-existing to keep them and predict the rest, or choose another -o")
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out_dir)
    label_names = list(bundle.cfg.data.labels)
    rows = {name: _summary_row(name, "skipped", out_dir / name, label_names) for name in result.skipped}
    single = len(cases) == 1
    pipelined = check_headers and not single and pipeline_enabled(options.pipeline)

    def whole(case: Case) -> Path:  # one case at a time
        if not check_headers:  # photographs: predict_case reads and predicts them
            return predict_case(bundle, case, out_dir, options, progress=options.progress and single)
        read = first_read[1] if first_read and first_read[0] == case.case_id else _read_case(case, options)
        segmented = segment_ct_case(bundle, case, options, progress=options.progress and single, volume=read[0],
                                    read_s=read[1])
        return predict_case(bundle, case, out_dir, options, segmented=segmented)

    def done(case: Case, case_dir: Path, seconds: float) -> None:
        result.case_dirs[case.case_id] = case_dir
        if (case_dir / SEGMENTATION).is_file():
            result.segmentations.append(case_dir / SEGMENTATION)
        rows[case.case_id] = _summary_row(case.case_id, "ok", case_dir, label_names, seconds)

    def failed(case: Case, exc: BaseException, seconds: float) -> None:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        result.failed.append((case.case_id, reason))
        log.error("%s: failed, skipped (%s: %s)", case.case_id, type(exc).__name__, reason[:300])
        rows[case.case_id] = _summary_row(case.case_id, "failed", None, label_names, seconds,
                                          f"{type(exc).__name__}: {reason}")

    def skipped(case: Case) -> None:  # done, or being done, by another worker on this -o (liverseg.cohort)
        result.skipped.append(case.case_id)
        rows[case.case_id] = _summary_row(case.case_id, "skipped", out_dir / case.case_id, label_names)

    steps = CaseSteps(read=lambda case: _read_case(case, options),
                      compute=lambda case, read: segment_ct_case(bundle, case, options, volume=read[0], read_s=read[1]),
                      write=lambda case, segmented: predict_case(bundle, case, out_dir, options, segmented=segmented),
                      whole=whole)
    run_cases(cases, out_dir, steps, on_done=done, on_fail=failed, on_skip=skipped, overwrite=options.overwrite,
              existing=existing, pipeline=pipelined, progress=options.progress and not single)
    order = [name for name in names if name in rows]
    result.summary = [rows[name] for name in order]
    try:
        write_batch_summary(result.summary, out_dir / BATCH_SUMMARY, label_names)
    except OSError as exc:  # the cases are written; a summary that cannot be is a warning, not a failure
        log.warning("%s not written (%s)", out_dir / BATCH_SUMMARY, exc)
    return result


def predict_case(bundle: TrainedModel, case: Case, out_dir: Path, options: PredictOptions,
                 progress: bool = False, segmented: dict | None = None) -> Path:
    """Predict one case into ``out_dir/<case id>/``, assembled under a temporary name and renamed.
    ``segmented``: ``segment_ct_case``'s result when the case is segmented already (only written here)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / case.case_id
    work = _owned_temp_dir(out_dir, case.case_id, ".partial")
    try:
        if bundle.cfg.data.modality == "photo":
            from .photos import predict_photo_case

            predict_photo_case(bundle, case, work)
        elif segmented is not None:
            write_ct_case(bundle, case, work, options, segmented)
        else:
            predict_ct_case(bundle, case, work, options, progress)
        (work / OWNER_FILE).unlink()
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
        old = _owned_temp_dir(final.parent, final.name, ".old")
        os.rename(final, old / final.name)
    os.rename(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def predict_ct_case(bundle: TrainedModel, case: Case, case_dir: Path, options: PredictOptions,
                    progress: bool = False) -> list[Path]:
    """Read, segment and write one CT case into ``case_dir``; returns the files written."""
    return write_ct_case(bundle, case, case_dir, options, segment_ct_case(bundle, case, options, progress))


def segment_ct_case(bundle: TrainedModel, case: Case, options: PredictOptions, progress: bool = False,
                    volume: Volume | None = None, read_s: float = 0.0) -> dict:
    """Read (unless ``volume`` is given, read in ``read_s`` seconds) and segment one CT case."""
    cfg = bundle.cfg
    start = time.perf_counter() - read_s
    if volume is None:
        volume = read_volume(case.image, series=options.series, allow_gaps=options.allow_gaps)
    segment_volume = getattr(bundle.model, "segment_volume", None)  # built-in models bring their own road
    warnings: list[str] = []
    details: dict = {}
    probabilities = None
    if segment_volume is not None and options.save_probabilities:
        labels, probabilities, warnings, details = bundle.model.segment_volume_with_probabilities(
            volume, threads=options.threads)
    elif segment_volume is not None:
        labels, warnings, details = segment_volume(volume, threads=options.threads)
    elif isinstance(bundle.model, Ensemble) or options.save_probabilities:
        members = bundle.model.members if isinstance(bundle.model, Ensemble) else [bundle]
        labels, probabilities = predict_volume_probabilities(members, volume, progress=progress,
                                                             memory_gb=options.memory_gb,
                                                             keep_probabilities=options.save_probabilities)
    else:
        labels = predict_volume(bundle.model, volume, cfg, bundle.device, progress=progress,
                                memory_gb=options.memory_gb)
    warnings = [*volume.meta.get("warnings", []), *warnings]  # the reader's repairs (e.g. qform/sform) first
    return {"volume": volume, "labels": labels, "warnings": warnings, "details": details,
            "runtime_s": time.perf_counter() - start, "probabilities": probabilities}


def write_ct_case(bundle: TrainedModel, case: Case, case_dir: Path, options: PredictOptions,
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
    log.info("%s: %s in %.1f s", case.case_id, _label_summary(labels, volume, cfg.data.labels), runtime_s)
    if burden is not None:
        log.info("%s: %s", case.case_id, burden_summary(burden))
    return written


def write_case_outputs(bundle: TrainedModel, case: Case, volume: Volume, labels: np.ndarray, case_dir: Path,
                       runtime_s: float, options: PredictOptions, warnings: list[str] | None = None,
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
    grid, ``infer.predict_volume_probabilities``): written as ``probabilities.nii.gz`` and described in
    the report. The compressed files are written in a second thread while
    this one writes the DICOM SEG and the report (zlib releases the GIL), so on two cores the slowest
    of them sets the time.
    """
    from .io.dicom_seg import write_dicom_seg
    from .io.outputs import probability_map_description, write_color_table, write_probability_map, write_seg_nrrd
    from .report import case_report, write_lesions_csv, write_preview_png, write_report

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
        if volume.meta.get("format") == "dicom":
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


# ----------------------------------------------------------------------------- checks, summary

def _check_memory_gb(memory_gb: float | None) -> None:
    if memory_gb is None:
        return
    try:
        fine = math.isfinite(memory_gb) and memory_gb > 0
    except TypeError:
        fine = False
    if not fine:
        raise InputError(f"--memory-gb {memory_gb}: give a positive number of GB (e.g. 8), or leave it out "
                         "for the default budget")


def _read_case(case: Case, options: PredictOptions) -> tuple[Volume, float]:
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


def _summary_row(case_id: str, status: str, case_dir: Path | None, label_names: Sequence[str],
                 seconds: float | None = None, error: str = "") -> dict:
    """One row of batch_summary.csv; volumes and warnings come from the case's report.json."""
    row: dict = {"case": case_id, "status": status, "seconds": "" if seconds is None else f"{seconds:.1f}"}
    report: dict = {}
    if case_dir is not None and (case_dir / "report.json").is_file():
        try:
            report = json.loads((case_dir / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {}
    labels = report.get("labels") or {}
    for name in label_names[1:]:
        volume = (labels.get(name) or {}).get("volume_ml")
        row[f"{name}_ml"] = "" if volume is None else f"{volume:.2f}"
    warnings = (report.get("extra") or {}).get("warnings") or []
    row["warnings"] = " | ".join(" ".join(str(w).split()) for w in warnings)
    row["error"] = error
    return row


def write_batch_summary(rows: Sequence[dict], path: str | Path, label_names: Sequence[str]) -> Path:
    """``batch_summary.csv``: case, status (ok/failed/skipped), seconds, ``<label>_ml`` per foreground
    label, warnings (`` | ``-separated), error; written atomically."""
    columns = ["case", "status", "seconds", *[f"{name}_ml" for name in label_names[1:]], "warnings", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(buffer.getvalue(), path)


# ----------------------------------------------------------------------------- debris of killed runs

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _owner_record() -> dict:
    pid = os.getpid()
    stat = _process_start(pid)
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "start_ticks": stat[1] if stat else None, "created": time.time()}


def _owned_temp_dir(parent: Path, name: str, suffix: str) -> Path:
    """A new hidden ``.<name>.XXXX<suffix>`` folder in ``parent`` with the umask's permissions (not
    mkdtemp's 0700) and an owner record, so a later run can tell when its process is gone."""
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=suffix, dir=parent))
    try:
        os.chmod(folder, shared_mode(0o777))
        (folder / OWNER_FILE).write_text(json.dumps(_owner_record()), encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _owner_gone(owner: dict) -> bool:
    """Whether the process recorded in ``owner`` (made on this host) no longer runs."""
    boot = _boot_id()
    if owner.get("boot_id") and boot and owner["boot_id"] != boot:
        return True  # rebooted since
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return False
    stat = _process_start(pid)
    if stat is None:
        return False
    state, start = stat
    return state in ("Z", "X") or (owner.get("start_ticks") is not None and start != owner["start_ticks"])


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for entry in os.scandir(folder):
        try:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            pass
    return newest


def _stale_reason(folder: Path, now: float) -> str | None:
    """Why ``folder`` (a ``.partial``/``.old`` folder) is debris of a dead run, or None to keep it."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        if not isinstance(owner, dict):
            owner = None
    except (OSError, ValueError):
        owner = None
    try:
        idle_h = (now - _newest_mtime(folder)) / 3600
    except OSError:
        return None  # removed meanwhile, or unreadable: not ours to judge
    old_enough = idle_h * 3600 > STALE_AGE_S
    if owner is None:  # an older liverseg's, or one whose owner record is being written right now
        return f"no owner record, untouched for {idle_h:.0f} h" if old_enough else None
    if owner.get("host") != socket.gethostname():
        return f"made on {owner.get('host')}, untouched for {idle_h:.0f} h" if old_enough else None
    if _owner_gone(owner):
        return f"its process {owner.get('pid')} is gone"
    return None


def _remove_debris(folder: Path) -> None:
    """Remove ``folder``, its owner record last: a cleaner killed halfway leaves it stale, not anonymous."""
    for entry in list(os.scandir(folder)):
        if entry.name == OWNER_FILE:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / OWNER_FILE)
    os.rmdir(folder)


def clean_stale_partials(out_dir: str | Path) -> list[Path]:
    """Remove the ``.<case>.*.partial`` (and ``.old``) folders that killed runs left in ``out_dir``.

    Removed: those whose owner process (recorded in the folder) is gone on this host (a reused pid is
    told apart by its start time; a reboot by the boot id). Kept: those of running processes, of
    other hosts, and without an owner record (an older liverseg's, or one being made this instant),
    unless untouched for ``STALE_AGE_S`` (48 h). A temporary ``.batch_summary.csv.*`` file an hour
    old goes too. Returns what was removed.
    """
    out_dir = Path(out_dir)
    removed: list[Path] = []
    if not out_dir.is_dir():
        return removed
    now = time.time()
    for entry in sorted(out_dir.iterdir()):
        if entry.name.startswith(f".{BATCH_SUMMARY}.") and entry.is_file():  # atomic_path's, of a killed run
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > 3600:  # written in milliseconds: an hour old is debris
                    entry.unlink()
                    removed.append(entry)
            continue
        if not (entry.name.startswith(".") and entry.name.endswith((".partial", ".old"))):
            continue
        if entry.is_symlink() or not entry.is_dir():
            continue
        reason = _stale_reason(entry, now)
        if reason is None:
            continue
        try:
            _remove_debris(entry)
        except FileNotFoundError:  # another run removed it first
            continue
        except OSError as exc:
            log.warning("%s: stale (%s) but not removed: %s", entry, reason, exc)
            continue
        log.info("removed %s, left by a killed run (%s)", entry.name, reason)
        removed.append(entry)
    return removed


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
           "predict_cases", "predict_case", "predict_ct_case", "clean_stale_partials", "write_batch_summary",
           "BATCH_SUMMARY", "PROBABILITIES"]
