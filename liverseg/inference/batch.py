"""Batch prediction: many inputs, a folder of inputs or a manifest split -> ``OUT/<case>/``.

One generic loop over cases calls one per-case function. Every case folder is assembled under a
hidden temporary name inside ``OUT`` and renamed into place only when complete, so a killed run
leaves no partial case folder (only a ``.<case>.*.partial`` folder, removed on the way out when
Python still can, and by the next run in ``OUT`` once its process is gone: ``clean_stale_partials``).
A case that fails (an unreadable input included) is reported in one line and skipped; the others go
on, and ``OUT/batch_summary.csv`` lists every case at the end.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence


from .claims import live_claims
from .cohort import CaseSteps, pipeline_enabled, run_cases
from ..config import apply_overrides
from ..errors import ConfigError, InputError
from ..datasets.manifest import Case
from .case_folders import OWNER_FILE, clean_stale_partials, commit_case_folder, owned_temp_dir
from .cases import cases_from_inputs
from ..engine.loaded import Ensemble, TrainedModel
from .sources import load_ensemble, load_model
from ..modalities import modality_for
from ..modalities.ct_case import PROBABILITIES
from .summary import BATCH_SUMMARY, summary_row, write_batch_summary

log = logging.getLogger(__name__)


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
    backend: str = "auto"  # auto | torch | onnx: see sources.load_model
    pipeline: bool = True  # read the next case and write the last while the network runs (liverseg.inference.cohort)
    save_probabilities: bool = False  # also write PROBABILITIES (uint8 softmax per label on the input grid)


@dataclass
class BatchResult:
    case_dirs: dict[str, Path] = field(default_factory=dict)
    segmentations: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)  # the rows of batch_summary.csv, in case order


# ----------------------------------------------------------------------------- the loop

def predict_batch(inputs: Sequence[str | Path], out_dir: str | Path,
                  model: str | Path | Sequence[str | Path] | None,
                  options: PredictOptions = PredictOptions()) -> BatchResult:
    return predict_cases(cases_from_inputs(inputs), out_dir, model, options)


def predict_cases(cases: Sequence[Case], out_dir: str | Path, model: str | Path | Sequence[str | Path] | None,
                  options: PredictOptions = PredictOptions()) -> BatchResult:
    """Predict every case into ``out_dir/<case id>/``; failures are reported, skipped and returned.

    ``model``: one model, or a list of them: several form an ensemble (``sources.load_ensemble``: their
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
    modality = modality_for(bundle.cfg)
    # a batch of one: read (and so proven whole) before anything is written, its error the run's; the
    # input is then segmented as read, not read a second time
    first_read = (cases[0].case_id, modality.read_input(bundle, cases[0], options)) if len(cases) == 1 else None
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
    rows = {name: summary_row(name, "skipped", out_dir / name, label_names) for name in result.skipped}
    single = len(cases) == 1
    # volumes are large: reading the next and writing the last while the network runs pays; photographs not
    pipelined = modality.traits.volume_inputs and not single and pipeline_enabled(options.pipeline)

    def read(case: Case):
        if first_read and first_read[0] == case.case_id:
            return first_read[1]
        return modality.read_input(bundle, case, options)

    def whole(case: Case) -> Path:  # one case at a time
        segmented = modality.segment(bundle, case, read(case), options, progress=options.progress and single)
        return predict_case(bundle, case, out_dir, options, segmented)

    def done(case: Case, case_dir: Path, seconds: float) -> None:
        result.case_dirs[case.case_id] = case_dir
        if modality.traits.label_map and (case_dir / modality.traits.label_map).is_file():
            result.segmentations.append(case_dir / modality.traits.label_map)
        rows[case.case_id] = summary_row(case.case_id, "ok", case_dir, label_names, seconds)

    def failed(case: Case, exc: BaseException, seconds: float) -> None:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        result.failed.append((case.case_id, reason))
        log.error("%s: failed, skipped (%s: %s)", case.case_id, type(exc).__name__, reason[:300])
        rows[case.case_id] = summary_row(case.case_id, "failed", None, label_names, seconds,
                                          f"{type(exc).__name__}: {reason}")

    def skipped(case: Case) -> None:  # done, or being done, by another worker on this -o (liverseg.inference.cohort)
        result.skipped.append(case.case_id)
        rows[case.case_id] = summary_row(case.case_id, "skipped", out_dir / case.case_id, label_names)

    steps = CaseSteps(read=read,
                      compute=lambda case, data: modality.segment(bundle, case, data, options),
                      write=lambda case, segmented: predict_case(bundle, case, out_dir, options, segmented),
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


def predict_files(inputs: Sequence[str | Path], out_dir: str | Path, run_dir: str | Path,
                  device: str | None = None, threads: int | None = None,
                  progress: bool = True) -> list[Path]:
    """Predict each input into ``OUT/<case>/``; returns the ``segmentation.nii.gz`` paths.

    The library form of ``liverseg predict`` for callers that want all or nothing: raises InputError
    naming the failed cases when any failed (the others are written). See ``predict_batch``.
    """
    result = predict_batch(inputs, out_dir, run_dir, PredictOptions(device=device, threads=threads,
                                                                     progress=progress))
    if result.failed:
        raise InputError("; ".join(f"{case}: {reason}" for case, reason in result.failed))
    return result.segmentations


def predict_case(bundle: TrainedModel, case: Case, out_dir: Path, options: PredictOptions, segmented: Any) -> Path:
    """Write one segmented case (``Modality.segment``'s result) into ``out_dir/<case id>/``, assembled under
    a temporary name by its modality and renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    modality = modality_for(bundle.cfg)
    final = out_dir / case.case_id
    work = owned_temp_dir(out_dir, case.case_id, ".partial")
    try:
        modality.write_outputs(bundle, case, segmented, work, options)
        (work / OWNER_FILE).unlink()
        commit_case_folder(work, final, options.overwrite)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


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


def _infer_overrides(cfg, overrides: Sequence[str]):
    for item in overrides:
        if not item.strip().startswith("infer."):
            raise InputError(f"--set {item!r}: only infer.* settings can be changed at prediction time "
                             "(the rest is fixed by the trained model)")
    try:
        return apply_overrides(cfg, list(overrides))
    except ConfigError as exc:
        raise InputError(f"--set: {exc}") from None


__all__ = ["PredictOptions", "BatchResult", "predict_batch", "predict_cases", "predict_files", "predict_case",
           "PROBABILITIES"]
