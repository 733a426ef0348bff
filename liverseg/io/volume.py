"""``Volume``: a voxel array plus the 4x4 affine that places it in patient space.

Convention, everywhere in liverseg:

* ``array`` is indexed ``[i, j, k]`` in the order of the file's voxel axes (SimpleITK's x, y, z
  index order, which is nibabel's array order).
* ``affine_ras`` maps a voxel index ``(i, j, k, 1)`` to RAS+ millimetres (x grows towards the
  patient's Right, y towards Anterior, z towards Superior), as nibabel and MONAI use.

SimpleITK, ITK, NRRD and DICOM describe geometry in LPS+ (x grows towards the patient's Left,
y towards Posterior). The sign flip between the two lives in this
file and nowhere else (``LPS_TO_RAS``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Diagonal flip that turns LPS+ coordinates into RAS+ ones (and back: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class DicomSource:
    """The DICOM series a Volume was read from, as a DICOM SEG of labels on its grid references it.

    Filled by the DICOM reader (``dicom.assembly.load_series``); None on volumes from other formats.
    """

    path: str                            # the folder (or multi-frame file) that was read
    series_uid: str | None               # None for a series without SeriesInstanceUID
    slice_files: tuple[str, ...] | None  # the file of each voxel slice k; None when the grid was corrected
    corrections: tuple[str, ...] = ()    # why the grid is not the slices' own (gaps, spacing, tilt)


@dataclass
class Volume:
    """A 3D voxel array on a grid described by ``affine_ras``.

    ``meta`` carries facts about the source (path, format, DICOM series UID, ...) that outputs
    may want to repeat; geometry never lives there. ``dicom``: the source series' references a
    writer needs (DICOM SEG), for a volume read from DICOM.
    """

    array: np.ndarray
    affine_ras: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    dicom: DicomSource | None = None

    def __post_init__(self) -> None:
        self.affine_ras = np.asarray(self.affine_ras, dtype=np.float64)
        if self.affine_ras.shape != (4, 4):
            raise ValueError(f"affine_ras must be 4x4, got shape {self.affine_ras.shape}")
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D, got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> np.ndarray:
        return spacing_from_affine(self.affine_ras)

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine_ras[:3, :3])) / 1000.0)

    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """The same grid holding another array (shape must match)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {tuple(array.shape)} does not match the grid {self.shape}")
        return Volume(array, self.affine_ras.copy(), {**self.meta, **meta}, self.dicom)

    def same_grid(self, other: "Volume", atol_mm: float = 1e-4) -> bool:
        return self.shape == other.shape and bool(
            np.allclose(self.affine_ras, other.affine_ras, atol=atol_mm, rtol=0))


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis: the length of each affine column."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def affine_from_lps(spacing: Any, origin: Any, direction: Any) -> np.ndarray:
    """RAS affine from ITK-style LPS geometry (spacing, origin, row-major 3x3 direction)."""
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.asarray(spacing, dtype=np.float64)[None, :]
    affine_lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return LPS_TO_RAS @ affine_lps


def lps_from_affine(affine_ras: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """ITK-style (spacing, origin, row-major direction) in LPS from a RAS affine."""
    affine_lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
    spacing = spacing_from_affine(affine_lps)
    direction = affine_lps[:3, :3] / spacing[None, :]
    origin = affine_lps[:3, 3]
    return (tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
            tuple(float(d) for d in direction.ravel()))


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Apply an affine to an (..., 3) array of voxel coordinates."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def axis_orientation(affine: np.ndarray) -> np.ndarray:
    """For each voxel axis: (the RAS axis it runs closest to, +1 or -1), as an int (3, 2) array.

    nibabel's ``io_orientation`` algorithm (polar decomposition; then, voxel axes taken from the most
    to the least clearly aligned, each gets the largest remaining entry of its column), written out
    here because importing nibabel costs half a second of every ``liverseg predict`` start;
    ``tests/test_geometry.py`` checks both agree.
    """
    rzs = np.asarray(affine, dtype=np.float64)[:3, :3]
    zooms = np.sqrt((rzs * rzs).sum(axis=0))
    zooms[zooms == 0] = 1.0
    u, s, vt = np.linalg.svd(rzs / zooms, full_matrices=False)
    keep = s > s.max() * 3 * np.finfo(s.dtype).eps
    rotation = u[:, keep] @ vt[keep]
    ornt = np.zeros((3, 2), dtype=int)
    for axis in np.argsort(np.min(-(rotation ** 2), axis=0), kind="stable"):
        column = rotation[:, axis]
        if np.allclose(column, 0):
            raise ValueError(f"affine {np.round(affine, 4).tolist()} is degenerate: voxel axis {axis} has no direction")
        target = int(np.argmax(np.abs(column)))
        ornt[axis] = (target, -1 if column[target] < 0 else 1)
        rotation[target, :] = 0.0  # each RAS axis is taken once
    return ornt


def axis_codes(affine: np.ndarray) -> str:
    """The patient direction each voxel axis runs towards, e.g. 'RAS' or 'LPS' (nibabel's aff2axcodes)."""
    return "".join(("LR", "PA", "IS")[int(k)][1 if sign > 0 else 0] for k, sign in axis_orientation(affine))
