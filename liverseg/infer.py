"""Sliding-window prediction of one volume, and batch prediction of many from a run folder.

``liverseg predict --model RUN_DIR`` needs nothing but the run folder: ``config.yaml`` (labels,
preprocessing, model, inference settings, all resolved at training time) and a checkpoint.
"""
from __future__ import annotations

import itertools
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .config import ExperimentConfig, from_dict
from .errors import ConfigError, InputError
from .io import case_name, check_input, read_volume, write_label_map
from .io.volume import Volume
from .models import build_model, input_channels
from .postprocess import keep_largest_component
from .preprocess import preprocess_image, probabilities_to_labels

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("best.pt", "last.pt")


# ----------------------------------------------------------------------------- sliding window

def gaussian_importance(roi_size: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Per-voxel tile weight: a Gaussian centred on the tile (sigma = size / 8, as nnU-Net).

    Clamped away from zero so voxels at tile borders still get a defined (if small) weight.
    """
    weight = torch.ones((), dtype=torch.float64)
    for axis, n in enumerate(roi_size):
        coords = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-3)
        profile = torch.exp(-0.5 * (coords / sigma) ** 2)
        shape = [1] * len(roi_size)
        shape[axis] = n
        weight = weight * profile.reshape(shape)
    weight = weight / weight.max()
    return weight.clamp_min(1e-3).float()


def tile_starts(length: int, roi: int, overlap: float) -> list[int]:
    """Evenly spread tile starts covering [0, length) with at least ``overlap`` between neighbours."""
    if length <= roi:
        return [0]
    step = max(1, int(roi * (1.0 - overlap)))
    count = math.ceil((length - roi) / step) + 1
    return sorted({int(round(i * (length - roi) / (count - 1))) for i in range(count)})


def sliding_window(image: torch.Tensor, predictor: Callable[[torch.Tensor], torch.Tensor],
                   roi_size: Sequence[int], *, overlap: float = 0.25, batch_size: int = 1,
                   blend: str = "gaussian", device: torch.device | str = "cpu",
                   progress: bool = False) -> torch.Tensor:
    """Run ``predictor`` on overlapping tiles of ``image`` (C, *spatial) and blend the outputs.

    Works for 2 or 3 spatial axes (``len(roi_size)``). Returns (K, *spatial) float32 on the CPU: the
    weighted mean of every tile output covering each voxel. Images smaller than the tile are
    zero-padded to it and the padding cropped again.
    """
    roi = tuple(int(r) for r in roi_size)
    if image.ndim != len(roi) + 1:
        raise ValueError(f"sliding_window expects (C, *spatial) with {len(roi)} spatial axes, got shape "
                         f"{tuple(image.shape)}")
    spatial = tuple(image.shape[1:])
    padded_shape = tuple(max(s, r) for s, r in zip(spatial, roi))
    if padded_shape != spatial:
        padded = torch.zeros((image.shape[0], *padded_shape), dtype=image.dtype)
        padded[(slice(None), *(slice(0, s) for s in spatial))] = image
        image = padded
    starts = [tile_starts(n, r, overlap) for n, r in zip(padded_shape, roi)]
    tiles = [tuple(slice(a, a + r) for a, r in zip(corner, roi)) for corner in itertools.product(*starts)]
    weight = gaussian_importance(roi) if blend == "gaussian" else torch.ones(roi)
    weight_device = weight.to(device)
    accumulated: torch.Tensor | None = None
    weight_sum = torch.zeros(padded_shape, dtype=torch.float32)
    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False, disable=not progress)
    for first in range(0, len(tiles), batch_size):
        batch_tiles = tiles[first: first + batch_size]
        batch = torch.stack([image[(slice(None), *tile)] for tile in batch_tiles])
        output = predictor(batch.to(device))
        output = (output.float() * weight_device).cpu()
        if accumulated is None:
            accumulated = torch.zeros((output.shape[1], *padded_shape), dtype=torch.float32)
        for tile_output, tile in zip(output, batch_tiles):
            accumulated[(slice(None), *tile)] += tile_output
            weight_sum[tile] += weight
        bar.update(len(batch_tiles))
    bar.close()
    assert accumulated is not None  # at least one tile always exists
    accumulated /= weight_sum
    return accumulated[(slice(None), *(slice(0, s) for s in spatial))].contiguous()


# ----------------------------------------------------------------------------- one volume

def softmax_predictor(model: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    use_amp = device.type == "cuda"

    def predict(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            return torch.softmax(model(batch).float(), dim=1)

    return predict


def network_probabilities(model: torch.nn.Module, image: torch.Tensor, cfg: ExperimentConfig,
                          device: torch.device, progress: bool = False) -> torch.Tensor:
    """Class probabilities (K, X, Y, Z) for a preprocessed volume (X, Y, Z) on the network grid.

    3D models: one sliding window over the volume. 2D models: every axial slice (the last axis of
    the canonical RAS grid) with its ``slices_2d`` neighbours as channels (edge slices repeated),
    run as a sliding window whose tiles are one slice thick, so tiles of different slices share
    a batch (``infer.sw_batch_size``).
    """
    predictor = softmax_predictor(model, device)
    window = dict(overlap=cfg.infer.overlap, batch_size=cfg.infer.sw_batch_size, blend=cfg.infer.blend,
                  device=device, progress=progress)
    if cfg.model.spatial_dims == 3:
        return sliding_window(image[None], predictor, cfg.infer.roi_size, **window)
    context = cfg.model.slices_2d // 2
    depth = image.shape[-1]
    index = torch.arange(depth)
    # (slices_2d, X, Y, Z): channel j holds the slice at offset j - context, clamped at the ends.
    stack = torch.stack([image[..., (index + offset).clamp(0, depth - 1)] for offset in range(-context, context + 1)])

    def predict_slices(tiles: torch.Tensor) -> torch.Tensor:  # (N, slices_2d, x, y, 1) -> (N, K, x, y, 1)
        return predictor(tiles[..., 0])[..., None]

    return sliding_window(stack, predict_slices, (*cfg.infer.roi_size, 1), **window)


def predict_volume(model: torch.nn.Module, volume: Volume, cfg: ExperimentConfig, device: torch.device,
                   progress: bool = False) -> np.ndarray:
    """Segment one CT volume; returns uint8 labels on exactly the volume's grid."""
    image, record = preprocess_image(volume, cfg.preprocess.spacing_mm, cfg.preprocess.hu_window)
    model.eval()
    with torch.inference_mode():
        probabilities = network_probabilities(model, image, cfg, device, progress)
    labels = probabilities_to_labels(probabilities, record)
    del probabilities
    lcc_values = [cfg.data.labels.index(name) for name in cfg.infer.largest_component]
    return keep_largest_component(labels, lcc_values)


# ----------------------------------------------------------------------------- run folders

@dataclass
class TrainedModel:
    cfg: ExperimentConfig
    model: torch.nn.Module
    checkpoint_path: Path
    epoch: int


def find_checkpoint(run_dir: Path) -> Path:
    for name in CHECKPOINT_NAMES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise InputError(f"{run_dir}: no checkpoint ({' or '.join(CHECKPOINT_NAMES)}) in this folder; give the "
                     "--run-dir of a finished `liverseg train` run")


def load_trained_model(run_dir: str | Path, device: torch.device) -> TrainedModel:
    """Rebuild the model from a run folder alone (config + checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: model folder not found; give the --run-dir of a `liverseg train` run")
    checkpoint_path = find_checkpoint(run_dir)
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; all mean the same to a user
        raise InputError(f"{checkpoint_path}: cannot be loaded as a liverseg checkpoint "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise InputError(f"{checkpoint_path}: is not a liverseg checkpoint (no model weights or config)")
    try:
        cfg = from_dict(checkpoint["config"]).validate()
    except ConfigError as exc:
        raise InputError(f"{checkpoint_path}: stored config is invalid ({exc})") from None
    model = build_model(cfg.model, in_channels=input_channels(cfg), out_channels=len(cfg.data.labels))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    return TrainedModel(cfg, model, checkpoint_path, int(checkpoint.get("epoch", 0)))


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (torch "
                         f"{torch.__version__}); use --device cpu")
    return device


def predict_files(inputs: Sequence[str | Path], out_dir: str | Path, run_dir: str | Path,
                  device: str | None = None, threads: int | None = None,
                  progress: bool = True) -> list[Path]:
    """Predict each input into ``OUT/<case>/segmentation.nii.gz``; returns the written paths.

    Every input's header (or DICOM series) and the model are checked before any prediction, and
    each output is written atomically: a bad input leaves nothing behind under ``out_dir``. (Pixel
    data that is damaged behind a valid header is found only when that case is read; the cases
    before it are then already complete on disk.)
    """
    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads {threads}: must be at least 1")
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise InputError("no input given: pass one or more DICOM folders or NIfTI/NRRD/MHA files")
    for path in inputs:
        check_input(path)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir}: exists and is not a folder; give a folder for the outputs")
    names = [case_name(p) for p in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"several inputs share the case name(s) {', '.join(duplicates)}; their outputs "
                         "would overwrite each other: predict them into separate -o folders")
    trained = load_trained_model(run_dir, torch_device)
    cfg = trained.cfg
    written = []
    for path, name in tqdm(list(zip(inputs, names)), desc="cases", unit="case", disable=not progress
                           or len(inputs) == 1):
        start = time.perf_counter()
        volume = read_volume(path)
        labels = predict_volume(trained.model, volume, cfg, torch_device, progress=progress)
        case_dir = out_dir / name
        created = not case_dir.exists()
        try:
            written.append(write_label_map(labels, volume, case_dir / "segmentation.nii.gz"))
        except BaseException:
            if created:
                shutil.rmtree(case_dir, ignore_errors=True)
            raise
        log.info("%s: %s in %.1f s -> %s", name, _label_summary(labels, volume, cfg),
                 time.perf_counter() - start, written[-1])
    return written


def _label_summary(labels: np.ndarray, volume: Volume, cfg: ExperimentConfig) -> str:
    counts = np.bincount(labels.ravel(), minlength=len(cfg.data.labels))
    return ", ".join(f"{name} {counts[i] * volume.voxel_volume_ml:.1f} mL"
                     for i, name in enumerate(cfg.data.labels) if i > 0)


__all__ = ["sliding_window", "gaussian_importance", "tile_starts", "network_probabilities", "predict_volume",
           "predict_files",
           "load_trained_model", "resolve_device", "find_checkpoint", "TrainedModel"]
