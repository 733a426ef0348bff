"""DICOM series validation, decoding and assembly into a ``Volume`` (discovery: ``discovery.py``).

``plan_series`` checks the geometry from headers alone (sort along the slice normal, duplicates, gaps,
non-uniform spacing, gantry tilt); ``load_series`` decodes the pixels in a thread pool, applies the
per-slice rescale and any resampling the plan asks for, and builds the LPS geometry.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ..volume import DicomSource, Volume, affine_from_lps
from .discovery import SeriesInfo
from .files import fmt_mm, open_regular, parallel_map
from .frames import (NATIVE_SYNTAXES, Frame, SkipFile, compressed_magic, native_size_problem, pixel_layout,
                     transfer_syntax)

log = logging.getLogger(__package__)  # "liverseg.io.dicom": one logger for the whole package

DUPLICATE_TOL_MM = 0.01      # two slices closer than this along the normal sit at the same position
GAP_FACTOR = 1.5             # a step above this many median spacings is a missing slice
UNIFORM_TOL = 0.02           # positions within 2% of a spacing from a uniform grid count as uniform
TILT_TOL = 0.01              # in-plane drift above 1% of a pixel means the stack is sheared (gantry tilt)


# ----------------------------------------------------------------------------------------------------
# Validation: sort, duplicates, gaps, spacing, tilt
# ----------------------------------------------------------------------------------------------------

@dataclass
class SeriesPlan:
    """How the sorted, validated slices become a volume."""

    slices: list[list[Frame]]       # one list per distinct position (duplicates grouped), sorted along the normal
    positions_mm: np.ndarray        # distance of each distinct position along the normal
    target_mm: np.ndarray           # where the output slices lie (== positions_mm when no resampling)
    inplane_offsets_mm: np.ndarray  # (n, 2) drift of each slice origin along row/column directions (tilt)
    notes: list[str]

    @property
    def resampled(self) -> bool:
        return len(self.target_mm) != len(self.positions_mm) or not np.allclose(self.target_mm, self.positions_mm)

    @property
    def tilted(self) -> bool:
        return bool(np.any(self.inplane_offsets_mm != 0))


def plan_series(info: SeriesInfo, source: Path, allow_gaps: bool = False) -> SeriesPlan:
    if info.rejected:
        bad = info.rejected[0]
        more = f" and {len(info.rejected) - 1} more file(s)" if len(info.rejected) > 1 else ""
        raise InputError(f"{source}: series {info.label}: {bad.path}{more} cannot be used ({bad.reason}); a slice "
                         "may be missing, so the series is refused: export it again, or move the file(s) out of "
                         "the folder if they are not part of it")
    first = info.frames[0]
    odd = next((f for f in info.frames if f.rescale_tags != first.rescale_tags), None)
    if odd is not None:
        def tags(f: Frame) -> str:
            given = [n for n, g in zip(("RescaleSlope", "RescaleIntercept"), f.rescale_tags) if g]
            return " and ".join(given) or "neither RescaleSlope nor RescaleIntercept"
        raise InputError(f"{source}: series {info.label}: {odd.path} gives {tags(odd)}, {first.path.name} gives "
                         f"{tags(first)}; the slices would not share one intensity scale, so the series is refused")
    normal = first.normal
    dist = np.array([f.position @ normal for f in info.frames])
    order = np.argsort(dist, kind="stable")
    slices: list[list[Frame]] = []
    positions: list[float] = []
    for idx in order:
        if positions and dist[idx] - positions[-1] < DUPLICATE_TOL_MM:
            slices[-1].append(info.frames[idx])
        else:
            slices.append([info.frames[idx]])
            positions.append(float(dist[idx]))
    if len(slices) < 2:
        raise InputError(f"{source}: series {info.label}: all {info.n_slices} slices lie at the same position "
                         f"{fmt_mm(positions[0])} mm along the slice normal; liverseg needs a 3D series")
    pos = np.array(positions)
    steps = np.diff(pos)
    median = float(np.median(steps))
    notes = []
    n_dup = sum(len(s) - 1 for s in slices)
    if n_dup:
        notes.append(f"{n_dup} duplicate slice(s) at identical positions merged")
    gaps = np.nonzero(steps > GAP_FACTOR * median)[0]
    if len(gaps):
        k = int(gaps[0])
        where = (f"between {fmt_mm(pos[k])} mm ({slices[k][0].path.name}) and {fmt_mm(pos[k + 1])} mm "
                 f"({slices[k + 1][0].path.name}) along the slice normal: a step of {fmt_mm(steps[k])} mm, "
                 f"{steps[k] / median:.1f}x the median spacing {fmt_mm(median)} mm")
        if not allow_gaps:
            more = f" (and {len(gaps) - 1} more gap(s))" if len(gaps) > 1 else ""
            raise InputError(f"{source}: series {info.label} has missing slices {where}{more}; export the "
                             "complete series, or pass --allow-gaps to interpolate across the gap")
        notes.append(f"{len(gaps)} gap(s) interpolated (first {where})")
    span = pos[-1] - pos[0]
    n_uniform = len(pos) if not len(gaps) else int(round(span / median)) + 1
    target = pos[0] + np.arange(n_uniform) * (span / (n_uniform - 1))
    if not len(gaps):
        deviation = np.abs(pos - target).max()
        if deviation <= UNIFORM_TOL * (span / (n_uniform - 1)):
            target = pos.copy()
        else:
            notes.append(f"non-uniform slice spacing ({fmt_mm(steps.min())}..{fmt_mm(steps.max())} mm) resampled to "
                         f"{fmt_mm(span / (n_uniform - 1))} mm")
    offsets = np.array([[(s[0].position - first.position) @ first.row_dir, (s[0].position - first.position) @
                         first.col_dir] for s in slices])
    offsets -= offsets[0]
    drift = np.abs(offsets) / np.array([first.pixel_spacing[1], first.pixel_spacing[0]])
    if drift.max() <= TILT_TOL:
        offsets = np.zeros_like(offsets)
    else:
        angle = np.degrees(np.arctan2(np.linalg.norm(offsets[-1]), pos[-1] - pos[0]))
        notes.append(f"gantry tilt / sheared stack ({angle:.2f} degrees) corrected by resampling each slice onto an "
                     "orthogonal grid")
    return SeriesPlan(slices, pos, target, offsets, notes)


# ----------------------------------------------------------------------------------------------------
# Decoding and assembly
# ----------------------------------------------------------------------------------------------------

def _native_pixels(raw: bytes, layout: tuple, order: str) -> np.ndarray:
    """Uncompressed pixel data (exactly the bytes the header describes, checked before) as
    (frames, rows, cols), BitsStored applied (masked, or sign-extended when signed)."""
    frames, rows, cols, bits, stored, signed = layout
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}").newbyteorder(order)
    array = np.frombuffer(raw, dtype=dtype, count=frames * rows * cols).astype(dtype.newbyteorder("="))
    if stored < bits:
        if signed:
            shift = array.dtype.type(bits - stored)
            array = (array << shift) >> shift
        else:
            array = array & array.dtype.type((1 << stored) - 1)
    return array.reshape(frames, rows, cols)


def _decode_with_gdcm(path: Path) -> np.ndarray:
    """Last resort for compressed transfer syntaxes that pydicom's plug-ins cannot decode: SimpleITK's
    GDCM (which applies the rescale itself)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image)
    if array.ndim not in (2, 3) or image.GetNumberOfComponentsPerPixel() != 1:
        raise RuntimeError(f"GDCM decoded an array of shape {array.shape}")
    return array.reshape(-1, array.shape[-2], array.shape[-1])


