"""Tiling and blending: a network on overlapping tiles of an array, Gaussian-weighted, with flip TTA.

A network is any callable from a float32 batch (N, C, *tile) to logits (N, K, *tile). PyTorch modules
are wrapped (``TorchNetwork``, the only place here that imports torch); an ONNX Runtime session
(``sources.OnnxNetwork``) is called directly, so prediction from an exported model never imports
PyTorch (2.5 s of start-up on the 2-core development machine, as much as the whole prediction of a
small CT).

The sliding window keeps a rolling float32 buffer one tile deep and can store the blended
probabilities as float16 (``volume.plan_memory`` decides). Used for CT volumes (``volume``), for 2D
models slice by slice, and for photographs (``liverseg.modalities.photo``).
"""
from __future__ import annotations

import itertools
import math
import sys
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..config import ExperimentConfig

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


# ----------------------------------------------------------------------------- a preprocessed array

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


__all__ = ["Network", "Predictor", "is_torch_module", "as_numpy", "TorchNetwork", "as_network", "softmax",
           "gaussian_importance", "tile_starts", "sliding_window", "softmax_predictor", "fit_tile",
           "network_probabilities"]
