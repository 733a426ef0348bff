"""The training loop, readable top to bottom.

One call, ``train(cfg, run_dir)``: data from a manifest (planned first when ``train.auto_plan``),
random foreground/background patches, Dice-CE, AdamW with a cosine/poly schedule stepped per
iteration, sliding-window validation every ``val_every`` epochs, the best and the latest checkpoint
and the metrics written atomically into the run folder (``run_folder``). AMP and cudnn.benchmark on
CUDA, fp32 on CPU.

Exact resume: every random draw of a training step is a function of ``(seed, step)`` (the
patches and their augmentation through ``modalities.data.StepDataset``, dropout through a per-step
torch seed), so the latest checkpoint needs only the step to continue; it is written at every epoch end
and every ``train.checkpoint_minutes`` inside an epoch, with the model, optimizer, scheduler, AMP
scaler, RNG states, the epoch's losses so far and the metrics rows. A run killed at any point and resumed
with ``--resume`` ends with bitwise the same weights on CPU (``--deterministic`` on GPU).

Under ``torchrun`` each process trains on its share of every step's samples (DDP, NCCL on GPU,
gloo on CPU); validation cases are split across ranks and their Dice gathered; only rank 0 logs
and writes.
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import distributed as dist_utils
from ..config import ExperimentConfig, save_config
from ..modalities import modality_for
from ..modalities.items import case_dicts, load_training_manifest
from ..modalities.sampling import sample_seed
from ..errors import InputError, surface_user_errors
from ..export.writers import export_model
from .finetune import FIXED_SHAPE_ONNX, InitSource, check_compatible, load_init, resolve_init
from ..engine.loaded import resolve_device
from .losses import SegmentationLoss
from ..models import build_model, count_parameters
from ..run_folder import RUN, check_run_dir, resume_from_last, save_checkpoint, write_init_record, write_plan
from ..version import __version__
from .log import TensorBoard, summary, write_curves, write_metrics
from . import plan as planning

log = logging.getLogger(__name__)


def train(cfg: ExperimentConfig, run_dir: str | Path, *, device: str | None = None, workers: int = 0,
          threads: int | None = None, resume: bool = False, progress: bool = True,
          cache_dir: str | Path | None = None, ram_cache_gb: float | None = None,
          deterministic: bool = False, init=None) -> Path:
    """Train a model into ``run_dir``; returns the path of the best checkpoint.

    ``init``: start from a built-in model's (by name), a run folder's or a checkpoint file's weights, or
    a resolved ``finetune.InitSource`` (fine-tuning, ``liverseg.training.finetune``); ``cfg`` must keep that
    source's architecture (build it with ``finetune.finetune_config``)."""
    run_dir = Path(run_dir)
    source = None
    if init is not None:
        if resume:
            raise InputError(f"--init {getattr(init, 'spec', init)} starts a new run; --resume continues {run_dir} "
                             f"from its {RUN.last}")
        source = init if isinstance(init, InitSource) else resolve_init(init)
        check_compatible(cfg, source)
    ctx, torch_device = dist_utils.setup(resolve_device(device))
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        check_run_dir(run_dir, resume)

        # ---- data (planned once, on rank 0, when the config asks for it)
        manifest = load_training_manifest(cfg)
        train_items = case_dicts(manifest.split(cfg.data.train_split), cfg.data.train_split, manifest)
        val_items = case_dicts(manifest.split(cfg.data.val_split), cfg.data.val_split, manifest)
        if cfg.train.auto_plan and modality_for(cfg).traits.auto_plan and not resume:  # a resumed run keeps its plan
            plan = planning.plan_dataset(train_items, cfg, progress=progress) if ctx.is_main else None
            cfg = dist_utils.broadcast(ctx, planning.apply_plan(cfg, plan) if ctx.is_main else None)  # validated
        else:
            plan = None

        created = not run_dir.exists()
        handler = None
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            handler = _log_to_file(run_dir / RUN.log)
            if plan is not None:
                write_plan(run_dir, plan)
        else:
            logging.getLogger("liverseg").setLevel(logging.WARNING)
        try:
            return _train(cfg, run_dir, torch_device, ctx, workers, resume, progress, train_items, val_items,
                          cache_dir, ram_cache_gb, source)
        except BaseException:
            # A run that failed before its first checkpoint leaves no folder behind to be mistaken for one.
            if ctx.is_main and created and not (run_dir / RUN.last).exists():
                if handler is not None:
                    handler.close()
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            if handler is not None:
                logging.getLogger("liverseg").removeHandler(handler)
                handler.close()
    finally:
        dist_utils.cleanup(ctx)


class _TrainForward(torch.nn.Module):
    """What one training step calls: full-resolution logits, or every deep-supervision head; a
    module of its own so DistributedDataParallel sees it as ``forward``."""

    def __init__(self, model: torch.nn.Module, deep_supervision: bool) -> None:
        super().__init__()
        self.model, self.deep_supervision = model, deep_supervision

    def forward(self, images: torch.Tensor):
        return self.model.deep_supervision_outputs(images) if self.deep_supervision else self.model(images)


