"""The run folder: what ``liverseg train`` writes and every other command reads back.

Its file names, its checkpoint format and the rules for reading both live here and nowhere else, so
renaming a file or adding a checkpoint key is one edit, and every message that names a file quotes it
from ``RUN``. Training (``--resume``, ``--init``) and prediction read a checkpoint through one reader
(``load_checkpoint_file``), so a damaged or foreign file gets the same one-line ``InputError`` from
each of them instead of a torch traceback from some.

A run folder holds:

* ``config.yaml``: the fully resolved config; prediction rebuilds everything from it and a checkpoint;
* ``best.pt`` (best validation mean Dice) and ``last.pt`` (the latest step, what ``--resume``
  continues), both written atomically by ``save_checkpoint``;
* ``metrics.csv``, ``training_curves.png``, ``train.log`` and, when tensorboard is installed, a
  ``tensorboard`` folder (``training.log``);
* ``plan.json`` (``train.auto_plan``) and ``init.json`` (fine-tuning: where the first weights came from);
* exported models: ``model.onnx`` (written at the end of a CT run), ``model.torchscript.pt`` and a
  ``monai_bundle`` folder (``liverseg export``).

Nothing here imports torch at module level: ONNX prediction looks up a run folder's ``model.onnx``
through this module and must not pay PyTorch's start-up.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_path, write_text_atomic
from .config import ExperimentConfig, config_from_mapping, to_dict
from .errors import ConfigError, InputError
from .version import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFileNames:
    """The names inside a run folder: paths are ``run_dir / RUN.best``, messages say ``f"{RUN.best}"``."""

    config: str = "config.yaml"
    best: str = "best.pt"
    last: str = "last.pt"
    metrics: str = "metrics.csv"
    log: str = "train.log"
    curves: str = "training_curves.png"
    tensorboard: str = "tensorboard"  # a folder of event files
    plan: str = "plan.json"
    init: str = "init.json"
    onnx: str = "model.onnx"
    torchscript: str = "model.torchscript.pt"
    monai_bundle: str = "monai_bundle"  # a folder


RUN = RunFileNames()
# Prediction's order of preference: the best validation checkpoint, else the latest.
CHECKPOINT_NAMES = (RUN.best, RUN.last)
# ``liverseg export --format`` -> the file it writes inside a run folder; also the lookup order of
# ``find_exported`` (ONNX first: it predicts without PyTorch).
EXPORT_NAMES = {"onnx": RUN.onnx, "torchscript": RUN.torchscript}
# What every finished training run leaves to read (end-of-run summary, demo).
TRAINING_OUTPUTS = (RUN.config, RUN.best, RUN.last, RUN.metrics, RUN.curves, RUN.log)
# What a finished or interrupted run has written; a new run refuses a folder holding any of them.
_RUN_MARKERS = (RUN.last, RUN.best, RUN.metrics)
# Checkpoint keys that only ``--resume`` needs (prediction needs "model" and "config").
_RESUME_KEYS = ("optimizer", "scheduler", "scaler", "step", "epoch", "best_metric", "best_epoch")


# ----------------------------------------------------------------------------- starting and resuming a run

def check_run_dir(run_dir: Path, resume: bool) -> None:
    """InputError unless ``run_dir`` suits the request: ``resume`` needs the latest checkpoint of an earlier
    run; a new run must not write over one (its checkpoints and metrics would be silently replaced)."""
    has_run = any((run_dir / name).exists() for name in _RUN_MARKERS)
    if resume and not (run_dir / RUN.last).is_file():
        raise InputError(f"{run_dir}: --resume needs {RUN.last} from an earlier run in this folder, none found")
    if not resume and has_run:
        raise InputError(f"{run_dir}: already holds a training run; continue it with --resume, or choose "
                         "another --run-dir")


def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, cfg: ExperimentConfig, progress: dict) -> None:
    """Everything needed to predict (model + config) and to resume (the rest), written atomically: a run
    killed mid-write keeps its previous checkpoint rather than a truncated one."""
    import torch

    checkpoint = {
        "liverseg_version": __version__,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        **progress,
        "config": to_dict(cfg),
        "labels": list(cfg.data.labels),
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def resume_from_last(run_dir: Path, model, optimizer, scheduler, scaler, world: int) -> dict:
    """Load ``run_dir``'s latest checkpoint into the model, optimizer, scheduler and AMP scaler; return the
    training progress (step, best metric and epoch, metrics rows, the unfinished epoch's losses, minutes
    spent, the fine-tuning record) that ``save_checkpoint`` stored. ``world``: processes of this session."""
    path = run_dir / RUN.last
    checkpoint, _ = load_checkpoint_file(path, f"; restore {RUN.last}, or start a new run in another --run-dir")
    missing = [key for key in _RESUME_KEYS if key not in checkpoint]
    if missing:
        raise InputError(f"{path}: holds no training state to resume from (no {', '.join(missing)}); start a "
                         "new run in another --run-dir (--init takes its weights)")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    if checkpoint.get("world", 1) != world:
        log.warning("%s was trained with %d process(es), resuming with %d: the remaining batches differ from "
                    "an uninterrupted run", run_dir, checkpoint.get("world", 1), world)
    rows = checkpoint.get("rows")
    if rows is None:  # a checkpoint from before rows were stored in it
        rows = [r for r in read_metrics(run_dir / RUN.metrics) if int(r["epoch"]) <= checkpoint["epoch"]]
    step = int(checkpoint["step"])
    losses = list(checkpoint.get("epoch_losses", []))
    where = (f"after epoch {checkpoint['epoch']}" if not losses else
             f"in epoch {checkpoint['epoch'] + 1} at step {step}")
    log.info("resuming %s %s", run_dir, where)
    elapsed = float(rows[-1].get("elapsed_minutes") or 0.0) if rows else 0.0
    return {"step": step, "best_metric": float(checkpoint["best_metric"]),
            "best_epoch": int(checkpoint["best_epoch"]), "rows": rows, "epoch_losses": losses,
            "elapsed_minutes": elapsed, "init": checkpoint.get("init")}


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.csv`` as strings (none when the file is missing: a run killed before its
    first epoch ended)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_plan(run_dir: Path, plan: dict) -> Path:
    """The dataset plan a run trained with (its values are also in the config), kept to be read by people."""
    return write_text_atomic(json.dumps(plan, indent=2), run_dir / RUN.plan)


def write_init_record(run_dir: Path, record: dict) -> Path:
    """Where a fine-tune's first weights came from and which tensors were copied (``finetune.load_init``)."""
    return write_text_atomic(json.dumps(record, indent=2), run_dir / RUN.init)


