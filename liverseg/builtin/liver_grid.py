"""The built-in liver model's 3 mm grid (steps 2, 3 and 6 of ``kul_liver``): the body box, the windows
along S, the original's resampling and scaling onto the grid, and the way back, the grid's probability
interpolated linearly onto the input's own voxels."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..engine.postprocess import keep_largest_component_inplace
from ..grid.record import to_canonical
from .zoom import median3, zoom3d, zoom_axis, zoomed_size

NETWORK_SPACING_MM = 3.0
MEDIAN_SPACING_MM = 1.5
PATCH = (189, 162, 162)  # the original's fixed input patch (R, A, S voxels at 3 mm)
MARGIN = 13  # voxels the network's output loses on every side of its input
OUTPUT = tuple(p - 2 * MARGIN for p in PATCH)  # 163 x 136 x 136 voxels: what one patch can segment
MAX_EXTENT_MM = tuple(o * NETWORK_SPACING_MM for o in OUTPUT)  # 489 x 408 x 408 mm
BODY_HU = -500.0
BODY_MARGIN_MM = 10.0


def scale_hu(hu: np.ndarray) -> np.ndarray:
    """The original's CT intensity scaling, clip(HU / 1000, -0.2, 0.2) * 2.5, in place on float32."""
    hu /= 1000.0
    np.clip(hu, -0.2, 0.2, out=hu)
    hu *= 2.5
    return hu


# ----------------------------------------------------------------------------- body box and windows

