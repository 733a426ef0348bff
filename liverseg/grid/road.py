"""The one invertible road between an input's grid and the network's grid, for training, validation and
prediction alike.

Forward, ``to_network_grid``: reorient to the closest RAS axes (exact), clip the HU window and scale
it (to [0, 1], or to z-scores when ``intensity_std_hu`` > 0), resample to ``spacing_mm`` (linear with
anti-aliasing), slab by slab; it returns the image and the ``GridRecord`` of what it did. Training's
labels follow the same record, ``labels_to_network_grid`` (nearest neighbour). Back,
``probabilities_to_input_grid`` / ``probabilities_to_labels``: class probabilities are resampled
(trilinear) onto exactly the input grid before the argmax, for smoother boundaries on a finer input
grid than labels resampled with nearest neighbour would give.

Everything is numpy: prediction from an exported ONNX model never imports PyTorch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..config import PreprocessConfig
from ..errors import GeometryError
from ..io.volume import Volume
from .record import GridRecord, plan_grid, to_canonical
from .resample import linear_source, resample_image, resample_labels, resize_slab


# ----------------------------------------------------------------------------- intensities

def intensity_map(preprocess: PreprocessConfig) -> tuple[float, float, float, float]:
    """(low, high, offset, divisor): CT intensities become ``(clip(HU, low, high) - offset) / divisor``.

    The HU window scaled to [0, 1]; or, when ``intensity_std_hu`` > 0, z-scores of the clipped HU,
    (HU - mean) / std (nnU-Net's CT normalisation; planned by ``liverseg plan``).
    """
    low, high = float(preprocess.hu_window[0]), float(preprocess.hu_window[1])
    if preprocess.intensity_std_hu > 0:
        return low, high, float(preprocess.intensity_mean_hu), float(preprocess.intensity_std_hu)
    return low, high, low, high - low


def normalize_ct(hu: np.ndarray, preprocess: PreprocessConfig) -> np.ndarray:
    """CT intensities (any shape) -> float32 network intensities (``intensity_map``)."""
    return _normalize_in_place(np.array(hu, dtype=np.float32), intensity_map(preprocess))


def _normalize_in_place(array: np.ndarray, mapping: tuple[float, float, float, float]) -> np.ndarray:
    low, high, offset, divisor = mapping
    np.clip(array, low, high, out=array)
    array -= offset
    array /= divisor
    return array


# ----------------------------------------------------------------------------- onto the network grid

def to_network_grid(volume: Volume, preprocess: PreprocessConfig, *,
                    chunk: int = 32) -> tuple[np.ndarray, GridRecord]:
    """CT volume -> (normalised float32 (X', Y', Z') array on the network grid, its ``GridRecord``).

    ``chunk`` network-grid slices are computed at a time (memory; the result does not depend on it).
    Intensities are clipped before any filtering: bone and air extremes do not ring into soft tissue.
    The z-scoring is an affine map, so it commutes with the resampling (whose weights sum to 1).
    """
    record = plan_grid(volume, preprocess.spacing_mm)
    mapping = intensity_map(preprocess)
    canonical = to_canonical(volume.array, record.ornt)
    image = resample_image(canonical, record.target_shape, lambda slab: _normalize_in_place(slab, mapping), chunk)
    return image, record


def remap_labels(array: np.ndarray, remap: dict[int, int]) -> np.ndarray:
    """Apply ``{source value: class index}``; unlisted values keep their value (int16)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise ValueError("label map holds non-integer values")
        array = rounded
    array = array.astype(np.int16)
    if not remap:
        return array
    out = array.copy()
    for source, target in remap.items():
        out[array == source] = target
    return out


def labels_to_network_grid(labels: Volume | np.ndarray, record: GridRecord) -> np.ndarray:
    """A label map on the input grid (a ``Volume`` or its array) -> int16 (X', Y', Z') on the network
    grid of ``record``, by nearest neighbour (labels are never interpolated)."""
    array = labels.array if isinstance(labels, Volume) else np.asarray(labels)
    if tuple(array.shape) != tuple(record.original_shape):
        raise GeometryError(f"label map of shape {tuple(array.shape)} on an image grid of shape "
                            f"{tuple(record.original_shape)}; place it on the image's grid first")
    canonical = to_canonical(array, record.ornt)
    return np.ascontiguousarray(resample_labels(canonical, record.target_shape).astype(np.int16, copy=False))


# ----------------------------------------------------------------------------- back to the input grid

def probabilities_to_input_grid(probabilities: np.ndarray, record: GridRecord,
                                chunk: int = 32) -> Iterator[tuple[int, int, np.ndarray]]:
    """Class probabilities (K, X', Y', Z') on the network grid -> slabs on the input grid, trilinear.

    Yields ``(z0, z1, slab)``: float32 (K, X, Y, z1 - z0), slices [z0, z1) of the input grid in its
    canonical (RAS) axis order (``grid.record.to_canonical`` of an input-grid array gives the matching
    view). Only one slab of ``chunk`` slices exists at a time; ``probabilities`` may be float16.
    """
    probabilities = np.asarray(probabilities)
    nx, ny, nz = record.canonical_shape
    tz = record.target_shape[2]
    lo, hi, w = linear_source(tz, nz)
    step = max(1, chunk)
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        need_lo, need_hi = int(lo[z0:z1].min()), int(hi[z0:z1].max()) + 1
        slab = probabilities[..., need_lo:need_hi].astype(np.float32)
        yield z0, z1, resize_slab(slab, (nx, ny), lo[z0:z1] - need_lo, hi[z0:z1] - need_lo, w[z0:z1])


def probabilities_to_labels(probabilities: np.ndarray, record: GridRecord, chunk: int = 32) -> np.ndarray:
    """Class probabilities (K, X', Y', Z') on the network grid -> uint8 labels on exactly the input grid,
    ``chunk`` input-grid slices at a time (``probabilities_to_input_grid``, then the argmax).

    ``probabilities`` may be float16 (converted slab by slab). Ties go to the lower class.
    """
    labels = np.empty(record.original_shape, dtype=np.uint8)
    canonical = to_canonical(labels, record.ornt)  # a view: slabs are written straight into ``labels``
    for z0, z1, slab in probabilities_to_input_grid(probabilities, record, chunk):
        canonical[:, :, z0:z1] = np.argmax(slab, axis=0).astype(np.uint8)
    return labels


__all__ = ["intensity_map", "normalize_ct", "to_network_grid", "remap_labels", "labels_to_network_grid",
           "probabilities_to_input_grid", "probabilities_to_labels"]