def _decode(path: Path, ds: Any) -> tuple[np.ndarray, bool]:
    """All frames of one file as (frames, rows, cols); True when the rescale was already applied.

    Native transfer syntaxes: only pixel data of exactly the size the header describes (one pad byte
    allowed for an odd size), never a compressed stream. Compressed ones: a decoder (pydicom's
    plug-ins, then GDCM) must succeed and give the header's frames x rows x columns. Anything else is
    refused naming the file (a fallback decoder never guesses)."""
    try:
        layout = pixel_layout(ds)
    except SkipFile as exc:
        raise InputError(f"{path}: {exc}; the file is damaged") from None
    expected = layout[:3]
    ts = transfer_syntax(ds)
    raw = ds.get("PixelData")
    if raw is None:
        raise InputError(f"{path}: has no pixel data; remove it from the series folder")
    if ts in NATIVE_SYNTAXES:
        if not isinstance(raw, (bytes, bytearray)) or compressed_magic(bytes(raw[:12])):
            raise InputError(f"{path}: pixel data holds a compressed stream but the transfer syntax {ts} says "
                             "uncompressed; the file is damaged")
        problem = native_size_problem(len(raw), layout)
        if problem:
            raise InputError(f"{path}: {problem}; the file is damaged or its header is wrong")
        return _native_pixels(raw, layout, NATIVE_SYNTAXES[ts]), False
    try:
        array = np.asarray(ds.pixel_array)
        array = array.reshape(-1, array.shape[-2], array.shape[-1]) if array.ndim in (2, 3) else array
        if array.shape != expected:
            raise ValueError(f"decoded shape {array.shape}, the header says {expected}")
        return array, False
    except Exception as exc:  # noqa: BLE001 - any decoder failure: try GDCM, then refuse with the reason
        first = f"{type(exc).__name__}: {' '.join(str(exc).split())[:150]}"
    try:
        array = _decode_with_gdcm(path)
        if array.shape == expected:
            return array, True
        first += f"; GDCM decoded shape {array.shape}, the header says {expected}"
    except RuntimeError:
        pass
    raise InputError(f"{path}: pixel data cannot be decoded ({first}); the file is damaged or uses a transfer "
                     "syntax no installed decoder supports (install pylibjpeg-libjpeg / pylibjpeg-openjpeg / pyjpegls)")


