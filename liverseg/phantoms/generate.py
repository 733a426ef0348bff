"""Phantom cases: a seed -> (HU volume, exact liver label) on a random grid, written as a dataset and
its manifest (the design is in the package's docstring)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..io.images import write_volume
from ..io.volume import Volume
from ..datasets.manifest import write_manifest
from .anatomy import Anatomy, rotation, uniform
from .render import Grid, render


# Random grids are kept under this many voxels (speed of generation and of the demo's resampling).
MAX_VOXELS = 1_500_000

# Orientation codes drawn when ``orientation`` is None. LPS (DICOM order) is listed twice because it
# is what most real series look like; the permuted codes put the slice axis first or in the middle.
ORIENTATION_CHOICES = ("LPS", "LPS", "RAS", "LAS", "RPI", "SLP", "PLS", "IRA")

_LETTER_VEC = {
    "R": (1.0, 0.0, 0.0), "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0), "P": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0),
}



# --------------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------------
def _direction_from_code(code: str) -> np.ndarray:
    code = code.upper()
    if len(code) != 3 or any(c not in _LETTER_VEC for c in code) or \
            sorted(int(np.argmax(np.abs(_LETTER_VEC[c]))) for c in code) != [0, 1, 2]:
        raise ValueError(f"orientation must be 3 letters, one of each of L/R, A/P, S/I; got {code!r}")
    return np.array([_LETTER_VEC[c] for c in code], dtype=np.float64).T   # columns = axis directions


def _make_grid(rng: np.random.Generator, an: Anatomy, spacing_mm, orientation, oblique_deg):
    # Every random draw happens whatever the arguments, so fixing one of them leaves the others as
    # they would have been for that seed.
    code_random = ORIENTATION_CHOICES[int(rng.integers(len(ORIENTATION_CHOICES)))]
    is_oblique = rng.random() < 0.4
    angle_random = uniform(rng, 1.0, 10.0) if is_oblique else 0.0
    rot_axis = rng.normal(size=3)
    fov_world = np.array([max(uniform(rng, 350, 370), 2 * an.a0 * (1 + an.va) + 20),
                          max(uniform(rng, 270, 290), 2 * an.b0 * (1 + an.vb) + 20),
                          uniform(rng, 200, 240)])
    centre = np.array([uniform(rng, -8, 8), uniform(rng, -8, 8), uniform(rng, -10, 5)])

    code = (orientation or code_random).upper()
    angle = float(angle_random if oblique_deg is None else oblique_deg)
    direction = rotation(rot_axis, angle) @ _direction_from_code(code)

    # World axis each array axis runs along (after the oblique tilt), and its field of view.
    dominant = np.argmax(np.abs(direction), axis=0)
    if sorted(dominant.tolist()) != [0, 1, 2]:      # only possible for tilts near 45 degrees
        dominant = np.argmax(np.abs(_direction_from_code(code)), axis=0)
    fov = fov_world[dominant]
    slice_axis = int(np.argmax(np.abs(direction[2])))

    if spacing_mm is None:
        # Clinical-looking anisotropic spacing, redrawn until the volume fits the voxel budget.
        for _ in range(200):
            inplane, thick = uniform(rng, 1.4, 2.4), uniform(rng, 2.5, 5.0)
            spacing = np.full(3, inplane)
            spacing[slice_axis] = thick
            if np.prod(np.ceil(fov / spacing)) <= MAX_VOXELS:
                break
        else:
            spacing *= (np.prod(np.ceil(fov / spacing)) / MAX_VOXELS) ** (1 / 3) * 1.01
    else:
        spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(3)
        if np.any(spacing <= 0):
            raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")

    shape = tuple(int(max(1, math.ceil(f / s))) for f, s in zip(fov, spacing))
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return shape, affine, code, angle



# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def make_phantom(seed: int, *, spacing_mm: tuple[float, float, float] | None = None,
                 orientation: str | None = None,
                 oblique_deg: float | None = None) -> tuple[Volume, Volume]:
    """Return ``(ct, label)``: ct float32 HU, label uint8 (0 background, 1 liver), on the same grid.

    ``spacing_mm`` is per ARRAY axis (as ``Volume.spacing_mm``); None draws in-plane 1.4-2.4 mm and
    slice 2.5-5.0 mm under a budget of ``MAX_VOXELS``. ``orientation`` is a code such as "LPS"
    (each letter: where that array axis points, nibabel style); None draws from
    ``ORIENTATION_CHOICES``. ``oblique_deg`` tilts the axes about a random axis; None gives 0 for
    ~60% of seeds and up to 10 degrees otherwise. The anatomy depends on ``seed`` only, so the same
    seed on different grids is the same patient.
    """
    root = np.random.default_rng(seed)
    rng_anat, rng_grid, rng_noise = root.spawn(3)
    anatomy = Anatomy(rng_anat)
    shape, affine, code, angle = _make_grid(rng_grid, anatomy, spacing_mm, orientation, oblique_deg)
    canvas = render(anatomy, Grid(shape, affine))

    # Image formation: scanner blur and quantum noise. The label stays the sampled truth.
    hu = ndimage.gaussian_filter(canvas.hu, sigma=uniform(rng_noise, 0.5, 0.8), mode="nearest")
    noise_sd = uniform(rng_noise, 8.0, 20.0)
    hu += rng_noise.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_sd)
    np.clip(hu, -1024.0, 3071.0, out=hu)

    meta = {"source": "phantom", "seed": int(seed), "orientation": code, "oblique_deg": angle}
    return (Volume(hu.astype(np.float32, copy=False), affine.copy(), dict(meta)),
            Volume(canvas.label, affine.copy(), dict(meta)))


def phantom_dataset(out_dir: Path, seeds: Sequence[int]) -> list[dict]:
    """Write phantoms as NIfTI under ``out_dir/images`` and ``out_dir/labels``; return the manifest.

    Images are int16 HU (rounded), labels uint8. Entries are ``{"id", "image", "label"}`` with paths
    relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    entries = []
    for seed in seeds:
        ct, label = make_phantom(int(seed))
        case = f"phantom_{int(seed):03d}"
        image_rel, label_rel = f"images/{case}.nii.gz", f"labels/{case}.nii.gz"
        write_volume(ct.with_array(np.rint(ct.array).astype(np.int16)), out_dir / image_rel)
        write_volume(label, out_dir / label_rel, dtype=np.uint8)
        entries.append({"id": case, "image": image_rel, "label": label_rel})
    return entries


def write_phantom_manifest(folder: Path, splits: dict[str, Sequence[int]]) -> Path:
    """Write the phantoms of every split (seeds) under ``folder`` and a liverseg manifest for them.

    ``splits`` maps a split name to phantom seeds, e.g. ``{"train": range(12), "val": [12, 13]}``;
    returns the path of ``folder/manifest.json``.
    """
    folder = Path(folder)
    seeds = [seed for split_seeds in splits.values() for seed in split_seeds]
    cases = phantom_dataset(folder, seeds)
    ids = iter(case["id"] for case in cases)
    split_ids = {name: [next(ids) for _ in split_seeds] for name, split_seeds in splits.items()}
    return write_manifest(folder / "manifest.json", "phantoms", {"background": 0, "liver": 1}, cases, split_ids)


__all__ = ["make_phantom", "phantom_dataset", "write_phantom_manifest", "ORIENTATION_CHOICES", "MAX_VOXELS"]
