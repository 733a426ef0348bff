"""Tumour burden of a liver + lesion label map: per-lesion volume, RECIST-style diameters, centroid, HU.

Pure functions (numpy and scipy only); ``case_report.case_report`` puts the result in ``report.json`` under
``"tumour_burden"`` and batch prediction writes ``lesions.csv`` and one summary line per case.

Which labels: the liver is the label named ``liver`` (or ``liver parenchyma``); lesions are every label
whose name contains ``lesion``, ``tumour`` or ``tumor`` (case and separators ignored: ``tumour``,
``liver lesion``, ``Liver_Tumor``, ``lesions``). A label map needs both for a tumour burden.

Conventions (also written into the result under ``"conventions"``):

* A lesion is a connected component of the lesion label(s), **26-connectivity** (voxels touching by a
  face, an edge or a corner). Components smaller than ``min_volume_ml`` (default 0.1 mL) are counted
  and summed under ``below_minimum`` but not listed, numbered or included in the lesion totals.
  Lesions are numbered 1, 2, ... from the largest volume down.
* Volume: voxel count x voxel volume (the affine's determinant).
* Liver volume (for the lesion fraction): the liver label **plus** the lesion label(s), i.e. liver
  parenchyma with the lesions in it; ``lesion_fraction_percent`` = listed lesion volume / that.
* Axial slices: of the grid's three slice planes, the one whose normal is closest to the patient's
  superior-inferior axis (from the affine, so any orientation or oblique grid works); the diameters
  are measured within those slices, in millimetres (anisotropic and sheared pixels handled).
* Longest diameter: the largest, over the lesion's axial slices, of the longest distance between two
  points of the lesion's pixel footprint in that slice (the footprint's Feret/caliper diameter, all of
  the lesion's pixels in the slice together). Measured **edge to edge**: pixels are squares (their
  physical parallelograms), so a line of n pixels measures n pixel widths, not n - 1 as centre to
  centre would. Computed from the convex hull of the footprint (each pixel row's outermost pixel
  corners), so a 100k-voxel lesion costs a few milliseconds per slice.
* Perpendicular diameter: on the slice of the longest diameter, the footprint's extent (edge to edge)
  projected onto the in-slice direction perpendicular to the longest diameter. For a convex lesion
  this is the longest perpendicular chord (an ellipse gives its minor axis); for a concave one it is an
  upper bound of it.
* Centroid: mean of the lesion's voxel centres, in **LPS** millimetres (x towards the patient's left,
  y posterior, z superior) as DICOM viewers and 3D Slicer show them.
* HU: mean, standard deviation, minimum, maximum of the CT voxels in the lesion.
* Slices: first and last 0-based voxel index along the axial array axis (the file's order);
  ``craniocaudal_extent_mm`` = number of slices x the distance between slice planes.
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io.volume import LPS_TO_RAS

DEFAULT_MIN_VOLUME_ML = 0.1
LESION_WORDS = ("lesion", "tumour", "tumor")  # in a label name (any case): the lesion label (also evaluation's rule)
LIVER_NAMES = ("liver", "liver_parenchyma")
CONNECTIVITY = 26

CONVENTIONS = {
    "lesion": f"connected component of the lesion label(s), {CONNECTIVITY}-connectivity; components under "
              "min_lesion_volume_ml are counted in below_minimum only; ids from the largest volume down",
    "liver_volume": "liver label plus lesion label(s) (parenchyma with the lesions in it)",
    "axial_plane": "the grid's slice plane whose normal is closest to the superior-inferior axis",
    "longest_diameter": "largest in-slice caliper diameter over the axial slices, pixel edge to edge",
    "perpendicular_diameter": "on that slice, the extent (edge to edge) perpendicular to the longest diameter",
    "centroid": "mean voxel centre, LPS mm (x left, y posterior, z superior)",
    "slices": "0-based voxel index along the axial array axis",
}

CSV_COLUMNS = ("lesion_id", "volume_ml", "longest_diameter_mm", "perpendicular_diameter_mm", "diameter_slice",
               "centroid_x_lps_mm", "centroid_y_lps_mm", "centroid_z_lps_mm", "hu_mean", "hu_std", "hu_min",
               "hu_max", "first_slice", "last_slice", "craniocaudal_extent_mm", "voxel_count")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


def label_roles(label_names: Sequence[str]) -> tuple[int, tuple[int, ...]] | None:
    """(liver label value, lesion label values) from the names, or ``None`` when either is missing."""
    keys = [_key(n) for n in label_names]
    liver = [v for v, k in enumerate(keys) if v > 0 and k in LIVER_NAMES]
    lesions = tuple(v for v, k in enumerate(keys) if v > 0 and any(w in k for w in LESION_WORDS))
    if not liver or not lesions:
        return None
    return liver[0], lesions


# ----------------------------------------------------------------------------- geometry

class AxialGeometry:
    """The axial slice planes of a grid: which array axis indexes them, and in-plane millimetres.

    ``axis``: the array axis whose index selects an axial slice; ``plane_axes``: the other two (increasing).
    ``to_mm``: 2x2 matrix taking in-plane index offsets (along ``plane_axes``) to orthonormal in-plane
    millimetres (distances are exact, whatever the spacing or shear). ``slice_distance_mm``: the distance
    between neighbouring slice planes.
    """

    def __init__(self, affine_ras: np.ndarray):
        a = np.asarray(affine_ras, dtype=np.float64)[:3, :3]
        scores = []
        for k in range(3):
            u, v = (a[:, x] for x in range(3) if x != k)
            normal = np.cross(u, v)
            scores.append(abs(normal[2]) / max(np.linalg.norm(normal), 1e-300))
        self.axis = int(np.argmax(scores))
        self.plane_axes = tuple(x for x in range(3) if x != self.axis)
        u, v = a[:, self.plane_axes[0]], a[:, self.plane_axes[1]]
        e1 = u / np.linalg.norm(u)
        w = v - (v @ e1) * e1
        e2 = w / np.linalg.norm(w)
        self.to_mm = np.array([[u @ e1, v @ e1], [0.0, v @ e2]])
        self.slice_distance_mm = float(abs(np.linalg.det(a)) / np.linalg.norm(np.cross(u, v)))


def _footprint_corners(rows_any: np.ndarray, qmin: np.ndarray, qmax: np.ndarray) -> np.ndarray:
    """Index-space corners (p, q) of each pixel row's outermost pixels: their hull is the footprint's."""
    p = np.flatnonzero(rows_any).astype(np.float64)
    lo, hi = qmin[rows_any] - 0.5, qmax[rows_any] + 0.5
    return np.concatenate([np.stack([p - 0.5, lo], 1), np.stack([p + 0.5, lo], 1),
                           np.stack([p - 0.5, hi], 1), np.stack([p + 0.5, hi], 1)])


def _hull(points_mm: np.ndarray) -> np.ndarray:
    """Indices of the convex hull's vertices (all points when qhull cannot build one)."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        return ConvexHull(points_mm).vertices
    except (QhullError, ValueError):
        return np.arange(len(points_mm))