def _rescale_into(slices: list[tuple[np.ndarray, Frame, bool]]) -> np.ndarray:
    """Stack the slices into one (k, rows, cols) array with per-slice RescaleSlope/Intercept applied.

    Integers stay integers (int16 when the rescaled range fits, else int32) when every slope is 1 and
    every intercept whole; otherwise float32. The work is split per slice over the thread pool (numpy
    releases the GIL), writing straight into the output.
    """
    slopes = [1.0 if done else f.slope for _, f, done in slices]
    intercepts = [0.0 if done else f.intercept for _, f, done in slices]
    shape = (len(slices),) + slices[0][0].shape
    if all(v == 1 for v in slopes) and all(v == round(v) for v in intercepts) and \
            all(p.dtype.kind in "iu" for p, _, _ in slices):
        ranges = parallel_map(lambda item: (int(item[0].min()), int(item[0].max())), slices)
        lo = min(r[0] + int(c) for r, c in zip(ranges, intercepts))
        hi = max(r[1] + int(c) for r, c in zip(ranges, intercepts))
        dtype = np.int16 if -32768 <= lo and hi <= 32767 else np.int32
    else:
        dtype = np.float32
    out = np.empty(shape, dtype=dtype)

    def fill(k: int) -> None:
        pixels = slices[k][0]
        if slopes[k] != 1:
            np.multiply(pixels, np.float32(slopes[k]), out=out[k], casting="unsafe")
            out[k] += dtype(intercepts[k])
        elif intercepts[k] != 0:
            np.add(pixels, dtype(intercepts[k]), out=out[k], casting="unsafe")
        else:
            out[k] = pixels

    parallel_map(fill, list(range(len(slices))))
    return out


def _shift_slices(stack: np.ndarray, offsets_mm: np.ndarray, spacing_rc: tuple[float, float]) -> np.ndarray:
    """Move each slice (rows, cols) by its in-plane drift so all slices share the first one's origin."""
    from scipy import ndimage

    out = np.empty(stack.shape, dtype=np.float32)
    for k in range(stack.shape[0]):
        shift = (offsets_mm[k, 1] / spacing_rc[0], offsets_mm[k, 0] / spacing_rc[1])  # (rows, cols)
        out[k] = ndimage.shift(stack[k].astype(np.float32), shift, order=1, mode="constant", cval=float(stack.min()))
    return out


