"""The training loop, readable top to bottom.

One call, ``train(cfg, run_dir)``: data from a manifest, random foreground/background patches,
Dice-CE, AdamW with a cosine/poly schedule stepped per iteration, sliding-window validation every
``val_every`` epochs, ``best.pt`` / ``last.pt`` checkpoints and ``metrics.csv`` written atomically.
AMP and cudnn.benchmark on CUDA, fp32 on CPU.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .config import ExperimentConfig, save_config, to_dict
from .data import case_dicts, load_training_manifest, train_loader, validation_cases
from .errors import InputError, surface_user_errors
from .infer import network_probabilities, resolve_device
from .metrics import dice
from .losses import SegmentationLoss
from .models import build_model, count_parameters, input_channels

log = logging.getLogger(__name__)


def train(cfg: ExperimentConfig, run_dir: str | Path, *, device: str | None = None, workers: int = 0,
          threads: int | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Train a model into ``run_dir``; returns the path of the best checkpoint."""
    run_dir = Path(run_dir)
    torch_device = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    _check_run_dir(run_dir, resume)

    # ---- data
    manifest = load_training_manifest(cfg)
    train_items = case_dicts(manifest.split(cfg.data.train_split), cfg.data.train_split, manifest)
    val_items = case_dicts(manifest.split(cfg.data.val_split), cfg.data.val_split, manifest)

    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _log_to_file(run_dir / "train.log")
    try:
        return _train(cfg, run_dir, torch_device, workers, resume, progress, train_items, val_items)
    except BaseException:
        # A run that failed before its first checkpoint leaves no folder behind to be mistaken for one.
        if created and not (run_dir / "last.pt").exists():
            handler.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        logging.getLogger("liverseg").removeHandler(handler)
        handler.close()


def _train(cfg: ExperimentConfig, run_dir: Path, device: torch.device, workers: int, resume: bool,
           progress: bool, train_items: list[dict], val_items: list[dict]) -> Path:
    t = cfg.train
    _seed_everything(t.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log.info("liverseg %s: training %s on %d cases, validating on %d, device %s, %d CPU threads",
             __version__, cfg.model.name, len(train_items), len(val_items), device, torch.get_num_threads())
    loader = train_loader(cfg, train_items, workers, t.seed)
    loader.dataset.transform.set_random_state(seed=t.seed)
    val_data = validation_cases(cfg, val_items)

    # ---- model and optimisation
    n_classes = len(cfg.data.labels)
    model = build_model(cfg.model, in_channels=input_channels(cfg), out_channels=n_classes).to(device)
    log.info("model %s (%dD): %.2f M parameters", cfg.model.name, cfg.model.spatial_dims,
             count_parameters(model) / 1e6)
    loss_fn = SegmentationLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    total_iters = t.epochs * t.iters_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(cfg, step, total_iters))
    use_amp = device.type == "cuda" and t.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_metric, best_epoch, rows = 1, -1.0, 0, []
    if resume:
        start_epoch, best_metric, best_epoch, rows = _resume(run_dir, model, optimizer, scheduler, scaler, cfg)
    save_config(cfg, run_dir / "config.yaml")

    # ---- loop
    started = time.perf_counter()
    step = (start_epoch - 1) * t.iters_per_epoch
    for epoch in range(start_epoch, t.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch}/{t.epochs}", unit="it", leave=False, disable=not progress)
        for batch in _batches(bar):
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                outputs = model.deep_supervision_outputs(images) if cfg.model.deep_supervision else model(images)
                loss = loss_fn(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()

        out_of_time = t.max_minutes > 0 and (time.perf_counter() - started) / 60.0 >= t.max_minutes
        last_epoch = epoch == t.epochs or out_of_time
        row = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)),
               "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - epoch_start}
        if epoch % t.val_every == 0 or last_epoch:
            scores = validate(model, val_data, cfg, device)
            row.update({f"val_dice_{name}": scores[name] for name in cfg.data.labels[1:]})
            row["val_mean_dice"] = float(np.mean([scores[name] for name in cfg.data.labels[1:]]))
            if row["val_mean_dice"] > best_metric:
                best_metric, best_epoch = row["val_mean_dice"], epoch
                _save_checkpoint(run_dir / "best.pt", model, optimizer, scheduler, scaler, cfg, epoch, step,
                                 best_metric, best_epoch)
        rows.append(row)
        _save_checkpoint(run_dir / "last.pt", model, optimizer, scheduler, scaler, cfg, epoch, step,
                         best_metric, best_epoch)
        _write_metrics(run_dir / "metrics.csv", rows, cfg)
        log.info("epoch %d: loss %.4f, lr %.2e%s (%.0f s)", epoch, row["train_loss"], row["lr"],
                 f", val mean Dice {row['val_mean_dice']:.4f}" if "val_mean_dice" in row else "",
                 row["epoch_seconds"])
        if out_of_time and epoch < t.epochs:
            log.warning("stopping after epoch %d: train.max_minutes=%g reached", epoch, t.max_minutes)
            break

    log.info("best validation mean Dice %.4f at epoch %d; run folder %s", best_metric, best_epoch, run_dir)
    return run_dir / "best.pt"