def _train(cfg: ExperimentConfig, run_dir: Path, device: torch.device, ctx: dist_utils.Context, workers: int,
           resume: bool, progress: bool, train_items: list[dict], val_items: list[dict], cache_dir,
           ram_cache_gb, source=None) -> Path:
    t = cfg.train
    _seed_everything(t.seed)
    if device.type == "cuda" and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True
    log.info("liverseg %s: training %s on %d cases, validating on %d, device %s, %d CPU threads%s",
             __version__, cfg.model.name, len(train_items), len(val_items), device, torch.get_num_threads(),
             f", {ctx.world} processes" if ctx.distributed else "")
    modality = modality_for(cfg)
    loader = modality.train_loader(cfg, train_items, workers, t.seed, rank=ctx.rank, world=ctx.world,
                                   cache_dir=cache_dir, ram_budget_gb=ram_cache_gb)
    val_share = val_items[ctx.rank::ctx.world]  # a rank may have none (fewer cases than processes)
    val_data = modality.validation_cases(cfg, val_share) if val_share else []

    # ---- model and optimisation
    n_classes = len(cfg.data.labels)
    # 3D on CPU: channels-last activations let oneDNN pick its fast 3D convolutions (about 1.5x per
    # step measured on the demo U-Net); the weights saved are the same tensors either way.
    memory_format = (torch.channels_last_3d if device.type == "cpu" and cfg.model.spatial_dims == 3
                     else torch.contiguous_format)
    model = build_model(cfg.model, in_channels=modality.in_channels(cfg), out_channels=n_classes)
    init_record = None
    if source is not None:  # fine-tuning: the source's weights where they fit (before the optimizer sees them)
        init_record = load_init(model, source)
        if ctx.is_main:
            write_init_record(run_dir, init_record)
    model = model.to(device, memory_format=memory_format)
    log.info("model %s (%dD): %.2f M parameters", cfg.model.name, cfg.model.spatial_dims,
             count_parameters(model) / 1e6)
    loss_fn = SegmentationLoss(cfg.train.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    total_iters = t.epochs * t.iters_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(cfg, step, total_iters))
    use_amp = device.type == "cuda" and t.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    state = {"step": 0, "best_metric": -1.0, "best_epoch": 0, "rows": [], "epoch_losses": []}
    if resume:
        state = resume_from_last(run_dir, model, optimizer, scheduler, scaler, ctx.world)
        init_record = state.get("init")
    step, best_metric, best_epoch, rows = state["step"], state["best_metric"], state["best_epoch"], state["rows"]
    losses: list[float] = list(state["epoch_losses"])
    forward = _TrainForward(model, cfg.model.deep_supervision)
    if ctx.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=_has_unused_parameters(forward, cfg, device))
    board = TensorBoard(run_dir, enabled=ctx.is_main)
    if ctx.is_main:
        save_config(cfg, run_dir / RUN.config)
        if rows:  # a run killed between its checkpoint and its metrics gets its rows back from the checkpoint
            write_metrics(run_dir / RUN.metrics, rows, cfg.data.labels)

    def checkpoint(path: Path) -> None:
        save_checkpoint(path, model, optimizer, scheduler, scaler, cfg,
                        {"epoch": step // t.iters_per_epoch, "step": step, "best_metric": best_metric,
                         "best_epoch": best_epoch, "rows": rows, "epoch_losses": losses, "world": ctx.world,
                         **({"init": init_record} if init_record else {})})

    # ---- loop
    started = last_checkpoint = time.perf_counter()
    first_step, validation_seconds = step, 0.0
    bar = tqdm(total=total_iters, initial=step, unit="it", dynamic_ncols=True, disable=not (progress and ctx.is_main))
    model.train()
    while step < total_iters:
        epoch = step // t.iters_per_epoch + 1
        epoch_end = epoch * t.iters_per_epoch
        epoch_start = time.perf_counter()
        loader.sampler.set_steps(step, epoch_end)
        for batch in _batches(loader):
            torch.manual_seed(sample_seed(t.seed, step, ctx.rank, 1))  # dropout & co: a function of the step
            images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = batch["label"].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(forward(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            losses.append(float(dist_utils.mean_across(ctx, loss.detach())))
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch}/{t.epochs}", loss=f"{losses[-1]:.4f}")
            if (t.checkpoint_minutes > 0 and step < epoch_end and ctx.is_main
                    and time.perf_counter() - last_checkpoint >= 60.0 * t.checkpoint_minutes):
                checkpoint(run_dir / RUN.last)
                last_checkpoint = time.perf_counter()

        elapsed = time.perf_counter() - started
        out_of_time = dist_utils.broadcast(ctx, t.max_minutes > 0 and elapsed / 60.0 >= t.max_minutes)
        last_epoch = epoch == t.epochs or out_of_time
        row = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)),
               "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - epoch_start,
               "elapsed_minutes": (time.perf_counter() - started) / 60.0 + state.get("elapsed_minutes", 0.0)}
        if epoch % t.val_every == 0 or last_epoch:
            validation_start = time.perf_counter()
            per_case = validate(model, val_data, cfg, device, per_case=True)
            gathered = dist_utils.gather(ctx, per_case)
            scores = {name: float(np.mean([v for part in gathered for v in part[name]])) for name in cfg.data.labels[1:]}
            row.update({f"val_dice_{name}": scores[name] for name in cfg.data.labels[1:]})
            row["val_mean_dice"] = float(np.mean([scores[name] for name in cfg.data.labels[1:]]))
            validation_seconds += time.perf_counter() - validation_start
            if row["val_mean_dice"] > best_metric:
                best_metric, best_epoch = row["val_mean_dice"], epoch
                if ctx.is_main:
                    checkpoint(run_dir / RUN.best)
        rows.append(row)
        losses = []
        if ctx.is_main:
            checkpoint(run_dir / RUN.last)
            last_checkpoint = time.perf_counter()
            write_metrics(run_dir / RUN.metrics, rows, cfg.data.labels)
            write_curves(run_dir / RUN.curves, rows, cfg.data.labels)
            board.log_row(row)
        log.info("%s", _epoch_line(row))
        if out_of_time and epoch < t.epochs:
            log.warning("stopping after epoch %d: train.max_minutes=%g reached", epoch, t.max_minutes)
            break
    bar.close()
    board.close()
    if ctx.is_main:
        seconds = time.perf_counter() - started
        log.info("%s", summary(run_dir, rows, cfg.data.labels, best_epoch=best_epoch, best_metric=best_metric,
                               seconds=seconds, iterations=step - first_step,
                               patches=(step - first_step) * t.batch_size * ctx.world, world=ctx.world,
                               inputs=modality.traits.inputs))
        if t.export_onnx and modality.traits.exportable:
            if cfg.model.name in FIXED_SHAPE_ONNX:
                # their forward pads and crops from Python-computed sizes, which an ONNX trace fixes to the
                # example tile's: the file would fail on other tile sizes (see finetune.FIXED_SHAPE_ONNX)
                log.info("%s not written: %s predicts from its checkpoint with PyTorch", RUN.onnx, cfg.model.name)
            else:
                export_for_prediction(run_dir)
    dist_utils.barrier(ctx)
    return run_dir / RUN.best


