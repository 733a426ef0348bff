"""Prediction of one volume: Gaussian sliding window, coarse-to-fine, flip TTA, bounded memory.

``liverseg predict --model RUN_DIR`` needs nothing but the run folder (its config and a checkpoint, read
by ``run_folder``) or a file written by ``liverseg export`` (ONNX or TorchScript with the config
embedded). The batch loop over cases (outputs, failures, atomic case folders) lives in
``predict_batch.py``.

Everything between reading the CT and writing the labels is numpy: a network is any callable from a
float32 batch (N, C, *tile) to logits (N, K, *tile). PyTorch modules are wrapped (``TorchNetwork``,
the only place here that imports torch); an ONNX Runtime session is called directly, so prediction
from an exported model never imports PyTorch (2.5 s of start-up on the 2-core development machine,
as much as the whole prediction of a small CT).

Memory on a large CT (512x512x1000) stays bounded: the image is resampled to the network grid slab by
slab (``gridstream``), the sliding window keeps a rolling float32 buffer one tile deep and stores the
blended probabilities as float16 when the memory budget asks for it, and the probabilities are mapped
back to the input grid (trilinear, before the argmax) slab by slab.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..config import ExperimentConfig
from ..errors import InputError
from .gridstream import preprocess_image_chunked, probabilities_to_input_grid, probabilities_to_labels_chunked
from ..io.volume import Volume
from ..postprocess import postprocess_labels
from ..preprocess import to_canonical
from ..run_folder import current_onnx_export, find_checkpoint, find_exported, is_run_folder, read_checkpoint

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Network = Callable[[np.ndarray], np.ndarray]  # float32 (N, C, *tile) -> logits (N, K, *tile)
Predictor = Callable[[np.ndarray], np.ndarray]  # float32 (N, C, *tile) -> what is blended (N, K, *tile)


# ----------------------------------------------------------------------------- networks

def is_torch_module(model: Any) -> bool:
    """True for a ``torch.nn.Module`` (without importing torch: if it is not imported, it is not one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def as_numpy(array: Any) -> np.ndarray:
    """A numpy view or copy of a numpy array or a (CPU or GPU) torch tensor."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


class TorchNetwork:
    """A torch module as a ``Network``: numpy in, numpy logits out; float16 autocast on CUDA."""

    def __init__(self, module: Any, device: Any) -> None:
        import torch

        self.module = module
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.divisor = getattr(module, "divisor", None)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=torch.float16,
                                                     enabled=self.device.type == "cuda"):
            logits = self.module(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return logits.float().cpu().numpy()


def as_network(model: Any, device: Any = "cpu") -> Network:
    """Torch modules wrapped in ``TorchNetwork``; anything else is taken to be a numpy ``Network``."""
    if isinstance(model, TorchNetwork) or not is_torch_module(model):
        return model
    return TorchNetwork(model, device)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax along ``axis`` in float32, in place on ``logits`` when it is float32 already."""
    logits = np.asarray(logits, dtype=np.float32)
    logits -= logits.max(axis=axis, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=axis, keepdims=True)
    return logits


# ----------------------------------------------------------------------------- sliding window

def gaussian_importance(roi_size: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Per-voxel tile weight (float32): a Gaussian centred on the tile (sigma = size / 8, as nnU-Net).

    Clamped away from zero so voxels at tile borders still get a defined (if small) weight.
    """
    weight = np.ones((), dtype=np.float64)
    for axis, n in enumerate(roi_size):
        coords = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-3)
        profile = np.exp(-0.5 * (coords / sigma) ** 2)
        shape = [1] * len(roi_size)
        shape[axis] = n
        weight = weight * profile.reshape(shape)
    weight = weight / weight.max()
    return np.maximum(weight, 1e-3).astype(np.float32)


def tile_starts(length: int, roi: int, overlap: float) -> list[int]:
    """Evenly spread tile starts covering [0, length) with at least ``overlap`` between neighbours."""
    if length <= roi:
        return [0]
    step = max(1, int(roi * (1.0 - overlap)))
    count = math.ceil((length - roi) / step) + 1
    return sorted({int(round(i * (length - roi) / (count - 1))) for i in range(count)})


def sliding_window(image: Any, predictor: Predictor, roi_size: Sequence[int], *, overlap: float = 0.25,
                   batch_size: int = 1, blend: str = "gaussian", progress: bool = False,
                   out_dtype: Any = np.float32) -> np.ndarray:
    """Run ``predictor`` on overlapping tiles of ``image`` (C, *spatial) and blend the outputs.

    Works for 2 or 3 spatial axes (``len(roi_size)``). ``image`` is a numpy array (or a torch tensor,
    converted); ``predictor`` maps a float32 numpy batch (N, C, *tile) to (N, K, *tile). Returns
    (K, *spatial) ``out_dtype``: the weighted mean of every tile output covering each voxel. Images
    smaller than the tile are zero-padded to it and the padding cropped again.

    Memory stays bounded: tiles run in order of their position along the last axis, and the float32
    sums live in a rolling buffer one tile deep along that axis; slices that no later tile can touch
    are divided by their weight sum and written to the output (which may be float16) at once.
    """
    image = as_numpy(image)
    roi = tuple(int(r) for r in roi_size)
    if image.ndim != len(roi) + 1:
        raise ValueError(f"sliding_window expects (C, *spatial) with {len(roi)} spatial axes, got shape "
                         f"{tuple(image.shape)}")
    spatial = tuple(image.shape[1:])
    padded_shape = tuple(max(s, r) for s, r in zip(spatial, roi))
    if padded_shape != spatial:
        padded = np.zeros((image.shape[0], *padded_shape), dtype=np.float32)
        padded[(slice(None), *(slice(0, s) for s in spatial))] = image
        image = padded
    starts = [tile_starts(n, r, overlap) for n, r in zip(padded_shape, roi)]
    # Last-axis start first, so the rolling buffer only ever moves forward.
    corners = sorted(itertools.product(*starts), key=lambda c: (c[-1], c[:-1]))
    tiles = [tuple(slice(a, a + r) for a, r in zip(corner, roi)) for corner in corners]
    weight = gaussian_importance(roi) if blend == "gaussian" else np.ones(roi, dtype=np.float32)
    depth, last = roi[-1], padded_shape[-1]
    inner = padded_shape[:-1]
    output: np.ndarray | None = None
    buffer: np.ndarray | None = None
    weight_sum = np.zeros((*inner, depth), dtype=np.float32)
    base = 0  # the buffer holds last-axis slices [base, base + depth)

    def flush(until: int) -> None:
        """Finalise slices [base, until) and move the buffer forward to start at ``until``."""
        nonlocal base
        count = min(until, last) - base
        if count <= 0:
            return
        assert output is not None and buffer is not None
        output[..., base: base + count] = buffer[..., :count] / weight_sum[..., :count]
        for array in (buffer, weight_sum):  # shift the rest to the front, zero the freed end
            array[..., : depth - count] = array[..., count:].copy()
            array[..., depth - count:] = 0.0
        base += count

    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False, disable=not progress)
    for first in range(0, len(tiles), batch_size):
        batch_tiles = tiles[first: first + batch_size]
        batch = np.stack([image[(slice(None), *tile)] for tile in batch_tiles]).astype(np.float32, copy=False)
        result = np.asarray(predictor(batch), dtype=np.float32)
        if not result.flags.writeable:  # weighted in place below
            result = result.copy()
        if output is None:
            output = np.empty((result.shape[1], *padded_shape), dtype=out_dtype)
            buffer = np.zeros((result.shape[1], *inner, depth), dtype=np.float32)
        for tile_output, tile in zip(result, batch_tiles):
            flush(tile[-1].start)
            local = (*tile[:-1], slice(tile[-1].start - base, tile[-1].stop - base))
            tile_output *= weight
            buffer[(slice(None), *local)] += tile_output
            weight_sum[local] += weight
        bar.update(len(batch_tiles))
    bar.close()
    flush(last)
    assert output is not None  # at least one tile always exists
    return np.ascontiguousarray(output[(slice(None), *(slice(0, s) for s in spatial))])


# ----------------------------------------------------------------------------- one volume

def softmax_predictor(model: Any, device: Any = "cpu", flip_axes: Sequence[int] = ()) -> Predictor:
    """Tile batch -> class probabilities; with ``flip_axes``, the mean over flips along every subset."""
    network = as_network(model, device)
    flips = [tuple(2 + a for a in combo) for n in range(len(flip_axes) + 1)
             for combo in itertools.combinations(sorted(flip_axes), n)]

    def predict(batch: np.ndarray) -> np.ndarray:
        total = None
        for dims in flips:
            if dims:
                out = np.flip(softmax(network(np.ascontiguousarray(np.flip(batch, dims)))), dims)
            else:
                out = softmax(network(batch))
            total = out if total is None else total + out
        assert total is not None
        return total / len(flips) if len(flips) > 1 else total

    return predict


def fit_tile(extent: Sequence[int], roi: Sequence[int], overlap: float, divisor: int | None) -> tuple[int, ...]:
    """The tile the sliding window uses on ``extent``: ``roi``, shrunk where that costs no extra tile.

    Per axis: as many tiles as ``roi`` would need, each as small as still covers the extent with the
    requested overlap, rounded up to the network's size ``divisor`` (and never above ``roi``). With
    roi 128, overlap 0.25 and divisor 16: a 90-voxel axis gets one 96 tile instead of a padded 128 one,
    a 150-voxel axis two 96 tiles instead of two 128 ones. Without a divisor (a network of which
    nothing is known) the tile is ``roi``.
    """
    if not divisor:
        return tuple(int(r) for r in roi)
    tile = []
    for n, r in zip(extent, roi):
        count = len(tile_starts(max(n, r), r, overlap))
        need = math.ceil(n / (count - (count - 1) * overlap)) if count > 1 else n
        tile.append(int(max(1, min(r, -(-need // divisor) * divisor))))
    return tuple(tile)


def network_probabilities(model: Any, image: Any, cfg: ExperimentConfig, device: Any = "cpu",
                          progress: bool = False, out_dtype: Any = np.float32) -> np.ndarray:
    """Class probabilities (K, X, Y, Z) for a preprocessed volume (X, Y, Z) on the network grid.

    3D models: one sliding window over the volume (tiles fitted by ``fit_tile``). 2D models: every axial slice (the last axis of
    the canonical RAS grid) with its ``slices_2d`` neighbours as channels (edge slices repeated),
    run as a sliding window whose tiles are one slice thick, so tiles of different slices share
    a batch (``infer.sw_batch_size``). Flip TTA (``infer.tta_flip_axes``) is applied per tile.
    """
    image = as_numpy(image)
    network = as_network(model, device)
    predictor = softmax_predictor(network, device, cfg.infer.tta_flip_axes)
    dims = cfg.model.spatial_dims
    roi = fit_tile(tuple(image.shape[:dims]), cfg.infer.roi_size, cfg.infer.overlap, getattr(network, "divisor", None))
    window = dict(overlap=cfg.infer.overlap, batch_size=cfg.infer.sw_batch_size, blend=cfg.infer.blend,
                  progress=progress, out_dtype=out_dtype)
    if cfg.model.spatial_dims == 3:
        return sliding_window(image[None], predictor, roi, **window)
    context = cfg.model.slices_2d // 2
    depth = image.shape[-1]
    index = np.arange(depth)
    # (slices_2d, X, Y, Z): channel j holds the slice at offset j - context, clamped at the ends.
    stack = np.stack([image[..., np.clip(index + offset, 0, depth - 1)] for offset in range(-context, context + 1)])

    def predict_slices(tiles: np.ndarray) -> np.ndarray:  # (N, slices_2d, x, y, 1) -> (N, K, x, y, 1)
        return predictor(tiles[..., 0])[..., None]

    return sliding_window(stack, predict_slices, (*roi, 1), **window)


def average_pool(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``-wide blocks of a 3D array; a block cut by the border averages what it holds.

    ``torch.nn.functional.avg_pool3d(kernel_size=factor, stride=factor, ceil_mode=True)``, in numpy.
    """
    shape = image.shape
    blocks = [-(-n // factor) for n in shape]
    padded = np.zeros([b * factor for b in blocks], dtype=np.float32)
    padded[tuple(slice(0, n) for n in shape)] = image
    sums = padded.reshape(blocks[0], factor, blocks[1], factor, blocks[2], factor).sum(axis=(1, 3, 5))
    counts = [np.minimum(factor, n - np.arange(b) * factor).astype(np.float32) for n, b in zip(shape, blocks)]
    return sums / (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :])


def coarse_region(model: Any, image: Any, cfg: ExperimentConfig, device: Any = "cpu",
                  progress: bool = False) -> tuple[tuple[slice, ...] | None, str]:
    """The box of the network grid that holds every labelled structure, or None and why not.

    The image is average-pooled by ``infer.coarse_factor`` and predicted without TTA; the box covers
    the components of the coarse foreground that hold at least a tenth of the largest one, grown by
    ``infer.coarse_margin_mm`` and clipped to the volume. None (predict everything) when nothing is
    found, or when the box would cover most of the volume anyway.

    A region that touches the volume border is not a reason to fall back: along that side the box
    already reaches the border, so nothing beyond it can be missed. (Falling back there was measured:
    the TotalSegmentator example, whose liver reaches the top slice, then took 14 s of network time
    instead of 4.)
    """
    from scipy import ndimage

    image = as_numpy(image)
    factor = cfg.infer.coarse_factor
    shape = tuple(image.shape)
    coarse = average_pool(image, factor)
    coarse_cfg = replace(cfg, infer=replace(cfg.infer, tta_flip_axes=()))
    probabilities = network_probabilities(model, coarse, coarse_cfg, device, progress)
    foreground = probabilities.argmax(0) > 0
    components, count = ndimage.label(foreground, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return None, "coarse pass found nothing"
    sizes = np.bincount(components.ravel())[1:]
    keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
    found = np.isin(components, keep)
    box = ndimage.find_objects(found.astype(np.uint8))[0]
    spacing = _grid_spacing(cfg)
    margin = [int(math.ceil(cfg.infer.coarse_margin_mm / s)) for s in spacing]
    fine = tuple(slice(max(0, b.start * factor - m), min(n, b.stop * factor + m))
                 for b, m, n in zip(box, margin, shape))
    fraction = float(np.prod([f.stop - f.start for f in fine])) / float(np.prod(shape))
    if fraction > 0.8:
        return None, f"coarse box covers {fraction:.0%} of the volume"
    return fine, f"coarse box {' x '.join(str(f.stop - f.start) for f in fine)} ({fraction:.0%} of the volume)"


def _grid_spacing(cfg: ExperimentConfig) -> tuple[float, ...]:
    return tuple(float(s) for s in cfg.preprocess.spacing_mm)


@dataclass(frozen=True)
class MemoryPlan:
    """How prediction trades memory: slab thickness of the resampling steps, probability precision."""

    chunk_slices: int
    probability_dtype: type  # np.float32 or np.float16


def plan_memory(volume: Volume, cfg: ExperimentConfig, memory_gb: float | None) -> MemoryPlan:
    """Pick slab thickness and probability precision so the big buffers fit ``memory_gb``.

    Without a budget: float32 probabilities up to 256 MB of them, float16 beyond. The input itself,
    the output label map and the network's own activations are not counted.
    """
    in_plane = int(np.prod(sorted(volume.shape)[1:]))  # the two largest axes bound any slice
    # About the network-grid voxel count (a product: the axis order does not matter).
    target = np.prod(np.asarray(volume.shape) * volume.spacing_mm) / np.prod(cfg.preprocess.spacing_mm)
    classes = len(cfg.data.labels)
    fp32_bytes = float(target) * classes * 4
    budget = memory_gb * 1024 ** 3 if memory_gb else None
    limit = budget / 8 if budget else 256 * 1024 ** 2
    dtype = np.float32 if fp32_bytes <= limit else np.float16
    # A slab holds about (classes + 3) float32 planes per slice; give slabs 1/16 of the budget.
    per_slice = in_plane * 4 * (classes + 3)
    slab_bytes = budget / 16 if budget else 128 * 1024 ** 2
    chunk = int(max(1, min(64, slab_bytes // max(per_slice, 1))))
    return MemoryPlan(chunk, dtype)


def network_grid_probabilities(model: Any, volume: Volume, cfg: ExperimentConfig, device: Any = "cpu",
                               progress: bool = False, plan: MemoryPlan | None = None) -> tuple[np.ndarray, Any]:
    """(class probabilities (K, X', Y', Z') on the network grid, ``GridRecord``) of one CT volume:
    preprocessing slab by slab, the optional coarse pass, the sliding window (``plan``'s precision)."""
    plan = plan or plan_memory(volume, cfg, None)
    image, record = preprocess_image_chunked(volume, cfg.preprocess.spacing_mm, cfg.preprocess.hu_window,
                                             chunk=plan.chunk_slices)
    from ..preprocess import standardize_ct  # z-scoring of planned CT runs (intensity_std_hu > 0)

    image = standardize_ct(image, cfg.preprocess.hu_window, cfg.preprocess.intensity_mean_hu,
                           cfg.preprocess.intensity_std_hu)
    if is_torch_module(model):
        model.eval()
    network = as_network(model, device)
    box, reason = (None, "coarse-to-fine off")
    if cfg.infer.coarse_to_fine and cfg.model.spatial_dims == 3:
        box, reason = coarse_region(network, image, cfg, device, progress)
    log.debug("%s: %s", volume.meta.get("path", "volume"), reason)
    if box is None:
        probabilities = network_probabilities(network, image, cfg, device, progress, plan.probability_dtype)
    else:
        inside = network_probabilities(network, np.ascontiguousarray(image[box]), cfg, device, progress,
                                       plan.probability_dtype)
        probabilities = np.zeros((inside.shape[0], *image.shape), dtype=plan.probability_dtype)
        probabilities[0] = 1.0  # outside the box: background
        probabilities[(slice(None), *box)] = inside
        del inside
    return probabilities, record


def _postprocess(labels: np.ndarray, volume: Volume, cfg: ExperimentConfig) -> np.ndarray:
    return postprocess_labels(labels, cfg.data.labels, volume.voxel_volume_ml,
                              largest_component=cfg.infer.largest_component, fill_holes=cfg.infer.fill_holes,
                              min_object_ml=cfg.infer.min_object_ml, copy=False)


def predict_volume(model: Any, volume: Volume, cfg: ExperimentConfig, device: Any = "cpu",
                   progress: bool = False, memory_gb: float | None = None) -> np.ndarray:
    """Segment one CT volume; returns uint8 labels on exactly the volume's grid (post-processed).

    ``model``: a torch module (run on ``device``) or a numpy ``Network`` such as an ONNX session.
    """
    plan = plan_memory(volume, cfg, memory_gb)
    probabilities, record = network_grid_probabilities(model, volume, cfg, device, progress, plan)
    labels = probabilities_to_labels_chunked(probabilities, record, chunk=plan.chunk_slices)
    del probabilities
    return _postprocess(labels, volume, cfg)


# ----------------------------------------------------------------------------- probabilities, ensembles

PROBABILITY_SCALE = 255  # saved probabilities: uint8 value = round(255 p)


@dataclass
class Ensemble:
    """Several models (same label list) whose input-grid probabilities are averaged before the argmax."""

    members: list  # of TrainedModel


def predict_volume_probabilities(members: Sequence["TrainedModel"], volume: Volume, progress: bool = False,
                                 memory_gb: float | None = None,
                                 keep_probabilities: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels, probabilities) of one CT volume from one model or the mean of several.

    ``labels``: uint8 on the volume's grid, the argmax of the (mean) probabilities, then post-processed
    with the first member's ``infer`` settings (largest component, holes, small objects), which may
    change labels: the probabilities are those before post-processing. ``probabilities``: uint8
    (X, Y, Z, K) on exactly the volume's grid (a Fortran-ordered view, as NIfTI stores it), value =
    round(255 p); None unless ``keep_probabilities``.

    One member: each input-grid slab (``gridstream.probabilities_to_input_grid``) gives its argmax
    (float32, ties to the lower label) and its uint8 probabilities; beyond the usual prediction this
    holds K bytes per input voxel. Several: each member's slabs are added, member by member, into one
    uint16 buffer on the input grid (round(p * (65535 // M)) per member: no overflow, steps of under
    2e-5 for up to 256 members), whose argmax gives the labels; peak 2K bytes per input voxel for the
    buffer + K for the uint8 result (3 bytes x 3 labels x 512x512x300 = 708 MB), besides one member's
    network-grid probabilities at a time.
    """
    members = list(members)
    if not members:
        raise ValueError("predict_volume_probabilities needs at least one model")
    cfg = members[0].cfg
    count = len(cfg.data.labels)
    nx, ny, nz = volume.shape

    def storage(dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        """A (K, Z, Y, X) C-ordered buffer: as (X, Y, Z, K) it is Fortran-ordered, as NIfTI writes it."""
        array = np.zeros((count, nz, ny, nx), dtype=dtype)
        return array, array.transpose(0, 3, 2, 1)  # (K, X, Y, Z) view in the input's axis order

    labels = np.empty(volume.shape, dtype=np.uint8)
    if len(members) == 1:
        member = members[0]
        plan = plan_memory(volume, member.cfg, memory_gb)
        grid, record = network_grid_probabilities(member.model, volume, member.cfg, member.device, progress, plan)
        stored, view = storage(np.uint8) if keep_probabilities else (None, None)
        canonical_labels = to_canonical(labels, record.ornt)
        canonical = to_canonical(view, record.ornt) if view is not None else None
        for z0, z1, slab in probabilities_to_input_grid(grid, record, plan.chunk_slices):
            canonical_labels[:, :, z0:z1] = np.argmax(slab, axis=0).astype(np.uint8)
            if canonical is not None:
                canonical[..., z0:z1] = _quantise(slab, PROBABILITY_SCALE, np.uint8)
        del grid
    else:
        step = 65535 // len(members)
        total, view = storage(np.uint16)
        for member in members:
            with_probabilities = getattr(member.model, "segment_volume_with_probabilities", None)
            if with_probabilities is not None:  # a built-in model: its own road gives input-grid uint8
                _, member_uint8, warnings, _ = with_probabilities(volume)
                for message in warnings:  # the ensemble keeps no per-member report: the log says it
                    log.warning("%s: %s", member.model_id, message)
                for k in range(count):
                    view[k] += _quantise(member_uint8[..., k], step / PROBABILITY_SCALE, np.uint16)
                del member_uint8
                continue
            plan = plan_memory(volume, member.cfg, memory_gb)
            grid, record = network_grid_probabilities(member.model, volume, member.cfg, member.device, progress, plan)
            canonical = to_canonical(view, record.ornt)
            for z0, z1, slab in probabilities_to_input_grid(grid, record, plan.chunk_slices):
                canonical[..., z0:z1] += _quantise(slab, step, np.uint16)
            del grid, canonical
        stored = np.empty(total.shape, dtype=np.uint8) if keep_probabilities else None
        chunk = max(1, (64 * 1024 ** 2) // max(1, count * nx * ny * 4))
        for z0 in range(0, nz, chunk):  # slab by slab along the stored Z axis
            part = total[:, z0:z0 + chunk]
            labels[:, :, z0:z0 + chunk] = np.argmax(part, axis=0).transpose(2, 1, 0)
            if stored is not None:
                stored[:, z0:z0 + chunk] = _quantise(part, PROBABILITY_SCALE / (step * len(members)), np.uint8)
        del total
    labels = _postprocess(labels, volume, cfg)
    return labels, (stored.transpose(3, 2, 1, 0) if stored is not None else None)


def _quantise(values: np.ndarray, scale: float, dtype: Any) -> np.ndarray:
    """round(values * scale) as ``dtype`` (values in [0, 1] times scale fit; clipped for float noise)."""
    out = np.multiply(values, scale, dtype=np.float32)
    np.rint(out, out=out)
    np.clip(out, 0, np.iinfo(dtype).max, out=out)
    return out.astype(dtype)


def load_ensemble(paths: Sequence[str | Path | None], device: Any = None, threads: int | None = None,
                  backend: str = "auto") -> "TrainedModel":
    """One ``TrainedModel`` whose ``model`` is an ``Ensemble`` of the models at ``paths`` (run folders,
    exported files or built-in models with the same label list)."""
    from .. import builtin

    members = []
    for path in paths:
        trained = load_model(path, device, threads, backend)
        if getattr(trained.model, "segment_volume", None) is not None and \
                getattr(trained.model, "segment_volume_with_probabilities", None) is None:
            raise InputError(f"--model {path}: a built-in model gives labels, not probabilities, so it cannot be "
                             f"an ensemble member; use run folders or exported models "
                             f"(built-in: {', '.join(builtin.BUILTIN_MODELS)})")
        if trained.cfg.data.modality != "ct":
            raise InputError(f"--model {path}: a {trained.cfg.data.modality} model; ensembles are for CT models")
        first_path, first = (paths[0], members[0]) if members else (path, trained)
        if tuple(trained.cfg.data.labels) != tuple(first.cfg.data.labels):
            raise InputError(f"--model {first_path} (labels {', '.join(first.cfg.data.labels)}) and --model {path} "
                             f"(labels {', '.join(trained.cfg.data.labels)}) have different labels; ensemble "
                             "members must share one label list")
        members.append(trained)
    first = members[0]
    ids = [m.model_id or str(m.checkpoint_path) for m in members]
    return TrainedModel(first.cfg, Ensemble(members), first.checkpoint_path, first.epoch,
                        "ensemble " + "+".join(m.backend for m in members), "ensemble of " + " + ".join(ids),
                        meta={"members": ids}, device=first.device)


# ----------------------------------------------------------------------------- loading a model

BACKENDS = ("auto", "torch", "onnx")


@dataclass
class TrainedModel:
    """A model ready to predict: its config, the network (torch module or exported runtime), an id."""

    cfg: ExperimentConfig
    model: Any  # torch.nn.Module for checkpoints and TorchScript; an ONNX Runtime network otherwise
    checkpoint_path: Path
    epoch: int
    backend: str = "torch"  # torch | torchscript | onnx
    model_id: str = ""
    meta: dict = field(default_factory=dict)
    device: Any = "cpu"  # torch.device for torch backends; "cpu" or "cuda" for ONNX Runtime


def file_digest(path: Path, length: int = 12) -> str:
    """The first ``length`` hex digits of the file's sha256 (model ids, export provenance)."""
    from ..download import file_hash

    return file_hash(path, "sha256")[:length]


def load_trained_model(run_dir: str | Path, device: Any = "cpu") -> TrainedModel:
    """Rebuild the model from a run folder alone (config + checkpoint)."""
    from ..models import build_model, input_channels  # MONAI is imported only for checkpoints

    device = resolve_device(device)
    checkpoint_path, checkpoint, cfg = read_checkpoint(run_dir)
    model = build_model(cfg.model, in_channels=input_channels(cfg), out_channels=len(cfg.data.labels))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    epoch = int(checkpoint.get("epoch", 0))
    model_id = f"{checkpoint_path.parent.name}/{checkpoint_path.name} epoch {epoch} sha256:{file_digest(checkpoint_path)}"
    return TrainedModel(cfg, model, checkpoint_path, epoch, "torch", model_id, device=device)


def nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA driver loaded (checked without importing torch)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def load_model(path: str | Path | None, device: Any = None, threads: int | None = None,
               backend: str = "auto") -> TrainedModel:
    """A run folder, a file (or folder) written by ``liverseg export``, or the name of a built-in model
    (``None``: the default built-in liver model), ready on ``device``.

    ``backend`` applies to run folders: ``torch`` rebuilds the network from the checkpoint; ``onnx``
    runs the folder's ONNX export (``RUN.onnx``, written by ``liverseg train`` at the end of a run, or by
    ``liverseg export``) with ONNX Runtime; ``auto`` (the default) takes that export when it was
    exported from the folder's current checkpoint, onnxruntime is installed and the prediction runs
    on the CPU (``--device cpu``, or ``auto`` on a machine without an NVIDIA GPU), the checkpoint
    otherwise. Measured on 2 CPU threads (``scripts/bench_predict.py``): ONNX Runtime is about twice
    as fast per tile and starts 2.5 s sooner, since it needs no PyTorch.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend!r}: use {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1")
    from .. import builtin

    if path is None:
        path = builtin.DEFAULT_MODEL
    if not Path(path).exists():
        if builtin.is_builtin(str(path)):
            return builtin.load_builtin(str(path), device, threads, backend)
        raise InputError(f"--model {path}: no such run folder or model file, and not a built-in model "
                         f"(built-in: {', '.join(builtin.BUILTIN_MODELS)}; see `liverseg models`)")
    path = Path(path)
    from ..export import is_current_export, load_exported

    if path.is_dir() and not is_run_folder(path):
        exported = find_exported(path)
        if exported is not None:
            path = exported
    if path.is_file():
        return load_exported(path, device, threads)
    if backend != "torch" and path.is_dir():
        onnx_file, why_not = current_onnx_export(path)
        name = str(device or "auto")
        on_cpu = name == "cpu" or (name == "auto" and not nvidia_gpu_present())
        if onnx_file is not None and (backend == "onnx" or on_cpu):
            trained = load_exported(onnx_file, device, threads)
            if is_current_export(trained, path):
                log.debug("%s: predicting with %s (ONNX Runtime)", path, onnx_file.name)
                return trained
            why_not = f"its {onnx_file.name} was exported from another checkpoint than {find_checkpoint(path).name}"
            log.info("%s: %s; predicting with PyTorch (re-export: liverseg export %s)", path, why_not, path)
        if backend == "onnx":
            raise InputError(f"{path}: --backend onnx, but {why_not}; run `liverseg export {path} --format onnx` "
                             "or use --backend torch")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return load_trained_model(path, device)


def resolve_device(name: Any) -> "torch.device":
    """A torch device from a name (``auto``: CUDA when available, else CPU) or a device."""
    import torch

    if isinstance(name, torch.device):
        return name
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
    """Predict each input into ``OUT/<case>/``; returns the ``segmentation.nii.gz`` paths.

    The library form of ``liverseg predict`` for callers that want all or nothing: raises InputError
    naming the failed cases when any failed (the others are written). See ``predict_batch``.
    """
    from .batch import PredictOptions, predict_batch

    result = predict_batch(inputs, out_dir, run_dir, PredictOptions(device=device, threads=threads,
                                                                     progress=progress))
    if result.failed:
        raise InputError("; ".join(f"{case}: {reason}" for case, reason in result.failed))
    return result.segmentations


__all__ = ["sliding_window", "gaussian_importance", "tile_starts", "network_probabilities", "predict_volume",
           "predict_files", "coarse_region", "plan_memory", "softmax_predictor", "softmax", "load_model",
           "load_trained_model", "resolve_device", "TrainedModel", "TorchNetwork",
           "as_network", "average_pool", "BACKENDS", "Ensemble", "load_ensemble",
           "predict_volume_probabilities", "network_grid_probabilities", "PROBABILITY_SCALE"]
