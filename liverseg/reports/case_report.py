"""What was found in one case: volumes, HU statistics, and pictures to check it by eye.

* ``case_report`` / ``write_report``: ``report.json`` with per-label voxel count, volume in mL
  (voxel count x voxel volume from the affine, exactly), HU mean/std/min/max/percentiles inside the
  label, the input's geometry, runtime, model id, liverseg version and a timestamp; for a label map
  with a liver and a lesion label, the tumour burden (``tumour_burden``: lesion table and totals).
* ``write_lesions_csv``: that lesion table as ``lesions.csv``.
* ``write_preview_png``: an axial / coronal / sagittal mosaic through the centroid of the largest
  label, CT in an HU window, each label's outline drawn in its colour, a legend. Radiological
  convention (patient right on the image left; sagittal with anterior on the left), square
  millimetres (pixels resampled from the voxel spacing). Only three slices are read from the volume.
* 2D helpers for photographs and figures: ``draw_contours``, ``error_overlay``, ``save_png``.

Pillow and numpy only.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text_atomic
from ..errors import GeometryError
from ..io.anatomy import resolve_colors
from ..io.volume import Volume, axis_codes, axis_orientation, lps_from_affine
from ..version import __version__
from .tumour_burden import lesions_csv, tumour_burden

PERCENTILES = (5, 25, 50, 75, 95)
# Soft-tissue window (level 40, width 400 HU) for CT shown under contours: previews and QC pictures.
CT_DISPLAY_WINDOW = (-160.0, 240.0)
# The centroid that places the preview slices is computed on a strided view of about this many voxels.
_CENTRE_SAMPLE_VOXELS = 8_000_000


# ----------------------------------------------------------------------------- report.json

def _check_grid(image: Volume, labels: Volume) -> None:
    if not image.same_grid(labels, atol_mm=1e-3):
        raise GeometryError(f"labels on grid {labels.shape} with affine {labels.affine_ras.round(4).tolist()} "
                            f"are not on the image grid {image.shape} with affine "
                            f"{image.affine_ras.round(4).tolist()} ({image.meta.get('path', 'the input')}); "
                            "map the prediction back to the input grid first")


def geometry(volume: Volume) -> dict[str, Any]:
    """The grid of a volume in the words of Slicer/ITK (LPS) and nibabel/MONAI (RAS)."""
    spacing, origin, direction = lps_from_affine(volume.affine_ras)
    return {
        "shape": list(volume.shape),
        "spacing_mm": [float(s) for s in spacing],
        "origin_lps_mm": [float(o) for o in origin],
        "direction_lps": [list(map(float, direction[r * 3:(r + 1) * 3])) for r in range(3)],
        "affine_ras": [[float(v) for v in row] for row in volume.affine_ras],
        "orientation": axis_codes(volume.affine_ras),
        "voxel_volume_ml": volume.voxel_volume_ml,
    }


def _gather(array: np.ndarray, flat_indices: np.ndarray) -> np.ndarray:
    """``array.ravel()[flat_indices]`` (C order) without copying a non-contiguous array."""
    if array.flags.c_contiguous:
        return np.take(array.reshape(-1), flat_indices)
    return array.flat[flat_indices]


def _hu_stats(values: np.ndarray) -> dict[str, float]:
    values = values.astype(np.float64, copy=False)
    stats = {"mean": float(values.mean()), "std": float(values.std()),
             "min": float(values.min()), "max": float(values.max())}
    for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES)):
        stats[f"p{p}"] = float(v)
    return {k: round(v, 3) for k, v in stats.items()}


def case_report(image: Volume, labels: Volume, label_names: Sequence[str], *, runtime_s: float, model_id: str,
                input_path: str | Path, extra: dict | None = None, burden: dict | None = None) -> dict:
    """Per-label volume (mL), voxel count and HU statistics, plus input geometry and provenance.

    ``volume_ml`` is ``voxel_count * voxel_volume_ml`` with the voxel volume from the affine's
    determinant, not rounded. HU statistics (``hu``) are over the image voxels inside the label
    (numpy's linear-interpolation percentiles); ``None`` for a label with no voxel. Every foreground
    label name has an entry, found or not.

    When the names have a liver and a lesion label (``tumour_burden.label_roles``), ``"tumour_burden"``
    holds ``tumour_burden.tumour_burden``'s lesion table and totals (``burden`` when given, so that a
    caller that has computed it already does not compute it twice).
    """
    _check_grid(image, labels)
    names = list(label_names)
    lab = labels.array
    if not np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool:
        raise ValueError(f"labels have dtype {lab.dtype}; give integer label values")
    # Foreground voxels only, grouped by label: memory in proportion to the foreground, no volume copy.
    if lab.dtype == bool:
        lab = lab.view(np.uint8)
    foreground = np.flatnonzero(lab)                      # C-order indices, whatever the memory layout
    values = _gather(lab, foreground)
    counts = np.bincount(values, minlength=len(names))
    if len(counts) > len(names):
        raise ValueError(f"label value {len(counts) - 1} has no name (label names cover 0..{len(names) - 1})")
    voxel_ml = image.voxel_volume_ml
    order = np.argsort(values, kind="stable")
    hu_sorted = _gather(image.array, foreground[order])   # only the foreground voxels are read
    bounds = np.searchsorted(values[order], np.arange(len(names) + 1))

    per_label: dict[str, Any] = {}
    for value, name in enumerate(names):
        if value == 0:
            continue
        n = int(counts[value])
        entry: dict[str, Any] = {"label_value": value, "voxel_count": n, "volume_ml": n * voxel_ml}
        entry["hu"] = _hu_stats(hu_sorted[bounds[value]:bounds[value + 1]]) if n else None
        per_label[name] = entry

    report: dict[str, Any] = {
        "input": str(input_path),
        "input_format": image.meta.get("format"),
        "series_uid": image.dicom.series_uid if image.dicom is not None else None,
        "geometry": geometry(image),
        "labels": per_label,
        "label_names": names,
        "runtime_s": float(runtime_s),
        "model_id": str(model_id),
        "liverseg_version": __version__,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if burden is None:
        burden = tumour_burden(lab, labels.affine_ras, names, image.array)
    if burden is not None:
        report["tumour_burden"] = burden
    if extra:
        report["extra"] = dict(extra)
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: dict, path: str | Path) -> Path:
    """Write ``report`` as indented JSON, atomically (numpy values and paths converted)."""
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False)
    return write_text_atomic(text + "\n", path)


def write_lesions_csv(burden: dict, path: str | Path) -> Path:
    """``lesions.csv`` (``tumour_burden.lesions_csv``: one row per lesion, units in the header), atomically."""
    return write_text_atomic(lesions_csv(burden), path)


# ----------------------------------------------------------------------------- 2D helpers

def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}; scale it to 0..255 first")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    if image.ndim == 3 and image.shape[2] == 4:
        return image[:, :, :3].copy()
    raise ValueError(f"expected a (H, W) or (H, W, 3) image, got shape {image.shape}")


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion; pixels on the image border count as outside neighbours."""
    padded = np.pad(mask, 1, constant_values=False)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
            & padded[1:-1, :-2] & padded[1:-1, 2:])


