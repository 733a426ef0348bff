"""Automatic planning from a dataset's fingerprint, after nnU-Net's experiment planner.

``liverseg plan MANIFEST --root ROOT`` (and ``liverseg train`` when ``train.auto_plan`` is on, CT
only) reads every training case once and derives:

- the target spacing: the median spacing per (canonical RAS) axis; when one axis is much coarser
  than the others (spacing > 3x the finest and < 1/3 of the voxels), that axis takes the 10th
  percentile of its spacings instead, as nnU-Net does, so thick-slice scans do not drag every
  case to the coarsest resolution;
- CT normalisation: the 0.5 / 99.5 percentiles of the foreground intensities (all labelled
  voxels, at most 10,000 sampled per case) become ``preprocess.hu_window``; their mean and
  standard deviation ``intensity_mean_hu`` / ``intensity_std_hu`` (z-scoring after clipping);
- patch and batch size: the patch starts at the median resampled case shape (at most 256 voxels
  per axis), shrinks along its longest axis relative to that shape until a batch of 2 fits the
  estimated training memory budget ``train.plan_memory_gb``; the batch size is then what the budget allows
  (at least 2), capped so one batch covers at most 5% of the dataset's voxels.

The planned values are written into the run's config (and the plan itself beside it,
``run_folder.write_plan``) and are never recomputed at inference, which reads only the run folder.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import ExperimentConfig, load_config, save_config
from ..errors import ConfigError, GeometryError, InputError
from ..io import read_volume
from ..io.labels import read_label
from ..io.volume import spacing_from_affine
from ..grid.record import canonical_affine, canonical_ornt
from ..grid.road import remap_labels
from ..modalities import modality_for
from ..modalities.items import case_dicts, load_training_manifest

log = logging.getLogger(__name__)

SAMPLES_PER_CASE = 10_000
ANISOTROPY = 3.0
MAX_PATCH = 256
BATCH_DATASET_FRACTION = 0.05


# ----------------------------------------------------------------------------- fingerprint

def fingerprint(items: list[dict], cfg: ExperimentConfig, progress: bool = False, seed: int = 1234) -> dict:
    """Spacing, shape and foreground intensity samples of the training cases."""
    rng = np.random.default_rng(seed)
    spacings, shapes, samples = [], [], []
    for item in tqdm(items, desc="planning: reading cases", unit="case", disable=not progress, leave=False):
        image = read_volume(item["image"])
        ornt = canonical_ornt(image.affine_ras)
        spacing = spacing_from_affine(canonical_affine(image.affine_ras, image.shape, ornt))
        shape = [int(image.shape[int(p)]) for p in np.argsort(ornt[:, 0])]
        spacings.append([float(s) for s in spacing])
        shapes.append(shape)
        if item.get("label"):
            try:  # any label format, placed exactly on the image grid (or refused with both grids)
                placed = read_label(item["label"], image, item.get("label_format", "volume"), item.get("structures"))
            except GeometryError as exc:
                raise GeometryError(f"case {item['id']}: {exc}") from None
            label = remap_labels(placed.array, cfg.data.label_remap)
            values = np.asarray(image.array)[label > 0]
            if values.size:
                take = rng.choice(values.size, size=min(SAMPLES_PER_CASE, values.size), replace=False)
                samples.append(values.reshape(-1)[take].astype(np.float64))
    return {"spacings_mm": spacings, "shapes": shapes,
            "foreground": np.concatenate(samples) if samples else np.zeros(0)}


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[list[float], int | None]:
    """Median spacing, with nnU-Net's rule for one much coarser axis; returns (spacing, that axis)."""
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    target = np.median(spacings, axis=0)
    size = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY * max(target[others])
    aniso_voxels = size[worst] * ANISOTROPY < min(size[others])
    if aniso_spacing and aniso_voxels:
        coarse = float(np.percentile(spacings[:, worst], 10))
        # never finer than the other axes
        target[worst] = coarse if coarse >= max(target[others]) else max(target[others]) + 1e-5
        return [float(v) for v in target], worst
    return [float(v) for v in target], None


