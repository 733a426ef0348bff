"""The built-in liver model's road: the KU Leuven recipe on liverseg's geometry.

1. **Orientation** from the ``Volume``'s RAS affine: the voxel axes are permuted/flipped to the
   closest R, A, S axes (exact, no interpolation; never guessed from array order or image content).
   The network sees that canonical array, as the original sees its RAS-flipped one.
2. **Body box** instead of the original's lung/hip heuristic (which cuts the liver off on scans
   without lungs): voxels above -500 HU, opened, largest component; its box plus 10 mm, cut around
   its centre to what one patch can segment in-plane (489 x 408 mm).
3. **The original's resampling and scaling** of the body box: ``zoom3d`` to 1.5 mm, 3x3x3 median,
   ``zoom3d`` to 3 mm (``zoom.py``), ``clip(HU / 1000, -0.2, 0.2) * 2.5``.
4. **Windows**: the network's output covers 408 mm along S; the 3 mm image is cut into windows of at
   most that, overlapping by 60 mm. Each window sits centred in the original's fixed 189 x 162 x 162
   patch.
5. **Where the liver sits in the window.** The model was trained on crops from 70 mm above the liver
   dome down to the hips (at most 400 mm), so it expects the liver in the upper middle of its patch.
   On a scan that starts inside the liver, or one longer than a window, the first pass finds the
   liver and a second pass runs on a window from 70 mm above the liver's top to 90 mm below its
   bottom (measured on the TotalSegmentator example, which starts inside the liver: Dice against
   its reference 0.855 from the whole scan, 0.959 from this window).
6. **Back to the input grid**: the liver probability on the 3 mm grid is interpolated linearly onto
   the input's own voxels (the 3 mm grid is centred on the body box, so this is exact geometry),
   thresholded at 0.5, and reduced to its largest 26-connected component.
7. **Warnings** (one line each, also in ``report.json``): not CT, intensities not in HU, a field of
   view too short along S to hold a liver, no liver found, a liver cut by the field of view, a
   liver volume outside 0.5-5 L.

The network runs through an ``engine``: ``StagedEngine`` (ONNX Runtime, the staged computation of
``staged.py``: CPU default) or ``TorchEngine`` (the whole patch through ``KulUNet``: the faithful
full computation, and the CUDA path with float16). The grid (steps 2, 3 and 6) is ``liver_grid``'s; this
module runs the road and writes the warnings.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ..io.volume import Volume
from ..grid.record import canonical_ornt, to_canonical
from .liver_grid import (NETWORK_SPACING_MM, OUTPUT, PATCH, Grid, body_box, probability_on_input, probability_to_labels,
                         resample_body, windows)
from .runtime import sampled_roi

log = logging.getLogger(__name__)

WINDOW_OVERLAP_MM = 60.0
ABOVE_LIVER_MM = 70.0  # the original's crop starts this far above the liver dome
# A liver on any of the image's top 3 slices (9 mm; the top one alone may be half padding after the
# centred resampling) means the scan starts inside the liver.
TOP_SLICES = 3
BELOW_LIVER_MM = 90.0
# The staged computation's sampled slices: every 18th (54 mm) of the whole output region to find the
# liver; then, for the statistics, also every 8th inside the image plus its first and last slice, and
# in the zero padding above and below at these distances from the image (the features change fastest
# next to it; farther out they vary with the coarse levels' 27-slice grid). Measured against the full
# computation (masks > 0.5 on the 3 mm grid, Dice): 0.9992 and 0.9991 on a whole-abdomen and a chest CT
# (TotalSegmentator example, pyradiomics lung2), 0.989 and 0.991 on a 39- and a 14-slice window (LiTS
# crop, 20-slice DICOM), where the padding holds 70-90 % of the voxels; every 18th + every 6th slice
# alone gave 0.997, 0.999, 0.963, 0.989. (scripts/check_kul_port.py measures the full computation.)
COARSE_STRIDE, FINE_STRIDE = 18, 8
PADDING_DISTANCES = (2, 6, 12, 20, 30, 42, 56)
# A short image leaves the statistics to the padding (70-90 % of the patch), and sampled slices then
# move its output more (the LiTS crop: liver Dice against its expert mask 0.436 sampled, 0.443 in full):
# up to this many 3 mm slices (144 mm) every slice is computed, which is the full computation.
EXACT_BELOW_SLICES = 48
MIN_LIVER_EXTENT_MM = 100.0  # a field of view shorter than this along S cannot hold a whole liver
LIVER_ML_RANGE = (500.0, 5000.0)  # outside: a warning
MIN_WHOLE_LIVER_ML = 250.0  # a structure smaller than this, not cut by the field of view, is not a liver


# ----------------------------------------------------------------------------- engines

class PatchRun(Protocol):
    region: range  # image S indices of the patch's output region
    shape: tuple[int, int, int]

    def sample(self, z_image: Sequence[int]) -> None:
        """Add these slices to the sampled ones."""

    def sampled(self) -> tuple[np.ndarray, np.ndarray]:
        """(image S indices, foreground probability (X, Y, n)) of the sampled slices inside the image."""

    def probabilities(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Foreground probability over ``box`` of the image."""