def export_for_prediction(run_dir: Path) -> Path | None:
    """Write the run's ONNX export for fast CPU prediction; a failure is logged, never fatal."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        log.info("%s not written: pip install 'liverseg[onnx]' for ONNX Runtime prediction", RUN.onnx)
        return None
    try:
        path = export_model(run_dir, "onnx")
    except Exception as exc:  # the exporter raises many types; the run itself is complete either way
        log.warning("%s not written (%s: %s); liverseg predict will use the checkpoint",
                    RUN.onnx, type(exc).__name__, " ".join(str(exc).split())[:300])
        return None
    log.info("wrote %s (liverseg predict uses it on a CPU; --backend torch for the checkpoint)", path)
    return path


def _epoch_line(row: dict) -> str:
    val = f", val mean Dice {row['val_mean_dice']:.4f}" if "val_mean_dice" in row else ""
    return (f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, lr {row['lr']:.2e}{val} "
            f"({row['epoch_seconds']:.0f} s)")


# ----------------------------------------------------------------------------- validation

def validate(model: torch.nn.Module, cases, cfg: ExperimentConfig, device: torch.device,
             per_case: bool = False) -> dict:
    """Dice per foreground label over the validation cases, on the network grid: the mean per
    label, or with ``per_case`` the list of per-case values (to gather across ranks)."""
    modality = modality_for(cfg)
    model.eval()
    per_label: dict[str, list[float]] = {name: [] for name in cfg.data.labels[1:]}
    with torch.inference_mode():
        for case in cases:
            for name, value in modality.score_case(model, case, cfg, device).items():
                per_label[name].append(value)
    model.train()
    if per_case:
        return per_label
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


def _has_unused_parameters(forward: torch.nn.Module, cfg: ExperimentConfig, device: torch.device) -> bool:
    """Whether a training step leaves parameters without gradient (e.g. ma_unet's deep-supervision
    heads when deep_supervision is off); DDP must then be told, or it waits for them forever."""
    size = (1, modality_for(cfg).in_channels(cfg), *cfg.train.patch_size)
    forward.eval()  # the same parameters take part, and batch-norm running statistics stay untouched
    try:
        outputs = forward(torch.zeros(size, device=device))
        total = sum(o.float().sum() for o in outputs) if isinstance(outputs, (list, tuple)) else outputs.float().sum()
        total.backward()
        unused = any(p.requires_grad and p.grad is None for p in forward.parameters())
    finally:
        forward.zero_grad(set_to_none=True)
        forward.train()
    return unused


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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _log_to_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("liverseg")
    package_logger.addHandler(handler)
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.INFO)
    return handler
