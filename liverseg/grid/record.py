"""Where the network grid sits relative to an input's grid: the record, and the geometry behind it.

Forward: reorient the voxel axes to the closest RAS axes (an exact permutation/flip, no
interpolation), then resample to ``spacing_mm``. ``plan_grid`` computes both steps' grids without
touching any voxel and keeps them in a ``GridRecord``, so a prediction can be mapped back onto
exactly the input grid: same shape, and the same affine by construction.

Resampling keeps the physical extent of the volume: the new grid has ``round(n * s / t)`` voxels
whose size is adjusted to ``s * n / n'`` so that the first and last voxel faces stay where they
were. That is the convention of ``torch.nn.functional.interpolate(align_corners=False)``, so the
forward and inverse resampling use the same map in opposite directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.volume import Volume, axis_orientation, spacing_from_affine


@dataclass(frozen=True)
class GridRecord:
    """Where the network grid sits relative to the input grid (enough to invert exactly)."""

    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    ornt: np.ndarray  # nibabel orientation: row i = (canonical axis of input axis i, +1 or -1)
    canonical_shape: tuple[int, int, int]
    canonical_affine: np.ndarray
    target_shape: tuple[int, int, int]
    target_affine: np.ndarray

    @property
    def target_spacing_mm(self) -> np.ndarray:
        return spacing_from_affine(self.target_affine)


# ----------------------------------------------------------------------------- orientation

def canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """For each array axis, the RAS axis it points closest to and whether it runs backwards."""
    return axis_orientation(affine)


def to_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Reorder the last three axes of ``array`` so they run along R, A, S (exact, a view if possible)."""
    lead = array.ndim - 3
    for axis in range(3):
        if ornt[axis, 1] == -1:
            array = np.flip(array, axis=lead + axis)
    perm = np.argsort(ornt[:, 0])  # canonical axis k comes from input axis perm[k]
    return np.transpose(array, tuple(range(lead)) + tuple(lead + int(p) for p in perm))


def from_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Exact inverse of ``to_canonical``."""
    lead = array.ndim - 3
    # input axis i sits at canonical axis ornt[i, 0]
    array = np.transpose(array, tuple(range(lead)) + tuple(lead + int(ornt[i, 0]) for i in range(3)))
    for axis in range(3):
        if ornt[axis, 1] == -1:
            array = np.flip(array, axis=lead + axis)
    return array


def canonical_affine(affine: np.ndarray, shape: tuple[int, ...], ornt: np.ndarray) -> np.ndarray:
    """Affine of the canonical array: original affine composed with the index permutation/flip."""
    index_map = np.zeros((4, 4))  # original index = index_map @ canonical index
    index_map[3, 3] = 1.0
    for axis in range(3):
        k, flip = int(ornt[axis, 0]), int(ornt[axis, 1])
        index_map[axis, k] = flip
        index_map[axis, 3] = 0.0 if flip == 1 else shape[axis] - 1
    return np.asarray(affine, dtype=np.float64) @ index_map


# ----------------------------------------------------------------------------- the network grid

def target_grid(shape: tuple[int, ...], affine: np.ndarray,
                spacing_mm: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the grid with (about) ``spacing_mm`` covering the same extent."""
    spacing = spacing_from_affine(affine)
    new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, spacing_mm))
    factor = np.array(shape, dtype=np.float64) / np.array(new_shape, dtype=np.float64)
    # new voxel j sits at old continuous index (j + 0.5) * factor - 0.5
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(factor)
    index_map[:3, 3] = (factor - 1.0) / 2.0
    return new_shape, np.asarray(affine, dtype=np.float64) @ index_map  # type: ignore[return-value]


def plan_grid(volume: Volume, spacing_mm: tuple[float, float, float]) -> GridRecord:
    """The record of ``volume``'s way onto the network grid of ``spacing_mm`` (no voxel is touched)."""
    ornt = canonical_ornt(volume.affine_ras)
    perm = np.argsort(ornt[:, 0])
    canonical_shape = tuple(int(volume.shape[p]) for p in perm)
    canon_affine = canonical_affine(volume.affine_ras, volume.shape, ornt)
    target_shape, target_affine = target_grid(canonical_shape, canon_affine, spacing_mm)
    return GridRecord(volume.shape, volume.affine_ras.copy(), ornt, canonical_shape,  # type: ignore[arg-type]
                      canon_affine, target_shape, target_affine)


def original_affine_from_record(record: GridRecord) -> np.ndarray:
    """Recompute the input affine from the canonical one (used by tests to prove invertibility)."""
    ornt = record.ornt
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    for axis in range(3):
        k, flip = int(ornt[axis, 0]), int(ornt[axis, 1])
        # canonical index k = original index (flip 1) or n-1-original index (flip -1)
        index_map[k, axis] = flip
        index_map[k, 3] = 0.0 if flip == 1 else record.original_shape[axis] - 1
    return record.canonical_affine @ index_map


__all__ = ["GridRecord", "canonical_ornt", "to_canonical", "from_canonical", "canonical_affine", "target_grid",
           "plan_grid", "original_affine_from_record"]