class Engine(Protocol):
    name: str

    def run(self, image: np.ndarray, patch: Sequence[int]) -> PatchRun:
        """The network on ``image`` centred in ``patch``."""


def lattice(run: PatchRun, stride: int, inside_image: bool = False) -> list[int]:
    """Every ``stride``-th slice of the output region, starting half a stride in."""
    zs = list(run.region)[stride // 2::stride]
    return [z for z in zs if 0 <= z < run.shape[2]] if inside_image else zs


def statistics_slices(run: PatchRun) -> list[int]:
    """The slices whose exact computation sets the statistics (see ``PADDING_DISTANCES``); every slice of
    the output region for an image of at most ``EXACT_BELOW_SLICES`` slices."""
    n = run.shape[2]
    if n <= EXACT_BELOW_SLICES:
        return list(run.region)
    zs = lattice(run, FINE_STRIDE, inside_image=True) + [0, n - 1]
    zs += [z for d in PADDING_DISTANCES for z in (-d, n - 1 + d)]
    return sorted({z for z in zs if z in run.region})


# ----------------------------------------------------------------------------- the road

@dataclass
class LiverResult:
    labels: np.ndarray  # uint8 on the input grid, 1 = liver
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    probability: np.ndarray | None = None  # with keep_probability: uint8 round(255 p_liver) on the input grid


def _components(found: np.ndarray) -> list[tuple[int, slice]]:
    """(voxel count, slice over the stack's last axis) of each 26-connected component of a boolean
    (X, Y, n) stack of sampled slices (neighbouring sampled slices count as touching)."""
    from scipy import ndimage

    if not found.any():
        return []
    components, count = ndimage.label(found, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel())
    return [(int(sizes[k + 1]), box[2]) for k, box in enumerate(ndimage.find_objects(components)) if box is not None]


def segment(volume: Volume, engine: Engine, threads: int | None = None, keep_probability: bool = False) -> LiverResult:
    """The liver of ``volume`` as uint8 labels on its own grid, with warnings and what was done; with
    ``keep_probability`` also the liver probability there (0 outside the region the network computed
    exactly, which holds every voxel at or above 0.5; emptied with the labels when no liver is found)."""
    warnings = input_warnings(volume)
    ornt = canonical_ornt(volume.affine_ras)
    canonical = to_canonical(volume.array, ornt)
    spacing = tuple(float(s) for s in volume.spacing_mm[np.argsort(ornt[:, 0])])
    labels = np.zeros(volume.shape, dtype=np.uint8)
    box = body_box(canonical, spacing)
    details: dict = {"engine": engine.name, "input_axes": "".join("RAS"[int(k)] for k in ornt[:, 0])}
    if box is None:
        warnings.append("no body found: no voxel above -500 HU; is this a CT in Hounsfield units?")
        return LiverResult(labels, warnings, details)
    grid = Grid.of(box, spacing)
    details["body_box_voxels"] = [[b.start, b.stop] for b in box]
    extent_s = (box[2].stop - box[2].start) * spacing[2]
    if extent_s < MIN_LIVER_EXTENT_MM:
        warnings.append(f"small field of view: {extent_s:.0f} mm along the body axis; a whole liver is "
                        f"120-200 mm tall, so at most part of it can be segmented")
    image = resample_body(canonical, grid, threads)
    found = _liver_window(engine, image, details)
    if found is None:
        warnings.append("no liver found in this scan")
        return LiverResult(labels, warnings, details)
    span, run = found
    run.sample(statistics_slices(run))
    z, p = run.sampled()
    roi = sampled_roi(z, p, run.shape, FINE_STRIDE)
    if roi is None:
        warnings.append("no liver found in this scan")
        return LiverResult(labels, warnings, details)
    probability = np.zeros(grid.shape, dtype=np.float32)
    probability[(roi[0], roi[1], slice(roi[2].start + span.start, roi[2].stop + span.start))] = run.probabilities(roi)
    del run, image
    labels = probability_to_labels(probability, grid, ornt, volume.shape)
    kept = probability_on_input(probability, grid, ornt, volume.shape) if keep_probability else None
    del probability
    liver_ml = float(np.count_nonzero(labels)) * volume.voxel_volume_ml
    cut = cut_sides(labels, ornt)
    if liver_ml == 0:
        warnings.append("no liver found in this scan")
    elif liver_ml < MIN_WHOLE_LIVER_ML and not cut:
        warnings.append(f"no liver found: the only liver-like structure ({liver_ml:.0f} mL) lies wholly inside "
                        f"the scan and is too small for a liver (at least {MIN_WHOLE_LIVER_ML:.0f} mL even in "
                        "children); this scan probably does not show the liver, so the label map is left empty")
        labels[...] = 0
        if kept is not None:
            kept[...] = 0
        liver_ml = 0.0
    else:
        warnings += liver_warnings(liver_ml, cut)
    details["liver_ml"] = round(liver_ml, 1)
    return LiverResult(labels, warnings, details, kept)


def _liver_window(engine: Engine, image: np.ndarray, details: dict) -> tuple[slice, PatchRun] | None:
    """The window (3 mm S range) to segment the liver in, and its run; None when no liver is found.

    First pass: every window of the image, the liver looked for on coarsely sampled slices (and the
    image's top ``TOP_SLICES``). One window whose liver does not reach them is kept as it is; a long image,
    or one that starts inside the liver, gets a second run on a window from 70 mm above the liver's top
    to 90 mm below its bottom (at most one window tall).
    """
    limit = OUTPUT[2]
    n = image.shape[2]
    pieces = []  # (voxels on the sampled slices, lowest and highest sampled slice) of every structure found
    spans = windows(n, limit, int(round(WINDOW_OVERLAP_MM / NETWORK_SPACING_MM)))
    details["passes"] = []
    for span in spans:
        run = engine.run(image[:, :, span], PATCH)
        top_slices = [span.stop - span.start - k for k in range(1, TOP_SLICES + 1)] if span.stop == n else []
        run.sample(lattice(run, COARSE_STRIDE) + top_slices)
        z, p = run.sampled()
        pieces += [(size, int(z[zs].min()) + span.start, int(z[zs].max()) + span.start)
                   for size, zs in _components(p >= 0.5)]
        details["passes"].append({"window_s": [span.start, span.stop]})
        if len(spans) > 1:
            del run  # a long image always gets a second run: hold one window's feature maps at a time
    if not pieces:
        return None
    size, z_low, z_high = max(pieces)
    for other, low, high in pieces:  # the same liver seen from an overlapping window
        if other >= 0.1 * size and low <= z_high + COARSE_STRIDE and high >= z_low - COARSE_STRIDE:
            z_low, z_high = min(z_low, low), max(z_high, high)
    if len(spans) == 1 and z_high < n - TOP_SLICES:
        return span, run
    top = min(n, z_high + 1 + int(round(ABOVE_LIVER_MM / NETWORK_SPACING_MM)))
    bottom = max(0, z_low - int(round(BELOW_LIVER_MM / NETWORK_SPACING_MM)), top - limit)
    if len(spans) == 1:
        if slice(bottom, top) == span:  # the image already is that window
            return span, run
        del run
    span = slice(bottom, top)
    run = engine.run(image[:, :, span], PATCH)
    run.sample(lattice(run, COARSE_STRIDE))
    details["passes"].append({"window_s": [span.start, span.stop], "why": "liver-centred window"})
    return span, run


# ----------------------------------------------------------------------------- warnings

def input_warnings(volume: Volume) -> list[str]:
    """What makes a CT liver segmentation of this input doubtful before it starts."""
    out = []
    modality = str(volume.meta.get("modality", "") or "").upper()
    if modality and modality != "CT":
        out.append(f"modality {modality}: the built-in liver model is for CT; its output on {modality} is "
                   "not meaningful")
    step = max(1, int(round((volume.array.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(volume.array[::step, ::step, ::step], dtype=np.float32)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        out.append("the image holds no finite intensities")
        return out
    low, high = np.percentile(finite, [1, 99])
    if low > -500 or high < -200 or high > 4000:
        out.append(f"intensities from {low:.0f} to {high:.0f} (1st-99th percentile) do not look like CT in "
                   "Hounsfield units (air about -1000, soft tissue 0 to 100)")
    return out


def cut_sides(labels: np.ndarray, ornt: np.ndarray) -> list[str]:
    """Where the labels reach the edge of the field of view: inferior, superior, right-left, anterior-posterior."""
    canonical = to_canonical(labels, ornt)
    sides = []
    for axis, names in ((2, ("inferior", "superior")), (0, ("right-left",) * 2), (1, ("anterior-posterior",) * 2)):
        for end, name in zip((0, canonical.shape[axis] - 1), names):
            if canonical[(slice(None),) * axis + (end,)].any() and name not in sides:
                sides.append(name)
    return sides


def liver_warnings(liver_ml: float, cut: Sequence[str]) -> list[str]:
    out = []
    if liver_ml < LIVER_ML_RANGE[0] or liver_ml > LIVER_ML_RANGE[1]:
        out.append(f"liver volume {liver_ml:.0f} mL is outside the usual {LIVER_ML_RANGE[0]:.0f}-"
                   f"{LIVER_ML_RANGE[1]:.0f} mL; check the segmentation")
    if cut:
        out.append(f"the liver reaches the edge of the field of view ({', '.join(cut)}): part of it may lie "
                   "outside the scan, and its volume is a lower bound")
    return out


__all__ = ["segment", "LiverResult", "input_warnings", "cut_sides", "liver_warnings", "lattice",
           "statistics_slices", "COARSE_STRIDE", "FINE_STRIDE", "PatchRun", "Engine"]
