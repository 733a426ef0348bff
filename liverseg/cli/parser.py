"""The ``liverseg`` argument parser: every subcommand, its options and its handler."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..run_folder import RUN
from .commands import (cmd_check, cmd_demo, cmd_download, cmd_evaluate, cmd_export, cmd_inspect,
                           cmd_manifest_import, cmd_models, cmd_plan, cmd_train)
from ..config import shipped_configs
from .grammar import Parser, SubcommandParser, output_option
from .predict import cmd_predict


def _shipped_configs_help() -> str:
    return f" ({', '.join(shipped_configs())})"


def _importer_kinds_help() -> str:
    from ..datasets.manifest import IMPORTERS  # heavy (SimpleITK via io): only when the help text is built

    return f": {', '.join(IMPORTERS)}"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="liverseg", description="Liver segmentation in CT with exact geometry.")
    parser.add_argument("--version", action="version", version=f"liverseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=SubcommandParser)

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
    output_option(p, "--out", type=Path, default=None, help="folder for per_case.csv, summary.csv and qc/ "
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
    output_option(p, "--out", type=Path, default=Path("demo_output"), help="demo folder")
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
    output_option(p, "--dest", type=Path, required=True, help="folder to download and extract into")
    p.add_argument("--no-extract", action="store_true", help="keep the archive, do not extract it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)
    return parser


__all__ = ["build_parser"]
