"""Pure geometry and intensity functions between an input's grid and the network's grid.

Forward: reorient the voxel axes to the closest RAS axes (an exact permutation/flip, no
interpolation), resample to ``spacing_mm`` (images linear with anti-aliasing, labels nearest),
normalise CT intensities. Every step is recorded in a ``GridRecord`` so the prediction can be
mapped back onto exactly the input grid: same shape, and the same affine by construction.

Resampling keeps the physical extent of the volume: the new grid has ``round(n * s / t)`` voxels
whose size is adjusted to ``s * n / n'`` so that the first and last voxel faces stay where they
were. That is the convention of ``torch.nn.functional.interpolate(align_corners=False)``, so the
forward and inverse resampling use the same map in opposite directions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..io.volume import Volume, axis_orientation, spacing_from_affine

if TYPE_CHECKING:  # torch is imported inside the functions that use it: ONNX prediction runs without it
    import torch


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


# ----------------------------------------------------------------------------- resampling

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


def resample(array: np.ndarray | torch.Tensor, new_shape: tuple[int, int, int], *, labels: bool,
             anti_alias: bool = True) -> torch.Tensor:
    """Resample the last three axes of a (C, X, Y, Z) or (X, Y, Z) array to ``new_shape``.

    Images: trilinear, with a Gaussian pre-filter along axes that are down-sampled (sigma = (f-1)/2
    voxels, as scikit-image does) so noise does not alias. Labels: nearest neighbour, centre-aligned
    ("nearest-exact": torch's plain "nearest" is shifted by half a voxel).
    """
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    tensor = torch.as_tensor(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
    squeeze = tensor.ndim == 3
    if squeeze:
        tensor = tensor[None]
    old_shape = tuple(tensor.shape[-3:])
    if old_shape == tuple(new_shape):
        return tensor[0] if squeeze else tensor
    if labels:
        dtype = tensor.dtype
        out = F.interpolate(tensor[None].float(), size=tuple(new_shape), mode="nearest-exact")[0].to(dtype)
    else:
        tensor = tensor.float()
        factors = [o / n for o, n in zip(old_shape, new_shape)]
        if anti_alias and any(f > 1.0 for f in factors):
            sigma = [0.0] + [max(0.0, (f - 1.0) / 2.0) for f in factors]
            tensor = torch.from_numpy(ndimage.gaussian_filter(tensor.numpy(), sigma=sigma, mode="nearest"))
        out = F.interpolate(tensor[None], size=tuple(new_shape), mode="trilinear", align_corners=False)[0]
    return out[0] if squeeze else out


def normalize_ct(array: np.ndarray | torch.Tensor, hu_window: tuple[float, float]) -> torch.Tensor:
    """Clip to the HU window and scale it to [0, 1]."""
    import torch

    low, high = float(hu_window[0]), float(hu_window[1])
    tensor = torch.as_tensor(array).float()
    return ((tensor.clamp(low, high) - low) / (high - low)).contiguous()


def standardize_ct(image: torch.Tensor, hu_window: tuple[float, float], mean_hu: float, std_hu: float) -> torch.Tensor:
    """The window-scaled [0, 1] image -> z-scores of the clipped HU, (HU - mean) / std, when
    ``std_hu`` > 0 (nnU-Net's CT normalisation; planned by ``liverseg plan``); unchanged otherwise.
    An affine map of intensities, so it commutes with the (linear) resampling before it."""
    if std_hu <= 0:
        return image
    low, high = float(hu_window[0]), float(hu_window[1])
    return image * ((high - low) / std_hu) + ((low - mean_hu) / std_hu)


# ----------------------------------------------------------------------------- labels

def remap_labels(array: np.ndarray, remap: dict[int, int]) -> np.ndarray:
    """Apply ``{source value: class index}``; unlisted values keep their value."""
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


# ----------------------------------------------------------------------------- the road both ways

def plan_grid(volume: Volume, spacing_mm: tuple[float, float, float]) -> GridRecord:
    ornt = canonical_ornt(volume.affine_ras)
    perm = np.argsort(ornt[:, 0])
    canonical_shape = tuple(int(volume.shape[p]) for p in perm)
    canon_affine = canonical_affine(volume.affine_ras, volume.shape, ornt)
    target_shape, target_affine = target_grid(canonical_shape, canon_affine, spacing_mm)
    return GridRecord(volume.shape, volume.affine_ras.copy(), ornt, canonical_shape,  # type: ignore[arg-type]
                      canon_affine, target_shape, target_affine)


def preprocess_image(volume: Volume, spacing_mm: tuple[float, float, float],
                     hu_window: tuple[float, float]) -> tuple[torch.Tensor, GridRecord]:
    """CT volume -> normalised float32 tensor (X', Y', Z') on the network grid, and its record."""
    record = plan_grid(volume, spacing_mm)
    canonical = to_canonical(volume.array, record.ornt)
    # Normalise before resampling: clipping first keeps bone/air extremes from ringing into soft tissue.
    image = normalize_ct(np.ascontiguousarray(canonical).astype(np.float32, copy=False), hu_window)
    return resample(image, record.target_shape, labels=False), record


def preprocess_label(label: Volume, record: GridRecord) -> torch.Tensor:
    """A label map on the input grid -> the network grid (nearest neighbour)."""
    import torch

    canonical = np.ascontiguousarray(to_canonical(label.array, record.ornt))
    return resample(torch.from_numpy(canonical.astype(np.int16)), record.target_shape, labels=True)


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
