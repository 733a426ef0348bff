"""The subcommands other than ``predict``: each one library call."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import InputError
from ..run_folder import RUN
from .values import parse_int_map, parse_label_names, parse_lesion_label


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..training.loop import train

    if args.resume:
        if args.init is not None:
            raise InputError(f"--init {args.init} starts a new run; --resume continues {args.run_dir} "
                             f"from its {RUN.last}")
        config_path = args.config or Path(args.run_dir) / RUN.config
    elif args.config is None and args.init is None:
        raise InputError("--config is required (except with --resume or --init); try --config smoke_3d")
    else:
        config_path = args.config  # with --init alone: the defaults, the source's model and preprocessing
    shortcuts = [f"data.manifest={args.manifest}"] * bool(args.manifest) + [f"data.root={args.root}"] * bool(args.root)
    if args.init is not None:  # the source's model and preprocessing replace the config's; --set still wins
        from ..training.finetune import finetune_config, resolve_init

        init = resolve_init(args.init)
        cfg = finetune_config(load_config(config_path, shortcuts), init, args.set)
    else:
        init = None
        cfg = load_config(config_path, shortcuts + args.set)
    best = train(cfg, args.run_dir, device=args.device, workers=args.workers, threads=args.threads,
                 resume=args.resume, progress=not args.quiet, cache_dir=args.cache_dir,
                 ram_cache_gb=args.ram_cache_gb, deterministic=args.deterministic, init=init)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ..training.plan import plan_command

    print(plan_command(args.manifest, args.root, args.config, args.set, args.output))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..builtin import BUILTIN_MODELS, DEFAULT_MODEL, describe

    names = [args.name] if args.name else list(BUILTIN_MODELS)
    print("\n\n".join(describe(name) for name in names))
    if not args.name:
        print(f"\ndefault for `liverseg predict`: {DEFAULT_MODEL}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export.writers import export_model

    if args.format == "monai-bundle":  # a folder, not one file (MONAI's bundle layout, see monai_bundle)
        from ..export.monai_bundle import export_monai_bundle

        print(export_monai_bundle(args.run_dir, args.output))
        return 0
    print(export_model(args.run_dir, args.format, args.output))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import run_evaluation  # scipy, SimpleITK and nibabel stay off the other subcommands' path

    run_evaluation(args.prediction, args.reference, manifest_path=args.manifest, root=args.root, split=args.split,
                   out_dir=args.output, csv=args.csv, qc=not args.no_qc, tolerance_mm=args.tolerance,
                   label_names=parse_label_names(args.labels), ref_remap=parse_int_map(args.ref_remap, "--ref-remap"),
                   lesion_label=parse_lesion_label(args.lesion_label), lesion_min_volume_ml=args.lesion_min_volume,
                   lesion_min_iou=args.lesion_min_iou, lesion_connectivity=args.lesion_connectivity, echo=print)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(Path(args.output), minutes=args.minutes, device=args.device, threads=args.threads,
                    progress=not args.quiet, train_models=args.train)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..io.dicom import inspect

    print(inspect(args.path))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..datasets.check import check_manifest, format_reports

    reports = check_manifest(args.manifest, args.root, args.split, progress=not args.quiet)
    print(format_reports(reports))
    failed = [r.case_id for r in reports if not r.ok]
    if failed:
        raise InputError(f"{args.manifest}: {len(failed)} of {len(reports)} cases failed the check: "
                         f"{', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''} (see the table above)")
    return 0


def cmd_manifest_import(args: argparse.Namespace) -> int:
    from ..datasets.manifest import import_manifest

    print(import_manifest(args.kind, args.root, args.output, sha256=args.sha256))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from ..datasets.download import download_dataset

    print(download_dataset(args.dataset, args.output, progress=not args.quiet, extract=not args.no_extract))
    return 0


__all__ = ["cmd_train", "cmd_plan", "cmd_models", "cmd_export", "cmd_evaluate", "cmd_demo", "cmd_inspect",
           "cmd_check", "cmd_manifest_import", "cmd_download"]