# ----------------------------------------------------------------------------- memory model

def estimate_memory_gb(cfg: ExperimentConfig, patch: tuple[int, ...], batch: int) -> float:
    """Rough training memory of a U-Net-like model: for every resolution level, encoder + decoder
    feature maps kept for backward (about 6 per conv block and residual unit: conv, norm,
    activation, twice), at 2 bytes (AMP) or 4, plus parameters with AdamW state."""
    voxels = float(np.prod(patch))  # 2D: the 2.5D slab is input channels, not a spatial axis
    per_voxel = 0.0
    scale = 1.0
    strides = list(cfg.model.strides) + [1]
    for channels, stride in zip(cfg.model.channels, strides):
        per_voxel += 2 * channels * scale
        scale /= float(stride) ** cfg.model.spatial_dims
    stored = 6 * max(1, cfg.model.num_res_units)
    bytes_each = 2 if cfg.train.amp else 4
    activations = batch * voxels * per_voxel * stored * bytes_each
    parameters = 4 * 4 * sum(c_in * c_out * 27 for c_in, c_out in zip(cfg.model.channels, cfg.model.channels[1:]))
    return (activations + parameters) / 2**30 + 0.5  # + CUDA context and workspace


def plan_patch_and_batch(cfg: ExperimentConfig, median_shape: list[float], total_voxels: float,
                         spacing: list[float]) -> dict:
    dims = cfg.model.spatial_dims
    k = cfg.model.size_divisor
    shape = list(median_shape[:dims])
    patch = [min(MAX_PATCH, max(k, int(math.ceil(s / k) * k))) for s in shape]
    budget = cfg.train.plan_memory_gb
    while estimate_memory_gb(cfg, tuple(patch), 2) > budget and max(patch) > k:  # batch 2 at least
        # shrink the axis that is largest relative to the median case (nnU-Net), in mm for ties
        ratios = [p / max(s, 1.0) for p, s in zip(patch, shape)]
        axis = max(range(dims), key=lambda a: (ratios[a], patch[a] * spacing[a]))
        if patch[axis] <= k:
            axis = max(range(dims), key=lambda a: patch[a])
        patch[axis] -= k
    one = estimate_memory_gb(cfg, tuple(patch), 1)
    per_sample = one - estimate_memory_gb(cfg, tuple(patch), 0)
    batch = max(2, int((budget - (one - per_sample)) // max(per_sample, 1e-9)))
    patch_voxels = float(np.prod(patch)) * (cfg.model.slices_2d if dims == 2 else 1)
    cap = max(2, int(BATCH_DATASET_FRACTION * total_voxels // max(patch_voxels, 1.0)))
    batch = min(batch, cap)
    return {"patch_size": patch, "batch_size": int(batch),
            "estimated_memory_gb": round(estimate_memory_gb(cfg, tuple(patch), batch), 2)}


# ----------------------------------------------------------------------------- plan and apply

def plan_dataset(items: list[dict], cfg: ExperimentConfig, progress: bool = False) -> dict:
    """The plan (a JSON-able dict) for ``cfg``'s model and memory budget from the training cases."""
    if not modality_for(cfg).traits.auto_plan:
        raise ConfigError(f"data.modality={cfg.data.modality!r}: planning applies to CT only")
    if not items:
        raise InputError("planning needs at least one training case")
    fp = fingerprint(items, cfg, progress)
    spacings, shapes = np.asarray(fp["spacings_mm"]), np.asarray(fp["shapes"], float)
    spacing, coarse_axis = target_spacing(spacings, shapes)
    resampled = shapes * spacings / np.asarray(spacing)
    median_shape = [float(v) for v in np.median(resampled, axis=0)]
    fg = fp["foreground"]
    if fg.size < 2:
        raise InputError("planning found no labelled (foreground) voxels in the training cases; check the labels "
                         "and data.label_remap")
    low, high = (float(v) for v in np.percentile(fg, [0.5, 99.5]))
    clipped = np.clip(fg, low, high)
    if not high > low:
        high = low + 1.0
    plan = {
        "cases": len(items),
        "median_spacing_mm": [float(v) for v in np.median(spacings, axis=0)],
        "target_spacing_mm": spacing,
        "coarse_axis": coarse_axis,
        "median_shape_at_target": [round(v, 1) for v in median_shape],
        "foreground_hu": {"p00_5": low, "p99_5": high, "mean": float(clipped.mean()),
                          "std": float(max(clipped.std(), 1e-3)), "samples": int(fg.size)},
        "memory_budget_gb": cfg.train.plan_memory_gb,
        **plan_patch_and_batch(cfg, median_shape, float(resampled.prod(axis=1).sum()), spacing),
    }
    return plan


def apply_plan(cfg: ExperimentConfig, plan: dict) -> ExperimentConfig:
    """``cfg`` with the planned spacing, normalisation, patch, batch and sliding-window tile."""
    hu = plan["foreground_hu"]
    preprocess = replace(cfg.preprocess, spacing_mm=tuple(round(v, 4) for v in plan["target_spacing_mm"]),
                         hu_window=(round(hu["p00_5"], 2), round(hu["p99_5"], 2)),
                         intensity_mean_hu=round(hu["mean"], 3), intensity_std_hu=round(hu["std"], 3))
    train = replace(cfg.train, patch_size=tuple(plan["patch_size"]), batch_size=plan["batch_size"])
    infer = replace(cfg.infer, roi_size=tuple(plan["patch_size"]))
    planned = replace(cfg, preprocess=preprocess, train=train, infer=infer).validate()
    log.info("plan: spacing %s mm, HU window [%.0f, %.0f], mean %.1f, std %.1f, patch %s, batch %d "
             "(~%.1f GB of %.1f GB)", list(preprocess.spacing_mm), *preprocess.hu_window,
             preprocess.intensity_mean_hu, preprocess.intensity_std_hu, list(train.patch_size), train.batch_size,
             plan["estimated_memory_gb"], cfg.train.plan_memory_gb)
    return planned


def plan_command(manifest: str, root: str | None, config: Path | None, overrides: list[str],
                 output: Path | None) -> str:
    """``liverseg plan``: print the plan and the config values it sets (and write the config)."""
    cfg = load_config(config, [*overrides, f"data.manifest={manifest}"] + ([f"data.root={root}"] if root else []))
    if not modality_for(cfg).traits.auto_plan:
        raise ConfigError(f"{config}: data.modality={cfg.data.modality!r}; planning applies to CT only")
    loaded = load_training_manifest(cfg)
    items = case_dicts(loaded.split(cfg.data.train_split), cfg.data.train_split, loaded)
    plan = plan_dataset(items, cfg, progress=True)
    planned = apply_plan(cfg, plan)
    lines = [f"plan for {len(items)} training case(s) of {manifest} (model {cfg.model.name}, "
             f"{cfg.model.spatial_dims}D, budget {cfg.train.plan_memory_gb:g} GB):",
             f"  median spacing      {np.round(plan['median_spacing_mm'], 3).tolist()} mm",
             f"  target spacing      {list(planned.preprocess.spacing_mm)} mm"
             + (f" (axis {plan['coarse_axis']} anisotropic: 10th percentile)" if plan["coarse_axis"] is not None else ""),
             f"  median shape there  {plan['median_shape_at_target']}",
             f"  HU window           {list(planned.preprocess.hu_window)} (foreground 0.5/99.5 percentiles)",
             f"  z-score             mean {planned.preprocess.intensity_mean_hu} HU, std "
             f"{planned.preprocess.intensity_std_hu} HU",
             f"  patch / batch       {list(planned.train.patch_size)} x {planned.train.batch_size} "
             f"(~{plan['estimated_memory_gb']} GB)"]
    if output is not None:
        save_config(replace(planned, train=replace(planned.train, auto_plan=False)), output)
        lines.append(f"planned config: {output} (train.auto_plan=false: train uses these values as they are)")
    return "\n".join(lines)


__all__ = ["fingerprint", "target_spacing", "estimate_memory_gb", "plan_dataset", "apply_plan",
           "plan_command"]
