"""``liverseg predict``: one library call (``inference.jobs.run_predict_job``), then the paths it printed."""
from __future__ import annotations

import argparse
import sys


def cmd_predict(args: argparse.Namespace) -> int:
    from ..inference.batch import PredictOptions  # heavy (ONNX Runtime, readers): not loaded for --help
    from ..inference.jobs import run_predict_job  # heavy: as above

    options = PredictOptions(device=args.device, threads=args.threads, progress=not args.quiet,
                             overwrite=args.overwrite, skip_existing=args.skip_existing, series=args.series,
                             allow_gaps=args.allow_gaps, memory_gb=args.memory_gb, overrides=tuple(args.set),
                             preview=not args.no_preview, backend=args.backend,
                             save_probabilities=args.save_probabilities)
    job = run_predict_job(args.inputs, args.output, args.model, options, manifest=args.manifest, root=args.root,
                          split=args.split, part=args.part)
    label_maps = {path.parent: path for path in job.result.segmentations}
    for case_dir in job.result.case_dirs.values():
        path = label_maps.get(case_dir, case_dir)
        # one write per line, flushed: torchrun ranks share one stdout pipe, and a write below PIPE_BUF
        # (4 KB) reaches it whole (print writes the text and the newline separately)
        sys.stdout.write(f"{path}\n")
        sys.stdout.flush()
    for note in job.notes:
        print(note, file=sys.stderr)
    return job.exit_code


__all__ = ["cmd_predict"]
