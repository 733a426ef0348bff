"""One ``liverseg predict`` job: which cases (input paths or a manifest split, a job array's ``--part``
share), and its run as one process or as one ``torchrun`` rank among many (each rank a share, rank 0
summing up after a barrier). The command line only prints what it returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from ..datasets.manifest import Case
from ..errors import InputError, LiversegError
from .batch import BatchResult, PredictOptions, predict_cases
from .cases import cases_from_inputs, cases_from_manifest
from .cohort import parse_part, rank_summary, select_part, torchrun_context


@dataclass
class PredictJob:
    """What a job did: its cases, the batch result, lines for stderr and the exit code (2 when a case failed)."""
    cases: list[Case]
    result: BatchResult = field(default_factory=BatchResult)
    notes: list[str] = field(default_factory=list)
    exit_code: int = 0


def job_cases(inputs: Sequence[str | Path], manifest: str | Path | None = None, root: str | Path | None = None,
              split: str | None = None) -> list[Case]:
    """The cases of a job: input paths (files, DICOM folders, folders of them), or a manifest's split."""
    if manifest is not None and inputs:
        raise InputError("give either input paths or --manifest, not both")
    if manifest is None and (root is not None or split is not None):
        raise InputError("--root and --split go with --manifest M.json")
    return cases_from_manifest(manifest, root, split or "test") if manifest is not None else cases_from_inputs(inputs)


def run_predict_job(inputs: Sequence[str | Path], out_dir: str | Path, model, options: PredictOptions, *,
                    manifest: str | Path | None = None, root: str | Path | None = None, split: str | None = None,
                    part: str | None = None) -> PredictJob:
    """Predict a job's cases into ``out_dir``. ``part`` 'K/N': only share K of N (sorted case ids, case i
    to share i % N + 1), so the jobs of an array divide the cases without talking to each other. Under
    ``torchrun`` each rank predicts its share of that on its own device (``options.device``)."""
    share = parse_part(part) if part is not None else None
    cases = job_cases(inputs, manifest, root, split)
    if share is not None:
        total, cases = len(cases), select_part(cases, *share)
        if not cases and total:
            return PredictJob(cases, notes=[f"liverseg predict: --part {part}: no case in this share ({total} "
                                            "case(s) in all)"])
    ctx, device = torchrun_context(options.device)  # torchrun: each rank its share, one GPU each
    if ctx is None:
        result = predict_cases(cases, out_dir, model, options)
        notes = [f"liverseg predict: {len(result.failed)} of {len(cases)} case(s) failed: "
                 f"{', '.join(case for case, _ in result.failed)}"] if result.failed else []
        return PredictJob(cases, result, notes, 2 if result.failed else 0)
    return _rank_job(ctx, select_part(cases, ctx.rank + 1, ctx.world), out_dir, model,
                     replace(options, device=device))


def _rank_job(ctx, cases: list[Case], out_dir: str | Path, model, options: PredictOptions) -> PredictJob:
    """One torchrun rank's share; after a barrier rank 0's note sums up every rank. A rank's own failed
    cases are counted there, not listed again."""
    from .. import distributed  # heavy (torch.distributed): only torchrun jobs get here

    result, error = BatchResult(), None
    try:
        try:
            if cases:
                result = predict_cases(cases, out_dir, model, options)
        except LiversegError as exc:
            error = exc
        counts = {"cases": len(cases), "done": len(result.case_dirs), "skipped": len(result.skipped),
                  "failed": len(result.failed)}
        line, bad = rank_summary(ctx, counts, [case for case, _ in result.failed],
                                 None if error is None else " ".join(str(error).split()))
    finally:
        distributed.cleanup(ctx)
    if error is not None:
        raise error
    return PredictJob(cases, result, [line] if line is not None else [], 2 if bad else 0)


__all__ = ["PredictJob", "job_cases", "run_predict_job"]
