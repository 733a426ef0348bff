"""Synthetic abdominal CT phantoms with an exact liver label, for ``liverseg demo`` and tests.

Why phantoms: the demo must run the whole pipeline (read, resample, train, segment, write) on a CPU in
minutes, with no patient data to download. The task has to look like abdominal CT (so the pipeline is
exercised on realistic intensities and neighbours of liver-like HU) yet be learnable from ~12 volumes.

Design
------
* **Anatomy lives in world space.** Every structure is an implicit function of patient RAS+
  millimetres (ellipsoids, cylinders, tubes, smoothly deformed by low-frequency sinusoid sums),
  centred near the origin. All of its random parameters are drawn from the seed alone, so a seed
  means one patient whatever grid it is imaged on.
* **The grid is random and independent of the anatomy.** Spacing, axis order/flips (an orientation
  code) and a small oblique rotation give an affine; the world coordinates of every voxel centre
  are computed from it and the anatomy is sampled there. The label is therefore exact on any grid,
  and any orientation bug downstream (a flipped or permuted axis) shows up as a bad Dice instead of
  being hidden by a phantom that happens to be symmetric or axis-aligned.
* **Painter's algorithm.** Structures are painted in a fixed order, later ones overwriting earlier
  ones, into an HU array and a label array together; the label is 1 exactly where the *last* paint
  was liver (parenchyma, intrahepatic vessels, lesions). So the liver is clipped by the diaphragm,
  body wall, IVC, gallbladder, kidney... without any bookkeeping.
* **Image formation** is a mild Gaussian blur plus Gaussian noise on the HU image only.

Sign convention: RAS+ as nibabel, NIfTI and ``liverseg.io.volume`` (``LPS_TO_RAS``) define it,
i.e. +x points to the patient's RIGHT, +y anterior, +z superior (an orientation letter names where an
array axis points, as in ``nibabel.aff2axcodes``: "L" = -x). The liver is therefore at world x > 0,
the spleen and stomach at x < 0 -- what a real CT read with SimpleITK and flipped LPS -> RAS gives.

Modules: ``anatomy`` (structures in world space), ``render`` (painting them on a grid), ``generate``
(seeded cases, datasets and their manifest) and ``dicom`` (a phantom as a DICOM series); the package
imports none of them, the names below load ``generate`` on first use.
"""
from __future__ import annotations

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "generate": ("make_phantom", "phantom_dataset", "write_phantom_manifest", "ORIENTATION_CHOICES", "MAX_VOXELS"),
})
