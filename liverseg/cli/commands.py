"""The subcommands other than ``predict``: each one library call."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .values import parse_int_map, parse_label_names, parse_lesion_label


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.finetune import training_config  # heavy: loaded when this subcommand runs, not for --help
    from ..training.loop import train  # heavy: loaded when this subcommand runs, not for --help

    cfg, init = training_config(args.config, args.run_dir, resume=args.resume, init=args.init,
                                manifest=args.manifest, root=args.root, overrides=args.set)
    best = train(cfg, args.run_dir, device=args.device, workers=args.workers, threads=args.threads,
                 resume=args.resume, progress=not args.quiet, cache_dir=args.cache_dir,
                 ram_cache_gb=args.ram_cache_gb, deterministic=args.deterministic, init=init)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ..training.plan import plan_command  # heavy: loaded when this subcommand runs, not for --help

    print(plan_command(args.manifest, args.root, args.config, args.set, args.output))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..builtin import BUILTIN_MODELS, DEFAULT_MODEL, describe  # heavy: only for this subcommand

    names = [args.name] if args.name else list(BUILTIN_MODELS)
    print("\n\n".join(describe(name) for name in names))
    if not args.name:
        print(f"\ndefault for `liverseg predict`: {DEFAULT_MODEL}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export.writers import export_model  # heavy: loaded when this subcommand runs, not for --help

    if args.format == "monai-bundle":  # a folder, not one file (MONAI's bundle layout, see monai_bundle)
        from ..export.monai_bundle import export_monai_bundle  # heavy: loaded when this subcommand runs, not for --help

        print(export_monai_bundle(args.run_dir, args.output))
        return 0
    print(export_model(args.run_dir, args.format, args.output))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import run_evaluation  # heavy (scipy, SimpleITK, nibabel): off the other subcommands' path

    run_evaluation(args.prediction, args.reference, manifest_path=args.manifest, root=args.root, split=args.split,
                   out_dir=args.output, csv=args.csv, qc=not args.no_qc, tolerance_mm=args.tolerance,
                   label_names=parse_label_names(args.labels), ref_remap=parse_int_map(args.ref_remap, "--ref-remap"),
                   lesion_label=parse_lesion_label(args.lesion_label), lesion_min_volume_ml=args.lesion_min_volume,
                   lesion_min_iou=args.lesion_min_iou, lesion_connectivity=args.lesion_connectivity, echo=print)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo  # heavy: loaded when this subcommand runs, not for --help

    return run_demo(Path(args.output), minutes=args.minutes, device=args.device, threads=args.threads,
                    progress=not args.quiet, train_models=args.train)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..io.dicom import inspect  # heavy: loaded when this subcommand runs, not for --help

    print(inspect(args.path))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..datasets.check import run_check  # heavy (SimpleITK, pydicom readers): only for this subcommand

    run_check(args.manifest, args.root, args.split, progress=not args.quiet, echo=print)
    return 0


def cmd_manifest_import(args: argparse.Namespace) -> int:
    from ..datasets.manifest import import_manifest  # heavy: loaded when this subcommand runs, not for --help

    print(import_manifest(args.kind, args.root, args.output, sha256=args.sha256))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from ..datasets.download import download_dataset  # heavy: loaded when this subcommand runs, not for --help

    print(download_dataset(args.dataset, args.output, progress=not args.quiet, extract=not args.no_extract))
    return 0


__all__ = ["cmd_train", "cmd_plan", "cmd_models", "cmd_export", "cmd_evaluate", "cmd_demo", "cmd_inspect",
           "cmd_check", "cmd_manifest_import", "cmd_download"]