def contour_mask(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of ``mask``: the mask minus its ``width``-times 4-neighbour erosion (inside the mask)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    if width < 1:
        raise ValueError(f"contour width must be at least 1 pixel, got {width}")
    inner = mask
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


def draw_contours(rgb_uint8: np.ndarray, mask: np.ndarray, color: Sequence[int], width: int = 1) -> np.ndarray:
    """A copy of the image with the boundary pixels of ``mask`` painted in ``color`` (0-255 RGB).

    The image may be (H, W) grey or (H, W, 3) RGB uint8; the result is always (H, W, 3).
    """
    out = _as_rgb(rgb_uint8)
    mask = np.asarray(mask)
    if mask.shape != out.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from the image's {out.shape[:2]}")
    out[contour_mask(mask, width)] = np.asarray(color, dtype=np.uint8)[:3]
    return out


TRUE_POSITIVE = (0, 255, 0)
FALSE_POSITIVE = (255, 0, 0)
FALSE_NEGATIVE = (0, 0, 255)


def error_overlay(background_rgb: np.ndarray, pred_mask: np.ndarray, ref_mask: np.ndarray,
                  alpha: float = 1.0) -> np.ndarray:
    """Agreement map as in retinal-vessel papers: true positives green, false positives red, false
    negatives blue, the background image elsewhere. ``alpha`` < 1 blends the colours over it."""
    out = _as_rgb(background_rgb)
    pred = np.asarray(pred_mask, dtype=bool)
    ref = np.asarray(ref_mask, dtype=bool)
    if pred.shape != out.shape[:2] or ref.shape != out.shape[:2]:
        raise ValueError(f"mask shapes {pred.shape} / {ref.shape} differ from the image's {out.shape[:2]}")
    for where, color in ((pred & ref, TRUE_POSITIVE), (pred & ~ref, FALSE_POSITIVE), (~pred & ref, FALSE_NEGATIVE)):
        blended = (1.0 - alpha) * out[where] + alpha * np.asarray(color, dtype=np.float64)
        out[where] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def save_png(rgb_or_gray: np.ndarray, path: str | Path) -> Path:
    """Write a (H, W) or (H, W, 3) uint8 (or bool, as 0/255) image as PNG, atomically."""
    from PIL import Image

    image = np.asarray(rgb_or_gray)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3):
        raise ValueError(f"save_png needs a uint8 (or 16-bit grey) 2D or RGB image, got {image.dtype} {image.shape}")
    if image.dtype == np.uint16 and image.ndim == 3:
        raise ValueError("16-bit PNGs are written for grey images only")
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return path