def body_box(canonical: np.ndarray, spacing_mm: Sequence[float]) -> tuple[slice, slice, slice] | None:
    """Bounding box of the body (largest component above -500 HU after an in-plane opening), plus 10 mm.

    Found on a copy strided to about 4 mm voxels (milliseconds on a 512x512x500 CT); None when no voxel
    is above -500 HU.
    """
    from scipy import ndimage

    step = [max(1, int(round(4.0 / s))) for s in spacing_mm]
    coarse = canonical[::step[0], ::step[1], ::step[2]] > BODY_HU
    if not coarse.any():
        return None
    opened = ndimage.binary_opening(coarse, structure=np.ones((3, 3, 1), dtype=bool))
    if opened.any():  # thin things (table, tubes, clothing) go; a tiny field of view keeps what it has
        coarse = opened
    components, _ = ndimage.label(coarse, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    box = ndimage.find_objects((components == sizes.argmax()).astype(np.uint8))[0]
    out = []
    for sl, st, n, sp in zip(box, step, canonical.shape, spacing_mm):
        margin = int(math.ceil(BODY_MARGIN_MM / sp))
        out.append(slice(max(0, sl.start * st - margin), min(n, (sl.stop - 1) * st + st + margin)))
    # in-plane: no more than one patch can segment, cut around the centre
    for axis in (0, 1):
        limit = int(math.floor(MAX_EXTENT_MM[axis] / spacing_mm[axis]))
        size = out[axis].stop - out[axis].start
        if size > limit:
            start = out[axis].start + (size - limit) // 2
            out[axis] = slice(start, start + limit)
    return tuple(out)  # type: ignore[return-value]


def windows(length: int, limit: int, overlap: int) -> list[slice]:
    """Windows of at most ``limit`` covering ``range(length)``, neighbours overlapping by ``overlap``."""
    if length <= limit:
        return [slice(0, length)]
    count = math.ceil((length - overlap) / (limit - overlap))
    return [slice(s, s + limit) for s in (int(round(i * (length - limit) / (count - 1))) for i in range(count))]


# ----------------------------------------------------------------------------- the 3 mm grid

@dataclass(frozen=True)
class Grid:
    """A grid resampled from a canonical box with ``zoom3d``'s rules, centred on the box.

    The liver model's 3 mm grid (``Grid.of``: ``ceil(ceil(n * s / 1.5) / 2)`` voxels per axis, the
    1.5 mm step and then 3 mm) or any direct one (``Grid.direct``: ``ceil(n * s / t)`` voxels)."""

    box: tuple[slice, slice, slice]  # canonical voxels
    spacing_mm: tuple[float, float, float]  # canonical voxel size
    shape: tuple[int, int, int]
    network_mm: tuple[float, float, float] = (NETWORK_SPACING_MM,) * 3  # this grid's voxel size

    @classmethod
    def of(cls, box: Sequence[slice], spacing_mm: Sequence[float]) -> "Grid":
        shape = tuple(zoomed_size(zoomed_size(b.stop - b.start, float(s) / MEDIAN_SPACING_MM),
                                  MEDIAN_SPACING_MM / NETWORK_SPACING_MM) for b, s in zip(box, spacing_mm))
        return cls(tuple(box), tuple(float(s) for s in spacing_mm), shape)  # type: ignore[arg-type]

    @classmethod
    def direct(cls, box: Sequence[slice], spacing_mm: Sequence[float], network_mm: Sequence[float]) -> "Grid":
        shape = tuple(zoomed_size(b.stop - b.start, float(s) / float(t)) for b, s, t in zip(box, spacing_mm, network_mm))
        return cls(tuple(box), tuple(float(s) for s in spacing_mm), shape,  # type: ignore[arg-type]
                   tuple(float(t) for t in network_mm))  # type: ignore[arg-type]

    @property
    def zoom(self) -> tuple[float, float, float]:
        return tuple(s / t for s, t in zip(self.spacing_mm, self.network_mm))  # type: ignore[return-value]

    def position(self, axis: int, canonical_index: np.ndarray) -> np.ndarray:
        """Continuous grid index of canonical voxel centres (for ``Grid.of`` the two zooms compose to this map)."""
        b = self.box[axis]
        n = b.stop - b.start
        ratio = self.spacing_mm[axis] / self.network_mm[axis]
        return (np.asarray(canonical_index, dtype=np.float64) - b.start - (n - 1) / 2.0) * ratio + self.shape[axis] / 2.0 - 0.5

    def canonical_range(self, axis: int, grid_slice: slice) -> slice:
        """Canonical voxels whose grid position lies in ``grid_slice`` (widened by one grid voxel)."""
        b = self.box[axis]
        index = np.arange(b.start, b.stop)
        pos = self.position(axis, index)
        inside = index[(pos > grid_slice.start - 1.0) & (pos < grid_slice.stop)]
        return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(b.start, b.start)


def resample_body(canonical: np.ndarray, grid: Grid, threads: int | None = None, slab: int = 64) -> np.ndarray:
    """The original's resampling and scaling of the body box onto ``grid`` (float32, 3 mm).

    The in-plane zooms run ``slab`` slices at a time (they do not mix slices), so the body box never
    exists whole in float32: a 512x512x1000 CT would otherwise hold 0.6 GB more at this step."""
    zoom = tuple(s / MEDIAN_SPACING_MM for s in grid.spacing_mm)
    box = grid.box
    depth = box[2].stop - box[2].start
    planes = None
    for z0 in range(0, depth, slab):
        part = np.asarray(canonical[box[0], box[1], box[2].start + z0: box[2].start + min(depth, z0 + slab)],
                          dtype=np.float32)
        part = zoom_axis(zoom_axis(part, 0, zoom[0]), 1, zoom[1])
        if planes is None:
            planes = np.empty((*part.shape[:2], depth), dtype=np.float32)
        planes[:, :, z0:z0 + part.shape[2]] = part
    fine = np.ascontiguousarray(zoom_axis(planes, 2, zoom[2]))
    del planes
    fine = median3(fine, threads)
    image = zoom3d(fine, (MEDIAN_SPACING_MM / NETWORK_SPACING_MM,) * 3)
    assert image.shape == grid.shape, (image.shape, grid.shape)
    return scale_hu(image)


def probability_to_labels(probability: np.ndarray, grid: Grid, ornt: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The 3 mm probability -> uint8 liver labels on the input grid (linear, > 0.5, largest component)."""
    labels = np.zeros(shape, dtype=np.uint8)
    found = interpolate_mask(probability, grid)
    if found is not None:
        to_canonical(labels, ornt)[found[0]] = found[1]  # a view: writes land in ``labels``
        keep_largest_component_inplace(labels, 1)
    return labels


def interpolate_mask(probability: np.ndarray, grid: Grid, threshold: float = 0.5
                     ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Where the probability on ``grid``, interpolated linearly onto the canonical voxels, exceeds
    ``threshold``: (canonical box, boolean mask in it); None when no grid voxel reaches it."""
    found = interpolate(probability, grid, threshold)
    return None if found is None else (found[0], found[1] > threshold)


def probability_on_input(probability: np.ndarray, grid: Grid, ornt: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The grid's probability interpolated linearly onto the input's voxels, as uint8 ``round(255 p)``
    (0 where no grid voxel reaches 1/510)."""
    out = np.zeros(shape, dtype=np.uint8)
    found = interpolate(probability, grid, 0.5 / 255.0)
    if found is not None:
        to_canonical(out, ornt)[found[0]] = np.rint(np.clip(found[1], 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def interpolate(probability: np.ndarray, grid: Grid, threshold: float
                ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """The probability on ``grid`` interpolated linearly onto the canonical voxels of the bounding box of
    the grid voxels at or above ``threshold`` (plus one voxel; a blend of values below the threshold
    stays below it): (canonical box, values); None when no grid voxel reaches it."""
    hits = probability >= threshold
    if not hits.any():
        return None
    box = []
    for axis in range(3):
        h = np.flatnonzero(hits.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, int(h[0]) - 1), min(grid.shape[axis], int(h[-1]) + 2)))
    ranges = [grid.canonical_range(axis, box[axis]) for axis in range(3)]
    values = probability[tuple(box)]
    for axis in range(3):
        pos = grid.position(axis, np.arange(ranges[axis].start, ranges[axis].stop)) - box[axis].start
        pos = np.clip(pos, 0.0, values.shape[axis] - 1)
        low = np.floor(pos).astype(np.int64)
        high = np.minimum(low + 1, values.shape[axis] - 1)
        weight = (pos - low).astype(np.float32)
        wshape = [1, 1, 1]
        wshape[axis] = -1
        lo = np.take(values, low, axis=axis)
        hi = np.take(values, high, axis=axis)
        hi -= lo
        hi *= weight.reshape(wshape)
        lo += hi
        values = lo
    return tuple(ranges), values  # type: ignore[return-value]


__all__ = ["NETWORK_SPACING_MM", "MEDIAN_SPACING_MM", "PATCH", "MARGIN", "OUTPUT", "MAX_EXTENT_MM", "scale_hu",
           "body_box", "windows", "Grid", "resample_body", "probability_to_labels", "interpolate_mask",
           "probability_on_input", "interpolate"]