# ----------------------------------------------------------------------------- reading checkpoints

def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` has a checkpoint entry, even a damaged one (a folder, a broken link): such a folder
    is predicted from as a run, never passed over for an exported model lying beside the checkpoints."""
    return any(os.path.lexists(folder / name) for name in CHECKPOINT_NAMES)


def find_checkpoint(run_dir: Path) -> Path:
    """The best checkpoint, else the latest; a checkpoint name that is not a plain file (a folder, a broken
    link) is refused rather than skipped, so a damaged best one never falls back to the latest unnoticed."""
    for name in CHECKPOINT_NAMES:
        candidate = run_dir / name
        if candidate.is_file():
            return candidate
        if candidate.exists() or candidate.is_symlink():
            kind = "a folder" if candidate.is_dir() else ("a broken link" if not candidate.exists() else "not a file")
            raise InputError(f"{candidate}: is {kind}, not a checkpoint file; restore the file (or remove it "
                             "to predict with the next checkpoint of the run)")
    raise InputError(f"{run_dir}: no checkpoint ({' or '.join(CHECKPOINT_NAMES)}) in this folder; give the "
                     "--run-dir of a finished `liverseg train` run")


def read_checkpoint(run_dir: str | Path) -> tuple[Path, dict, ExperimentConfig]:
    """(checkpoint path, checkpoint dict, validated config) of a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: model folder not found; give the --run-dir of a `liverseg train` run")
    checkpoint_path = find_checkpoint(run_dir)
    checkpoint, cfg = load_checkpoint_file(checkpoint_path)
    return checkpoint_path, checkpoint, cfg


def load_checkpoint_file(checkpoint_path: Path, hint: str = "") -> tuple[dict, ExperimentConfig]:
    """(checkpoint dict, validated config) of a file ``save_checkpoint`` wrote; InputError naming the file
    and ``hint`` (what to give instead) when it is not one. ``weights_only``: a checkpoint is data, and
    loading one must never run code from it."""
    import torch

    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; all mean the same to a user
        first_line = (str(exc).splitlines() or [""])[0][:160]  # an empty file's message is empty
        raise InputError(f"{checkpoint_path}: cannot be loaded as a liverseg checkpoint "
                         f"({type(exc).__name__}: {first_line}){hint}") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise InputError(f"{checkpoint_path}: is not a liverseg checkpoint (no model weights or config){hint}")
    try:
        cfg = config_from_mapping(checkpoint["config"])
    except ConfigError as exc:
        raise InputError(f"{checkpoint_path}: stored config is invalid ({exc})") from None
    return checkpoint, cfg


# ----------------------------------------------------------------------------- exported models

def export_path(run_dir: Path, fmt: str) -> Path:
    """Where ``liverseg export --format fmt`` writes inside a run folder (``fmt``: a key of EXPORT_NAMES)."""
    return Path(run_dir) / EXPORT_NAMES[fmt]


def monai_bundle_path(run_dir: Path) -> Path:
    """Where ``liverseg export --format monai-bundle`` writes its folder by default."""
    return Path(run_dir) / RUN.monai_bundle


def find_exported(folder: Path) -> Path | None:
    """The exported model inside a folder (the ONNX export first), or the folder's only ``.onnx`` file
    (an export copied and renamed), or None."""
    for name in EXPORT_NAMES.values():
        if (folder / name).is_file():
            return folder / name
    onnx_files = sorted(folder.glob("*.onnx"))
    return onnx_files[0] if len(onnx_files) == 1 else None


def current_onnx_export(run_dir: Path) -> tuple[Path | None, str]:
    """The run folder's ONNX export when ONNX Runtime can run it, else (None, why not).

    Whether it was exported from the folder's current checkpoint is checked after loading, from the
    checkpoint digest the export recorded (``inference.sources.is_current_export``).
    """
    path = export_path(run_dir, "onnx")
    if not path.is_file():
        return None, f"there is no {path.name} in it"
    if importlib.util.find_spec("onnxruntime") is None:
        return None, "onnxruntime is not installed (pip install 'liverseg[onnx]')"
    return path, ""


__all__ = ["RUN", "RunFileNames", "CHECKPOINT_NAMES", "EXPORT_NAMES", "TRAINING_OUTPUTS", "check_run_dir",
           "save_checkpoint", "resume_from_last", "read_metrics", "write_plan", "write_init_record",
           "is_run_folder", "find_checkpoint", "read_checkpoint", "load_checkpoint_file", "export_path",
           "monai_bundle_path", "find_exported", "current_onnx_export"]
