"""Command line: one subcommand -> one library call, no logic of its own.

A ``LiversegError`` becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from . import __version__
from .errors import InputError, LiversegError
from .run_folder import RUN


def _parse_int_map(text: str | None, option: str) -> dict[int, int]:
    """'2=1,3=1' -> {2: 1, 3: 1}."""
    if not text:
        return {}
    result = {}
    for item in text.split(","):
        source, _, target = item.partition("=")
        try:
            result[int(source)] = int(target)
        except ValueError:
            raise InputError(f"{option} {text!r}: expected SOURCE=TARGET pairs of integers, e.g. 2=1") from None
    return result


def _parse_label_names(text: str | None) -> dict[int, str] | None:
    """'1=liver,2=tumour' -> {1: 'liver', 2: 'tumour'}."""
    if not text:
        return None
    names = {}
    for item in text.split(","):
        value, _, name = item.partition("=")
        if not value.strip().isdigit() or not name.strip():
            raise InputError(f"--labels {text!r}: expected VALUE=NAME pairs, e.g. 1=liver,2=tumour")
        names[int(value)] = name.strip()
    return names


def _parse_lesion_label(text: str) -> int | None | bool:
    """'auto' -> None (the label whose name contains tumour/tumor/lesion), 'none' -> False (no lesion
    evaluation), 'N' -> N."""
    word = text.strip().lower()
    if word == "auto":
        return None
    if word == "none":
        return False
    if not word.isdigit() or int(word) == 0:
        raise InputError(f"--lesion-label {text!r}: expected a foreground label value (e.g. 2), auto or none")
    return int(word)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training.loop import train

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
        from .training.finetune import finetune_config, resolve_init

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
    from .training.plan import plan_command

    print(plan_command(args.manifest, args.root, args.config, args.set, args.output))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference.cohort import parse_part, select_part, torchrun_context
    from .inference import cases_from_inputs, cases_from_manifest, predict_cases

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
    from .inference.batch import PredictOptions

    return PredictOptions(device=device, threads=args.threads, progress=not args.quiet, overwrite=args.overwrite,
                          skip_existing=args.skip_existing, series=args.series, allow_gaps=args.allow_gaps,
                          memory_gb=args.memory_gb, overrides=tuple(args.set), preview=not args.no_preview,
                          backend=args.backend, save_probabilities=args.save_probabilities)


def _predict_ranks(ctx, cases: list, args: argparse.Namespace, device: str | None) -> int:
    """One torchrun rank's share; after a barrier rank 0 prints the summary of all ranks."""
    from . import distributed
    from .inference.cohort import rank_summary
    from .inference.batch import BatchResult, predict_cases

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


def cmd_models(args: argparse.Namespace) -> int:
    from .builtin import BUILTIN_MODELS, DEFAULT_MODEL, describe

    names = [args.name] if args.name else list(BUILTIN_MODELS)
    print("\n\n".join(describe(name) for name in names))
    if not args.name:
        print(f"\ndefault for `liverseg predict`: {DEFAULT_MODEL}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export.writers import export_model

    if args.format == "monai-bundle":  # a folder, not one file (MONAI's bundle layout, see monai_bundle)
        from .export.monai_bundle import export_monai_bundle

        print(export_monai_bundle(args.run_dir, args.output))
        return 0
    print(export_model(args.run_dir, args.format, args.output))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import run_evaluation  # scipy, SimpleITK and nibabel stay off the other subcommands' path

    run_evaluation(args.prediction, args.reference, manifest_path=args.manifest, root=args.root, split=args.split,
                   out_dir=args.output, csv=args.csv, qc=not args.no_qc, tolerance_mm=args.tolerance,
                   label_names=_parse_label_names(args.labels), ref_remap=_parse_int_map(args.ref_remap, "--ref-remap"),
                   lesion_label=_parse_lesion_label(args.lesion_label), lesion_min_volume_ml=args.lesion_min_volume,
                   lesion_min_iou=args.lesion_min_iou, lesion_connectivity=args.lesion_connectivity, echo=print)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.output), minutes=args.minutes, device=args.device, threads=args.threads,
                    progress=not args.quiet, train_models=args.train)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .io.dicom import inspect

    print(inspect(args.path))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .datasets.check import check_manifest, format_reports

    reports = check_manifest(args.manifest, args.root, args.split, progress=not args.quiet)
    print(format_reports(reports))
    failed = [r.case_id for r in reports if not r.ok]
    if failed:
        raise InputError(f"{args.manifest}: {len(failed)} of {len(reports)} cases failed the check: "
                         f"{', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''} (see the table above)")
    return 0


