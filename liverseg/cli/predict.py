"""``liverseg predict``: a job array's share, torchrun ranks, and the paths it prints."""
from __future__ import annotations

import argparse
import sys

from ..errors import InputError, LiversegError


def cmd_predict(args: argparse.Namespace) -> int:
    from ..inference.cohort import parse_part, select_part, torchrun_context
    from ..inference import cases_from_inputs, cases_from_manifest, predict_cases

    part = parse_part(args.part) if args.part is not None else None
    if args.manifest is not None and args.inputs:
        raise InputError("give either input paths or --manifest, not both")
    if args.manifest is None and (args.root is not None or args.split is not None):
        raise InputError("--root and --split go with --manifest M.json")
    cases = (cases_from_manifest(args.manifest, args.root, args.split or "test") if args.manifest is not None
             else cases_from_inputs(args.inputs))
    if part is not None:  # a job array's share: sorted case ids, case i to part i % N + 1
        total, cases = len(cases), select_part(cases, *part)
        if not cases and total:
            print(f"liverseg predict: --part {args.part}: no case in this share ({total} case(s) in all)",
                  file=sys.stderr)
            return 0
    ctx, device = torchrun_context(args.device)  # torchrun: each rank its share, one GPU each
    if ctx is not None:
        return _predict_ranks(ctx, select_part(cases, ctx.rank + 1, ctx.world), args, device)
    result = predict_cases(cases, args.output, args.model, _predict_options(args, args.device))
    return _print_result(result, cases)


def _predict_options(args: argparse.Namespace, device: str | None):
    from ..inference.batch import PredictOptions

    return PredictOptions(device=device, threads=args.threads, progress=not args.quiet, overwrite=args.overwrite,
                          skip_existing=args.skip_existing, series=args.series, allow_gaps=args.allow_gaps,
                          memory_gb=args.memory_gb, overrides=tuple(args.set), preview=not args.no_preview,
                          backend=args.backend, save_probabilities=args.save_probabilities)


def _predict_ranks(ctx, cases: list, args: argparse.Namespace, device: str | None) -> int:
    """One torchrun rank's share; after a barrier rank 0 prints the summary of all ranks."""
    from .. import distributed
    from ..inference.cohort import rank_summary
    from ..inference.batch import BatchResult, predict_cases

    result, error = BatchResult(), None
    try:
        try:
            if cases:
                result = predict_cases(cases, args.output, args.model, _predict_options(args, device))
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
    _print_result(result, cases, report_failures=False)
    if line is not None:
        print(line, file=sys.stderr)
    return 2 if bad else 0


def _print_result(result, cases: list, report_failures: bool = True) -> int:
    for case_dir in result.case_dirs.values():
        path = case_dir / "segmentation.nii.gz" if (case_dir / "segmentation.nii.gz").is_file() else case_dir
        # one write per line, flushed: torchrun ranks share one stdout pipe, and a write below PIPE_BUF
        # (4 KB) reaches it whole (print writes the text and the newline separately)
        sys.stdout.write(f"{path}\n")
        sys.stdout.flush()
    if result.failed and report_failures:
        print(f"liverseg predict: {len(result.failed)} of {len(cases)} case(s) failed: "
              f"{', '.join(case for case, _ in result.failed)}", file=sys.stderr)
        return 2
    return 0


__all__ = ["cmd_predict"]