# ----------------------------------------------------------------------------- preview.png

# Each view: the world axis it cuts across, then (world axis, direction in RAS) that image rows and
# columns run along. Radiological convention: patient right on the image's left; sagittal seen with
# anterior on the left; superior at the top.
_VIEWS = (
    ("axial", 2, (1, -1), (0, -1), ("A", "P", "R", "L")),
    ("coronal", 1, (2, -1), (0, -1), ("S", "I", "R", "L")),
    ("sagittal", 0, (2, -1), (1, -1), ("S", "I", "A", "P")),
)


def _centre_voxel(labels: np.ndarray) -> tuple[int, int, int]:
    """Centroid (rounded voxel index) of the label with most voxels; the volume's middle when empty.

    Counted on a strided view (at most about 8 M voxels read), which is exact enough to choose
    slices; a label too small to show up there is found at full resolution.
    """
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    stride = max(1, math.ceil((labels.size / _CENTRE_SAMPLE_VOXELS) ** (1 / 3)))
    sub = np.ascontiguousarray(labels[::stride, ::stride, ::stride])
    counts = np.bincount(sub.reshape(-1))
    counts[0] = 0
    if counts.sum() == 0:
        if stride == 1 or not labels.any():
            return tuple(s // 2 for s in labels.shape)  # type: ignore[return-value]
        foreground = np.flatnonzero(labels)
        values = _gather(labels, foreground)
        value = int(np.bincount(values).argmax())
        ijk = np.unravel_index(foreground[values == value], labels.shape)
        return tuple(round(float(np.mean(a))) for a in ijk)  # type: ignore[return-value]
    value = int(counts.argmax())
    mask = sub == value
    centre = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        marginal = np.count_nonzero(mask, axis=others)
        position = float((marginal * np.arange(len(marginal))).sum()) / float(marginal.sum())
        centre.append(min(labels.shape[axis] - 1, round(position * stride)))
    return tuple(centre)  # type: ignore[return-value]


def _view_slice(array: np.ndarray, ornt: np.ndarray, centre: tuple[int, int, int], normal_world: int,
                row: tuple[int, int], col: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """2D slice (a view into ``array``, oriented for display) and the voxel axes of its rows and columns."""
    axis_of_world = {int(ornt[a, 0]): a for a in range(3)}
    cut = axis_of_world[normal_world]
    index: list[Any] = [slice(None)] * 3
    index[cut] = centre[cut]
    plane = array[tuple(index)]                       # remaining axes in increasing voxel order
    kept = [a for a in range(3) if a != cut]
    row_axis, col_axis = axis_of_world[row[0]], axis_of_world[col[0]]
    if kept[0] != row_axis:
        plane = plane.T
    if ornt[row_axis, 1] != row[1]:
        plane = plane[::-1, :]
    if ornt[col_axis, 1] != col[1]:
        plane = plane[:, ::-1]
    return plane, row_axis, col_axis


def write_preview_png(image: Volume, labels: Volume, path: str | Path, label_names: Sequence[str],
                      colors: dict[str, Any] | None = None, hu_window: tuple[float, float] = CT_DISPLAY_WINDOW,
                      panel_px: int = 320) -> Path:
    """Axial / coronal / sagittal mosaic with each label's outline over the CT, and a legend.

    The slices pass through the centroid of the label with most voxels (the middle of the volume
    when no label is present). Pixels are square in millimetres, with the same scale in all three
    panels (the largest field of view spans ``panel_px`` pixels). For an oblique grid the views are
    along the voxel axes closest to the patient axes.
    """
    from PIL import Image, ImageDraw, ImageFont

    _check_grid(image, labels)
    names = list(label_names)
    rgb_of = resolve_colors(names, colors)  # the names' standard colours, overrides checked
    ornt = axis_orientation(image.affine_ras)
    spacing = image.spacing_mm
    centre = _centre_voxel(labels.array)

    views = []
    for name, normal, row, col, letters in _VIEWS:
        ct, ra, ca = _view_slice(image.array, ornt, centre, normal, row, col)
        lab, _, _ = _view_slice(labels.array, ornt, centre, normal, row, col)
        views.append((name, ct, lab, ra, ca, letters))
    extent_mm = max(max(v[1].shape[0] * spacing[v[3]], v[1].shape[1] * spacing[v[4]]) for v in views)
    mm_per_px = extent_mm / panel_px

    low, high = float(hu_window[0]), float(hu_window[1])
    font = ImageFont.load_default()
    panels = []
    for name, ct, lab, ra, ca, letters in views:
        size = (max(1, round(ct.shape[1] * spacing[ca] / mm_per_px)), max(1, round(ct.shape[0] * spacing[ra] / mm_per_px)))
        grey = np.clip((np.asarray(ct, dtype=np.float32) - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
        grey = np.asarray(Image.fromarray(grey).resize(size, Image.BILINEAR))
        lab_px = np.asarray(Image.fromarray(np.ascontiguousarray(lab).astype(np.uint8)).resize(size, Image.NEAREST))
        panel = _as_rgb(grey)
        width = 2 if max(size) >= 200 else 1
        for value in np.unique(lab_px):
            if value == 0 or value >= len(names):
                continue
            panel = draw_contours(panel, lab_px == value, rgb_of[names[value]], width)
        pil = Image.fromarray(panel)
        draw = ImageDraw.Draw(pil)
        w, h = size
        for text, xy in zip(letters, ((w // 2 - 3, 2), (w // 2 - 3, h - 12), (2, h // 2 - 5), (w - 9, h // 2 - 5))):
            draw.text(xy, text, fill=(255, 255, 0), font=font)
        draw.text((2, 2), name, fill=(200, 200, 200), font=font)
        panels.append(pil)

    gap = 4
    legend_items = [(n, rgb_of[n]) for n in names[1:]]
    legend_h = 18 * max(1, math.ceil(len(legend_items) / 4)) + 4
    total_w = sum(p.width for p in panels) + gap * (len(panels) + 1)
    total_h = max(p.height for p in panels) + 2 * gap + legend_h
    mosaic = Image.new("RGB", (total_w, total_h), (0, 0, 0))
    x = gap
    for p in panels:
        mosaic.paste(p, (x, gap))
        x += p.width + gap
    draw = ImageDraw.Draw(mosaic)
    y0 = max(p.height for p in panels) + 2 * gap
    item_w = max(1, (total_w - gap) // 4)
    for n, (label, color) in enumerate(legend_items):
        lx, ly = gap + (n % 4) * item_w, y0 + 18 * (n // 4)
        draw.rectangle((lx, ly + 2, lx + 10, ly + 12), fill=tuple(color), outline=(255, 255, 255))
        draw.text((lx + 14, ly + 1), label, fill=(255, 255, 255), font=font)
    return save_png(np.asarray(mosaic), path)