def _resample_along_normal(stack: np.ndarray, positions: np.ndarray, target: np.ndarray) -> np.ndarray:
    upper = np.clip(np.searchsorted(positions, target, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = ((target - positions[lower]) / (positions[upper] - positions[lower])).astype(np.float32)
    weight = np.clip(weight, 0, 1)[:, None, None]
    return stack[lower].astype(np.float32) * (1 - weight) + stack[upper].astype(np.float32) * weight


def load_series(info: SeriesInfo, source: Path, allow_gaps: bool = False) -> Volume:
    """Decode and assemble one series (found from the headers by ``dicom.find_series``) into a Volume.

    Only this series' files are read in full (pixels included), in a thread pool.
    """
    import pydicom

    plan = plan_series(info, source, allow_gaps)
    files = info.files

    def decode(path: Path) -> tuple[np.ndarray, bool]:
        try:
            with open_regular(path) as fp:
                ds = pydicom.dcmread(fp)
        except Exception as exc:  # noqa: BLE001 - it parsed a moment ago: changed or damaged since
            raise InputError(f"{path}: cannot be read again for its pixel data ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:150]})") from None
        return _decode(path, ds)

    decoded = dict(zip(files, parallel_map(decode, list(files))))
    first = plan.slices[0][0]
    stack_frames = []
    for group in plan.slices:
        frame = group[0]
        pixels, done = decoded[frame.path]
        if frame.frame >= pixels.shape[0] or pixels.shape[1:] != (frame.rows, frame.cols):
            raise InputError(f"{frame.path}: decoded pixel data has shape {pixels.shape}, but the header says "
                             f"{frame.frame + 1} frame(s) of {frame.rows}x{frame.cols}; the file is damaged")
        stack_frames.append((pixels[frame.frame], frame, done))
        for other in group[1:]:
            other_pixels, other_done = decoded[other.path]
            a = pixels[frame.frame] * (1 if done else frame.slope) + (0 if done else frame.intercept)
            if other.frame >= other_pixels.shape[0] or other_pixels.shape[1:] != (frame.rows, frame.cols):
                raise InputError(f"{other.path}: decoded pixel data does not match its header; the file is damaged")
            b = other_pixels[other.frame] * (1 if other_done else other.slope) + (0 if other_done else other.intercept)
            if not np.array_equal(a, b):
                raise InputError(
                    f"{source}: series {info.label}: {frame.path.name} and {other.path.name} lie at the same "
                    f"position ({fmt_mm(frame.position @ first.normal)} mm along the slice normal) but hold different "
                    "pixels (two acquisitions mixed in one series?); pick the files of one acquisition into a folder")
    stack = _rescale_into(stack_frames)
    if plan.tilted:
        stack = _shift_slices(stack, plan.inplane_offsets_mm, first.pixel_spacing)
    if plan.resampled:
        stack = _resample_along_normal(stack, plan.positions_mm, plan.target_mm)
    for note in plan.notes:
        log.warning("%s: series %s: %s", source, info.label, note)
    dz = float(plan.target_mm[1] - plan.target_mm[0])
    origin = first.position + (plan.target_mm[0] - plan.positions_mm[0]) * first.normal
    direction = np.stack([first.row_dir, first.col_dir, first.normal], axis=1)
    affine = affine_from_lps((first.pixel_spacing[1], first.pixel_spacing[0], dz), origin, direction)
    # (k, rows, cols) -> (i=col, j=row, k): a Fortran-ordered view, no copy (a C-ordered copy of a
    # 512x512x120 series costs longer than decoding it); SimpleITK/NIfTI writers take it back for free
    array = stack.transpose(2, 1, 0)
    exact = not plan.resampled and not plan.tilted
    # the series UID and the corrections live on Volume.dicom only (one place for the DICOM source)
    meta = {"path": str(source), "format": "dicom", "n_slices": array.shape[2], "modality": info.modality}
    dicom = DicomSource(str(source), info.series_uid or None,
                        tuple(str(g[0].path) for g in plan.slices) if exact else None, tuple(plan.notes))
    return Volume(array, affine, meta, dicom)


__all__ = ["SeriesPlan", "load_series", "plan_series"]