def cmd_manifest_import(args: argparse.Namespace) -> int:
    from .datasets.manifest import import_manifest

    print(import_manifest(args.kind, args.root, args.output, sha256=args.sha256))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .datasets.download import download_dataset

    print(download_dataset(args.dataset, args.output, progress=not args.quiet, extract=not args.no_extract))
    return 0


# a help text that already states its option's default: "(default: test)", "(default 26)", "auto (default): ..."
_NAMES_DEFAULT = re.compile(r"\(default\b|\bdefault:", re.IGNORECASE)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and "(default: X)" after every option that has a default worth naming
    (not None, False or an empty list) unless its help already speaks of its default. An action's
    ``more_help`` (a callable) appends text computed only when --help is printed."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        more = getattr(action, "more_help", None)
        if more is not None:
            text += more()
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or default == []
                or _NAMES_DEFAULT.search(text)):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)" if text else "default: %(default)s"
        return text


class _Parser(argparse.ArgumentParser):
    """liverseg's argument parser: _HelpFormatter, and hidden deprecated aliases (_DeprecatedAlias)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        required = [(action, action.required) for action in self._actions]
        try:
            return super().parse_known_args(args, namespace)
        finally:  # an alias used in this parse may have relaxed its new option's ``required``
            for action, flag in required:
                action.required = flag


class _SubcommandParser(_Parser):
    """A subcommand's parser: an unknown argument is an error here, reported with this subcommand's usage
    (argparse leaves a subparser's leftovers to the top-level parser, which would print its own usage)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option (``--out``, ``--dest``), hidden from --help: it still works, into the
    new option's dest, and says on stderr in one line that it is deprecated."""

    def __init__(self, option_strings, dest, target: argparse.Action | None = None, **kwargs):
        self.target = target
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        new = "/".join(self.target.option_strings)
        print(f"{parser.prog}: {option_string} is deprecated; use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)
        self.target.required = False  # given, under its old name (restored after the parse)


def _output(p: argparse.ArgumentParser, *old: str, **kwargs) -> argparse.Action:
    """``-o/--output``, the one spelling of every subcommand's output folder or file, plus hidden deprecated
    aliases ``old`` (e.g. ``--out``)."""
    action = p.add_argument("-o", "--output", **kwargs)
    for alias in old:
        p.add_argument(alias, dest=action.dest, type=action.type, metavar=action.metavar, action=_DeprecatedAlias,
                       target=action, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return action


def _shipped_configs_help() -> str:
    from .config import shipped_configs

    return f" ({', '.join(shipped_configs())})"


def _importer_kinds_help() -> str:
    from .datasets.manifest import IMPORTERS

    return f": {', '.join(IMPORTERS)}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="liverseg", description="Liver segmentation in CT with exact geometry.")
    parser.add_argument("--version", action="version", version=f"liverseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_SubcommandParser)

    def runtime(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
        p.add_argument("--threads", type=int, default=None, help="CPU threads (PyTorch or ONNX Runtime)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a model from a config into a run folder")
    p.add_argument("--config", type=Path, default=None,
                   help="experiment YAML: a file, or the name of a config shipped with liverseg").more_help = \
        _shipped_configs_help
    p.add_argument("-o", "--output", "--run-dir", dest="run_dir", metavar="RUN_DIR", type=Path, required=True,
                   help="the run folder: config, checkpoints, metrics, log")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help=f"continue the run in --run-dir from {RUN.last}")
    p.add_argument("--init", default=None, metavar="SOURCE",
                   help="fine-tune: start from a built-in model's weights (liver; see `liverseg models`), a run "
                        "folder's or a checkpoint file's; its model and preprocessing replace the config's")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--manifest", type=Path, default=None, help="shortcut for --set data.manifest=PATH")
    p.add_argument("--root", type=Path, default=None, help="shortcut for --set data.root=PATH")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="disk cache of preprocessed training volumes (keyed by the preprocessing config)")
    p.add_argument("--ram-cache-gb", type=float, default=None,
                   help="RAM budget per process for cached training volumes (default: half the available "
                        "memory, shared among torchrun's processes on the node)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms): bitwise-repeatable runs")
    runtime(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="plan spacing, CT normalisation, patch and batch size from a dataset")
    p.add_argument("manifest", help="a liverseg manifest JSON or an MSD dataset.json")
    p.add_argument("--root", default=None, help="folder the manifest's relative paths start from")
    p.add_argument("--config", type=Path, default=None,
                   help="experiment YAML to plan for, a file or the name of a shipped config (default: the "
                        "defaults)").more_help = _shipped_configs_help
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value before planning (repeatable)")
    p.add_argument("-o", "--output", type=Path, default=None, help="write the planned config YAML here")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("predict", help="segment CT volumes (the built-in liver model, or a trained run)")
    p.add_argument("inputs", nargs="*", help="DICOM series folders, NIfTI/NRRD/MHA files, or folders of them")
    p.add_argument("-o", "--output", type=Path, required=True, help="writes OUTPUT/<case>/segmentation.nii.gz")
    p.add_argument("--model", action="append", default=None,
                   help="a built-in model name (default: liver; see `liverseg models`), a run folder written by "
                        "liverseg train, or a file/folder written by liverseg export; repeat it (run folders or "
                        "exported files with the same labels) for an ensemble: probabilities averaged, then argmax")
    p.add_argument("--manifest", type=Path, default=None, help="predict the cases of a manifest split instead")
    p.add_argument("--root", type=Path, default=None, help="with --manifest: folder its paths are relative to")
    p.add_argument("--split", default=None, help="with --manifest: the split to predict (default: test)")
    p.add_argument("--overwrite", action="store_true", help="replace existing OUTPUT/<case> folders")
    p.add_argument("--skip-existing", action="store_true", help="keep existing OUTPUT/<case> folders, predict the rest")
    p.add_argument("--series", default=None, metavar="UID_OR_INDEX", help="DICOM: the series to read")
    p.add_argument("--allow-gaps", action="store_true", help="DICOM: accept a series with missing slices")
    p.add_argument("--memory-gb", type=float, default=None,
                   help="memory budget for the large buffers (slab size, float16 probabilities)")
    p.add_argument("--set", action="append", default=[], metavar="infer.KEY=VALUE",
                   help="override an inference setting of the run, e.g. --set infer.tta_flip_axes=[0,1,2]")
    p.add_argument("--no-preview", action="store_true", help="skip preview.png")
    p.add_argument("--part", default=None, metavar="K/N",
                   help="predict share K of N (case ids sorted, case i to share i %% N + 1), for job arrays; "
                        "any number of workers may share one -o (claims in OUTPUT/.claims; add --skip-existing)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help=f"for a run folder: its {RUN.onnx} with ONNX Runtime, or the checkpoint with PyTorch "
                        f"(auto: ONNX on a CPU when {RUN.onnx} is current, else PyTorch)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write OUTPUT/<case>/probabilities.nii.gz: the softmax per label on the input grid, "
                        "4D uint8 (x, y, z, label), value = round(255 p) (not for built-in models)")
    runtime(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list the built-in models: source, licence, citation, input, measured figures")
    p.add_argument("name", nargs="?", default=None, help="one model (default: all)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="export a trained run to ONNX or TorchScript (config embedded)")
    p.add_argument("run_dir", type=Path, help="a run folder written by liverseg train")
    p.add_argument("--format", choices=("onnx", "torchscript", "monai-bundle"), default="onnx",
                   help=f"what to write (monai-bundle: a MONAI bundle folder, RUN_DIR/{RUN.monai_bundle} unless -o)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help=f"output file (default: RUN_DIR/{RUN.onnx} or RUN_DIR/{RUN.torchscript})")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="per-case metrics, summary and QC pictures of predictions")
    p.add_argument("prediction", type=Path, help="a label-map/mask file, or the -o folder of liverseg predict")
    p.add_argument("reference", type=Path, nargs="?", default=None,
                   help="a label-map/mask file or a folder of <case>.<ext> (or use --manifest)")
    p.add_argument("--manifest", type=Path, default=None, help="take references (and images, FOV masks) from "
                   "this manifest's --split")
    p.add_argument("--split", default="test", help="manifest split to evaluate (default: test)")
    p.add_argument("--root", default=None, help="folder the manifest's paths are relative to")
    _output(p, "--out", type=Path, default=None, help="folder for per_case.csv, summary.csv and qc/ "
            "(default: PREDICTION/evaluation when PREDICTION is a folder)")
    p.add_argument("--csv", type=Path, default=None, help="also write the per-case results to this CSV file")
    p.add_argument("--no-qc", action="store_true", help="skip the QC pictures")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="surface Dice tolerance (mm for volumes, pixels for photographs; default 1)")
    p.add_argument("--labels", default=None, help="label names, e.g. 1=liver,2=tumour (default: the manifest's)")
    p.add_argument("--ref-remap", default=None, help="remap reference values first, e.g. 2=1 (tumour into liver)")
    p.add_argument("--lesion-label", default="auto", metavar="N|auto|none",
                   help="label scored lesion by lesion as well (connected components: detection TP/FP/FN, "
                        "precision, recall, F1; global Dice) into lesions.csv; auto (default): the label whose "
                        "name (--labels or the manifest) contains tumour, tumor or lesion, if any; none: skip")
    p.add_argument("--lesion-min-volume", type=float, default=0.0, metavar="ML",
                   help="ignore lesions (reference and predicted components) smaller than this many mL (default 0)")
    p.add_argument("--lesion-min-iou", type=float, default=0.0, metavar="IOU",
                   help="a predicted component detects a reference lesion when they overlap with at least this "
                        "IoU (default 0: one shared voxel suffices)")
    p.add_argument("--lesion-connectivity", type=int, choices=(6, 18, 26), default=26,
                   help="voxel neighbourhood of a lesion's connected component (default 26)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="segment the CT that ships with liverseg using the built-in liver model "
                                     "(--train: train and evaluate a model on synthetic phantoms)")
    _output(p, "--out", type=Path, default=Path("demo_output"), help="demo folder")
    p.add_argument("--train", action="store_true",
                   help="the training road instead: synthetic phantoms -> train -> predict -> evaluate (minutes)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="with --train: cap on training minutes (sized for about 6 on 2 CPU cores)")
    runtime(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("inspect", help="list the DICOM series in a folder (UID, slices, spacing, orientation, ...)")
    p.add_argument("path", type=Path, help="a folder searched recursively, or one DICOM file")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("check", help="read every case of a manifest; verify geometry, label values, checksums")
    p.add_argument("manifest", type=Path, help="a liverseg manifest JSON (data_manifests/*.json) or MSD dataset.json")
    p.add_argument("--root", type=Path, default=None, help="folder the manifest's paths are relative to")
    p.add_argument("--split", default="all", help="only the cases of this split (default: all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("manifest", help="dataset manifests")
    manifest_sub = p.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    q = manifest_sub.add_parser("import", help="scan a public dataset's folder and write a manifest with fixed folds")
    q.add_argument("kind", help="the dataset's kind, one of").more_help = \
        _importer_kinds_help  # every importer in manifest.IMPORTERS, listed when --help is printed
    q.add_argument("root", type=Path, help="the dataset's root folder as its publisher ships it")
    q.add_argument("-o", "--output", type=Path, required=True, help="e.g. data_manifests/NAME.json")
    q.add_argument("--sha256", action="store_true", help="record the sha256 of every image/label file")
    q.set_defaults(func=cmd_manifest_import)

    p = sub.add_parser("download", help="download a public dataset (resumable, checksum-verified)")
    p.add_argument("dataset", choices=("msd_liver",), help="msd_liver: Medical Segmentation Decathlon Task03_Liver")
    _output(p, "--dest", type=Path, required=True, help="folder to download and extract into")
    p.add_argument("--no-extract", action="store_true", help="keep the archive, do not extract it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("liverseg")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        return args.func(args)
    except LiversegError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"liverseg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"liverseg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        package_logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
