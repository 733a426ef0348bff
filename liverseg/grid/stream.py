"""The two big resampling steps of prediction, slab by slab, in numpy: CT -> network grid, and the
class probabilities back onto the input grid (trilinear, then the argmax).

Whole-volume float32 copies would cost 1 GB each on a 512x512x1000 CT. The functions here compute
the numbers of whole-volume trilinear interpolation (training's ``preprocess.preprocess_image``;
torch's ``interpolate`` for the way back; tests compare both, up to float rounding) while holding
only a slab of ``chunk`` output slices along the canonical last (S) axis at a time:

* linear interpolation with ``align_corners=False`` is separable: a two-sample blend along each axis
  in turn, with torch's source-index rule ``src = (dst + 0.5) * in / out - 0.5`` (clamped at 0);
* the anti-aliasing Gaussian is separable too; on the way in, the Gaussian and the interpolation of
  each axis are one small matrix (``resample_matrix``), so a slab reads exactly the input slices its
  output needs and the full-volume result comes out.

Plain numpy (no torch), so that prediction from an exported ONNX model starts without importing
PyTorch, which is two of the few seconds a small CT takes end to end.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..io.volume import Volume
from .preprocess import GridRecord, plan_grid, to_canonical

_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default


def linear_source(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: (lower source index, upper source index, weight of the upper one).

    The rule of ``torch.nn.functional.interpolate(mode="linear", align_corners=False)`` with a size.
    """
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _blend(array: np.ndarray, axis: int, lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``array`` sampled along ``axis`` at ``lo + w * (hi - lo)`` (linear, float32)."""
    low = np.take(array, lo, axis=axis)
    high = np.take(array, hi, axis=axis)
    shape = [1] * array.ndim
    shape[axis] = len(w)
    high -= low
    high *= w.reshape(shape)
    low += high
    return low


def resize_linear(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Linear resize of one axis of a float32 array to ``size`` samples (torch's rule, see above)."""
    if array.shape[axis] == size:
        return array
    return _blend(array, axis, *linear_source(array.shape[axis], size))


def _resize_slab(slab: np.ndarray, size: tuple[int, int], lo: np.ndarray, hi: np.ndarray,
                 w: np.ndarray) -> np.ndarray:
    """Resize the last three axes of ``slab``: in-plane to ``size``, along S by the (lo, hi, w) blend.

    Whichever order touches fewer voxels: S first when the slab loses slices, in-plane first else.
    """
    x, y, z = slab.ndim - 3, slab.ndim - 2, slab.ndim - 1
    if len(w) < slab.shape[z]:
        slab = _blend(slab, z, lo, hi, w)
        return resize_linear(resize_linear(slab, x, size[0]), y, size[1])
    slab = resize_linear(resize_linear(slab, x, size[0]), y, size[1])
    return _blend(slab, z, lo, hi, w)


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of ``scipy.ndimage.gaussian_filter1d(mode="nearest", truncate=4)`` on one axis."""
    radius = int(_TRUNCATE * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    matrix = np.zeros((n, n), dtype=np.float64)
    rows = np.arange(n)
    for offset, weight in zip(range(-radius, radius + 1), taps):
        np.add.at(matrix, (rows, np.clip(rows + offset, 0, n - 1)), weight)  # 'nearest': the edge repeats
    return matrix


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 matrix of one axis' resampling: the anti-aliasing Gaussian (sigma = (f - 1) / 2
    for a shrink factor f > 1, as ``preprocess.resample``) followed by linear interpolation (torch's rule).

    Both steps are linear, so they compose into one small matrix: each output sample is computed once,
    from the input directly, instead of blurring every input voxel first and then interpolating.
    """
    lo, hi, w = linear_source(n_in, n_out)
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, lo), 1.0 - w)
    np.add.at(matrix, (rows, hi), w)
    factor = n_in / n_out
    if factor > 1.0:
        matrix = matrix @ gaussian_matrix(n_in, (factor - 1.0) / 2.0)
    return matrix.astype(np.float32)


