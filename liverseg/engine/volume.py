"""Prediction of one CT volume: coarse-to-fine, memory plan, probabilities back on the input grid.

Everything between reading the CT and writing the labels is numpy: the network is any ``tiling.Network``
(a torch module is wrapped), so prediction from an exported ONNX model never imports PyTorch.

Memory on a large CT (512x512x1000) stays bounded: the image is resampled to the network grid slab by
slab (``grid.road``), the sliding window (``tiling``) keeps a rolling float32 buffer one tile deep and
stores the blended probabilities as float16 when the memory budget asks for it (``plan_memory``), and
the probabilities are mapped back to the input grid (trilinear, before the argmax) slab by slab.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..config import ExperimentConfig
from ..io.volume import Volume
from .postprocess import postprocess_labels
from ..grid.record import to_canonical
from ..grid.road import probabilities_to_input_grid, probabilities_to_labels, to_network_grid
from .tiling import as_network, as_numpy, is_torch_module, network_probabilities

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- labels of one volume

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
    image, record = to_network_grid(volume, cfg.preprocess, chunk=plan.chunk_slices)
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
    labels = probabilities_to_labels(probabilities, record, chunk=plan.chunk_slices)
    del probabilities
    return _postprocess(labels, volume, cfg)


# ----------------------------------------------------------------------------- probabilities, ensembles

PROBABILITY_SCALE = 255  # saved probabilities: uint8 value = round(255 p)


def predict_volume_probabilities(members: Sequence[Any], volume: Volume, progress: bool = False,
                                 memory_gb: float | None = None,
                                 keep_probabilities: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels, probabilities) of one CT volume from one model or the mean of several.

    ``members``: ``loaded.TrainedModel`` objects (an ``Ensemble``'s). ``labels``: uint8 on the volume's
    grid, the argmax of the (mean) probabilities, then post-processed with the first member's ``infer``
    settings (largest component, holes, small objects), which may change labels: the probabilities are
    those before post-processing. ``probabilities``: uint8
    (X, Y, Z, K) on exactly the volume's grid (a Fortran-ordered view, as NIfTI stores it), value =
    round(255 p); None unless ``keep_probabilities``.

    One member: each input-grid slab (``grid.road.probabilities_to_input_grid``) gives its argmax
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


__all__ = ["average_pool", "coarse_region", "MemoryPlan", "plan_memory", "network_grid_probabilities",
           "predict_volume", "PROBABILITY_SCALE", "predict_volume_probabilities"]