# ----------------------------------------------------------------------------- validation

def validate(model: torch.nn.Module, cases, cfg: ExperimentConfig, device: torch.device) -> dict[str, float]:
    """Mean Dice per foreground label over the validation cases, on the network grid."""
    model.eval()
    per_label: dict[str, list[float]] = {name: [] for name in cfg.data.labels[1:]}
    with torch.inference_mode():
        for case in cases:
            probabilities = network_probabilities(model, case["image"][0], cfg, device)
            predicted = probabilities.argmax(0).numpy()
            reference = case["label"][0].numpy()
            for index, name in enumerate(cfg.data.labels[1:], start=1):
                per_label[name].append(dice(predicted == index, reference == index))
    model.train()
    return {name: float(np.mean(values)) for name, values in per_label.items()}


# ----------------------------------------------------------------------------- helpers

def _batches(loader):
    """Iterate a loader, surfacing our own errors from inside MONAI transforms (cache_rate < 1)."""
    iterator = iter(loader)
    while True:
        with surface_user_errors():
            try:
                batch = next(iterator)
            except StopIteration:
                return
        yield batch


def _lr_factor(cfg: ExperimentConfig, step: int, total: int) -> float:
    t = cfg.train
    if t.warmup_iters and step < t.warmup_iters:
        return (step + 1) / t.warmup_iters
    progress_fraction = min(1.0, step / max(1, total))
    if t.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress_fraction))
    if t.schedule == "poly":
        return (1.0 - progress_fraction) ** 0.9
    return 1.0


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    has_run = any((run_dir / name).exists() for name in ("last.pt", "best.pt", "metrics.csv"))
    if resume and not (run_dir / "last.pt").is_file():
        raise InputError(f"{run_dir}: --resume needs last.pt from an earlier run in this folder, none found")
    if not resume and has_run:
        raise InputError(f"{run_dir}: already holds a training run; continue it with --resume, or choose "
                         "another --run-dir")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _save_checkpoint(path: Path, model, optimizer, scheduler, scaler, cfg: ExperimentConfig, epoch: int,
                     step: int, best_metric: float, best_epoch: int) -> None:
    """Everything needed to predict (model + config) and to resume (the rest); written atomically."""
    checkpoint = {
        "liverseg_version": __version__,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_metric": best_metric,
        "best_epoch": best_epoch,
        "config": to_dict(cfg),
        "labels": list(cfg.data.labels),
        "rng": _rng_state(),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _resume(run_dir: Path, model, optimizer, scheduler, scaler, cfg: ExperimentConfig):
    checkpoint = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    _set_rng_state(checkpoint["rng"])
    rows = _read_metrics(run_dir / "metrics.csv", upto_epoch=checkpoint["epoch"])
    log.info("resuming %s after epoch %d", run_dir, checkpoint["epoch"])
    return checkpoint["epoch"] + 1, checkpoint["best_metric"], checkpoint["best_epoch"], rows


def _metric_columns(cfg: ExperimentConfig) -> list[str]:
    return (["epoch", "step", "train_loss", "lr", "epoch_seconds"]
            + [f"val_dice_{name}" for name in cfg.data.labels[1:]] + ["val_mean_dice"])


def _write_metrics(path: Path, rows: list[dict], cfg: ExperimentConfig) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_metric_columns(cfg), restval="")
    writer.writeheader()
    writer.writerows(rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, path)


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["epoch"]) <= upto_epoch]


def _log_to_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("liverseg")
    package_logger.addHandler(handler)
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.INFO)
    return handler