def slice_diameters(mask2d: np.ndarray, to_mm: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(longest, perpendicular diameter in mm, the longest diameter's two end points as (p, q) indices).

    ``mask2d``: a slice's pixels (rows along the first in-plane axis); ``to_mm``: ``AxialGeometry.to_mm``.
    Edge to edge, as described in the module docstring.
    """
    mask2d = np.asarray(mask2d, dtype=bool)
    rows_any = mask2d.any(axis=1)
    if not rows_any.any():
        return 0.0, 0.0, np.zeros((2, 2))
    nq = mask2d.shape[1]
    qmin = np.argmax(mask2d, axis=1)
    qmax = nq - 1 - np.argmax(mask2d[:, ::-1], axis=1)
    corners = _footprint_corners(rows_any, qmin, qmax)
    mm = corners @ to_mm.T
    vertices = _hull(mm)
    hull_mm, hull_idx = mm[vertices], corners[vertices]
    d2 = ((hull_mm[:, None, :] - hull_mm[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    longest = math.sqrt(float(d2[i, j]))
    direction = (hull_mm[j] - hull_mm[i]) / longest
    perpendicular = np.array([-direction[1], direction[0]])
    projection = hull_mm @ perpendicular
    return longest, float(projection.max() - projection.min()), hull_idx[[i, j]]


# ----------------------------------------------------------------------------- lesions

def _ras_to_lps(xyz: np.ndarray) -> np.ndarray:
    return np.asarray(xyz, dtype=np.float64) * np.diag(LPS_TO_RAS)[:3]


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return np.asarray(ijk, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def _union_box(boxes: list, values: Sequence[int]) -> tuple[slice, ...] | None:
    found = [boxes[v - 1] for v in values if v - 1 < len(boxes) and boxes[v - 1] is not None]
    if not found:
        return None
    return tuple(slice(min(b[a].start for b in found), max(b[a].stop for b in found)) for a in range(3))


def _measure(sub: np.ndarray, origin: np.ndarray, affine: np.ndarray, geo: AxialGeometry,
             ct_values: np.ndarray | None, voxel_ml: float) -> dict[str, Any]:
    """Figures of one lesion: ``sub`` its mask in a box whose first voxel is at index ``origin``."""
    ijk = np.stack(np.nonzero(sub), axis=1)
    n = len(ijk)
    centroid = _ras_to_lps(_world(affine, ijk.mean(axis=0) + origin))
    stack = np.moveaxis(sub, geo.axis, 0)                     # (slices, p, q)
    best = (-1.0, -1.0, 0, np.zeros((2, 2)))
    for s in range(stack.shape[0]):
        if not stack[s].any():
            continue
        longest, perp, ends = slice_diameters(stack[s], geo.to_mm)
        if longest > best[0] + 1e-6 or (abs(longest - best[0]) <= 1e-6 and perp > best[1] + 1e-6):
            best = (longest, perp, s, ends)
    longest, perp, s_best, ends = best
    k0 = int(origin[geo.axis])
    slices = np.flatnonzero(stack.reshape(stack.shape[0], -1).any(axis=1)) + k0
    end_ijk = np.zeros((2, 3))
    end_ijk[:, geo.axis] = s_best + k0
    end_ijk[:, geo.plane_axes[0]] = ends[:, 0] + origin[geo.plane_axes[0]]
    end_ijk[:, geo.plane_axes[1]] = ends[:, 1] + origin[geo.plane_axes[1]]
    entry: dict[str, Any] = {
        "volume_ml": round(n * voxel_ml, 4),
        "voxel_count": int(n),
        "longest_diameter_mm": round(longest, 2),
        "perpendicular_diameter_mm": round(perp, 2),
        "diameter_slice": s_best + k0,
        "longest_diameter_ends_lps_mm": np.round(_ras_to_lps(_world(affine, end_ijk)), 2).tolist(),
        "centroid_lps_mm": np.round(centroid, 2).tolist(),
        "hu": None,
        "slices": [int(slices[0]), int(slices[-1])],
        "craniocaudal_extent_mm": round(len(slices) * geo.slice_distance_mm, 2),
    }
    if ct_values is not None:
        v = ct_values.astype(np.float64, copy=False)
        entry["hu"] = {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2),
                       "min": round(float(v.min()), 2), "max": round(float(v.max()), 2)}
    return entry


def tumour_burden(labels: np.ndarray, affine_ras: np.ndarray, label_names: Sequence[str],
                  ct: np.ndarray | None = None, *, min_volume_ml: float = DEFAULT_MIN_VOLUME_ML) -> dict | None:
    """Lesion table and totals of a label map (``None`` when its names have no liver or no lesion label).

    ``labels``: integer label map indexed like ``label_names``; ``affine_ras``: its voxel-to-RAS affine;
    ``ct``: the CT on the same grid (HU statistics; ``None`` leaves them out). Only the bounding box of
    the liver and lesion labels is copied. See the module docstring for every convention.
    """
    from scipy import ndimage

    roles = label_roles(label_names)
    if roles is None:
        return None
    liver_value, lesion_values = roles
    lab = np.asarray(labels)
    if lab.dtype == bool:
        lab = lab.view(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels have dtype {lab.dtype}; give integer label values")
    if ct is not None and tuple(np.shape(ct)) != lab.shape:
        raise ValueError(f"CT shape {tuple(np.shape(ct))} differs from the label map's {lab.shape}")
    affine = np.asarray(affine_ras, dtype=np.float64)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3])) / 1000.0)
    geo = AxialGeometry(affine)

    top = max(liver_value, *lesion_values)
    boxes = ndimage.find_objects(lab, max_label=top) if lab.size else []
    organ_box = _union_box(boxes, (liver_value, *lesion_values))
    liver_count = 0
    if organ_box is not None:
        liver_count = int(np.count_nonzero(np.isin(lab[organ_box], (liver_value, *lesion_values))))

    lesions: list[dict[str, Any]] = []
    below_count, below_voxels = 0, 0
    lesion_box = _union_box(boxes, lesion_values)
    if lesion_box is not None:
        offset = np.array([s.start for s in lesion_box])
        mask = np.isin(lab[lesion_box], lesion_values)
        components, n_components = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        counts = np.bincount(components.ravel(), minlength=n_components + 1)
        min_voxels = min_volume_ml / voxel_ml if voxel_ml > 0 else 0.0
        kept = [c for c in range(1, n_components + 1) if counts[c] >= min_voxels - 1e-9]
        small = [c for c in range(1, n_components + 1) if counts[c] < min_voxels - 1e-9]
        below_count, below_voxels = len(small), int(sum(counts[c] for c in small))
        kept.sort(key=lambda c: (-counts[c], c))
        component_boxes = ndimage.find_objects(components)
        for c in kept:
            box = component_boxes[c - 1]
            sub = components[box] == c
            origin = offset + np.array([s.start for s in box])
            ct_values = None
            if ct is not None:
                global_box = tuple(slice(o, o + s.stop - s.start) for o, s in zip(origin, box))
                ct_values = np.asarray(ct[global_box])[sub]
            lesions.append({"id": len(lesions) + 1, **_measure(sub, origin, affine, geo, ct_values, voxel_ml)})

    liver_ml = liver_count * voxel_ml
    lesion_ml = sum(le["voxel_count"] for le in lesions) * voxel_ml
    names = list(label_names)
    return {
        "liver_label": names[liver_value],
        "lesion_labels": [names[v] for v in lesion_values],
        "liver_volume_ml": round(liver_ml, 3),
        "lesion_count": len(lesions),
        "lesion_volume_ml": round(lesion_ml, 3),
        "lesion_fraction_percent": round(100.0 * lesion_ml / liver_ml, 3) if liver_ml > 0 else None,
        "below_minimum": {"count": below_count, "volume_ml": round(below_voxels * voxel_ml, 4)},
        "min_lesion_volume_ml": float(min_volume_ml),
        "connectivity": CONNECTIVITY,
        "axial_array_axis": geo.axis,
        "slice_distance_mm": round(geo.slice_distance_mm, 4),
        "conventions": dict(CONVENTIONS),
        "lesions": lesions,
    }


# ----------------------------------------------------------------------------- text

def lesions_csv(burden: dict) -> str:
    """``lesions.csv``: one row per listed lesion (header only when there is none); units in the column names."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for le in burden.get("lesions", []):
        hu = le.get("hu") or {}
        writer.writerow([le["id"], le["volume_ml"], le["longest_diameter_mm"], le["perpendicular_diameter_mm"],
                         le["diameter_slice"], *le["centroid_lps_mm"], hu.get("mean", ""), hu.get("std", ""),
                         hu.get("min", ""), hu.get("max", ""), le["slices"][0], le["slices"][1],
                         le["craniocaudal_extent_mm"], le["voxel_count"]])
    return out.getvalue()


def burden_summary(burden: dict) -> str:
    """One line, e.g. ``liver 1,523 mL; 3 lesions, 42.1 mL (2.8% of liver); largest 31.0 mL, 45 x 32 mm``."""
    text = f"liver {burden['liver_volume_ml']:,.0f} mL; "
    n = burden["lesion_count"]
    if n == 0:
        text += f"no lesions of {burden['min_lesion_volume_ml']:g} mL or more"
    else:
        fraction = burden["lesion_fraction_percent"]
        share = f" ({fraction:.1f}% of liver)" if fraction is not None else ""
        largest = burden["lesions"][0]
        text += (f"{n} lesion{'s' if n != 1 else ''}, {burden['lesion_volume_ml']:,.1f} mL{share}; largest "
                 f"{largest['volume_ml']:,.1f} mL, {largest['longest_diameter_mm']:.0f} x "
                 f"{largest['perpendicular_diameter_mm']:.0f} mm")
    below = burden["below_minimum"]["count"]
    if below:
        text += f" (+{below} smaller than {burden['min_lesion_volume_ml']:g} mL, not counted)"
    return text


__all__ = ["AxialGeometry", "CSV_COLUMNS", "DEFAULT_MIN_VOLUME_ML", "burden_summary", "label_roles", "lesions_csv",
           "slice_diameters", "tumour_burden"]