def preprocess_image_chunked(volume: Volume, spacing_mm: tuple[float, float, float],
                             hu_window: tuple[float, float], chunk: int = 32) -> tuple[np.ndarray, GridRecord]:
    """``preprocess.preprocess_image`` computed ``chunk`` network-grid slices at a time (float32 array).

    Per slab: clip and scale the HU window (before any filtering, as training does), then one product
    per axis with that axis' ``resample_matrix`` (Gaussian anti-aliasing and linear interpolation in
    one banded matrix; sparse in-plane): every output voxel is computed once, from the input directly.
    Measured on a 512x512x119 CT to 1.5 x 1.5 x 2 mm: 0.3 s instead of 1.9 s for a Gaussian filter
    followed by interpolation.
    """
    from scipy import sparse

    record = plan_grid(volume, spacing_mm)
    canonical = to_canonical(volume.array, record.ornt)
    (nx, ny, _), (tx, ty, tz) = record.canonical_shape, record.target_shape
    mx, my, mz = (resample_matrix(n, t) for n, t in zip(record.canonical_shape, record.target_shape))
    mx, my = sparse.csr_matrix(mx), sparse.csr_matrix(my)
    low, high = float(hu_window[0]), float(hu_window[1])
    out = np.empty((tx, ty, tz), dtype=np.float32)
    for z0 in range(0, tz, max(1, chunk)):
        z1 = min(tz, z0 + max(1, chunk))
        rows = mz[z0:z1]
        used = np.flatnonzero(np.abs(rows).sum(axis=0) > 0)
        a, b = int(used[0]), int(used[-1]) + 1
        slab = np.ascontiguousarray(canonical[:, :, a:b]).astype(np.float32)
        np.clip(slab, low, high, out=slab)
        slab -= low
        slab /= (high - low)
        slab = slab.reshape(-1, b - a) @ rows[:, a:b].T  # along S: (X * Y, z1 - z0)
        slab = np.asarray(mx @ slab.reshape(nx, -1), dtype=np.float32).reshape(tx, ny, z1 - z0)
        slab = np.ascontiguousarray(slab.transpose(1, 0, 2)).reshape(ny, -1)
        slab = np.asarray(my @ slab, dtype=np.float32).reshape(ty, tx, z1 - z0)
        out[:, :, z0:z1] = slab.transpose(1, 0, 2)
    return out, record


def probabilities_to_input_grid(probabilities: np.ndarray, record: GridRecord,
                                chunk: int = 32) -> Iterator[tuple[int, int, np.ndarray]]:
    """Class probabilities (K, X', Y', Z') on the network grid -> slabs on the input grid, trilinear.

    Yields ``(z0, z1, slab)``: float32 (K, X, Y, z1 - z0), slices [z0, z1) of the input grid in its
    canonical (RAS) axis order (``preprocess.to_canonical`` of an input-grid array gives the matching
    view). Only one slab of ``chunk`` slices exists at a time; ``probabilities`` may be float16.
    """
    probabilities = np.asarray(probabilities)
    nx, ny, nz = record.canonical_shape
    tz = record.target_shape[2]
    lo, hi, w = linear_source(tz, nz)
    for z0 in range(0, nz, max(1, chunk)):
        z1 = min(nz, z0 + max(1, chunk))
        need_lo, need_hi = int(lo[z0:z1].min()), int(hi[z0:z1].max()) + 1
        slab = probabilities[..., need_lo:need_hi].astype(np.float32)
        yield z0, z1, _resize_slab(slab, (nx, ny), lo[z0:z1] - need_lo, hi[z0:z1] - need_lo, w[z0:z1])


def probabilities_to_labels_chunked(probabilities: np.ndarray, record: GridRecord,
                                    chunk: int = 32) -> np.ndarray:
    """Class probabilities (K, X', Y', Z') on the network grid -> uint8 labels on the input grid,
    ``chunk`` input-grid slices at a time (``probabilities_to_input_grid``).

    Probabilities, not labels, are resampled back (trilinear) before the argmax: smoother boundaries
    on a finer input grid. ``probabilities`` may be float16 (converted slab by slab). Ties go to the
    lower class.
    """
    labels = np.empty(record.original_shape, dtype=np.uint8)
    canonical = to_canonical(labels, record.ornt)  # a view: slabs are written straight into ``labels``
    for z0, z1, slab in probabilities_to_input_grid(probabilities, record, chunk):
        canonical[:, :, z0:z1] = np.argmax(slab, axis=0).astype(np.uint8)
    return labels


__all__ = ["linear_source", "resize_linear", "resample_matrix", "preprocess_image_chunked",
           "probabilities_to_labels_chunked", "probabilities_to_input_grid"]
