"""DICOM SEG output (highdicom): one BINARY segment per label present, frames aligned voxel by voxel
with the source CT slices, SNOMED codes and colours from the anatomy table (``anatomy``).

The other outputs (NIfTI label map, Slicer .seg.nrrd, colour table) are in ``outputs.py``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import GeometryError, InputError
from ..version import __version__
from .anatomy import resolve_colors, segment_codes
from .dicom.discovery import choose_series
from .outputs import check_labels, label_voxel_counts, labels_on_grid
from .volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)


def _source_datasets(source: Any, labels: Volume) -> list[Any]:
    """pydicom datasets (headers only) of the source series: by default the series the volume was read
    from (``Volume.dicom``); else ``source``, a folder, a list of files or of datasets.

    For a folder, the slice files recorded by the DICOM reader (``Volume.dicom.slice_files``) are
    used when present; otherwise the series is discovered again (``Volume.dicom.series_uid``).
    """
    import pydicom

    refs = labels.dicom
    if source is None:
        if refs is None:
            raise InputError(f"{labels.meta.get('path', 'the input')}: was not read from a DICOM series; DICOM SEG "
                             "needs the source DICOM series (a folder or its files)")
        source = refs.path
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.exists():
            raise InputError(f"{folder}: DICOM SEG needs the source DICOM series (a folder or its files)")
        if refs is not None and refs.slice_files:
            files: list[Any] = list(refs.slice_files)
        elif refs is not None and refs.corrections:
            raise GeometryError(f"{folder}: the series was read with corrections ({'; '.join(refs.corrections)}), "
                                "so its voxel grid is not the grid of the source slices; a DICOM SEG must follow "
                                "the source slices, write segmentation.nii.gz / .seg.nrrd instead")
        else:
            files = list(choose_series(folder, refs.series_uid if refs is not None else None).files)
    else:
        files = list(source)
    if not files:
        raise InputError("DICOM SEG needs the source series' files; got an empty list")
    datasets = []
    for item in files:
        if isinstance(item, pydicom.Dataset):
            datasets.append(item)
            continue
        try:
            datasets.append(pydicom.dcmread(str(item), stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InputError(f"{item}: cannot be read as a DICOM file ({exc})") from None
    for ds in datasets:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{getattr(ds, 'filename', 'a source file')}: is a multi-frame image; liverseg writes "
                             "DICOM SEG only for series of single-frame slices")
    datasets = _complete_uids(datasets)
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) != 1:
        raise InputError(f"DICOM SEG source files belong to {len(series)} series ({', '.join(sorted(series))}); "
                         "give the files of the one series that was segmented")
    expected = refs.series_uid if refs is not None else None  # None: read without SeriesInstanceUID
    if expected and expected not in series:
        raise InputError(f"DICOM SEG source series {next(iter(series))} is not the segmented series {expected}")
    return datasets


# Patient/study attributes a SEG copies from its source (type 2 there: present, possibly empty).
# Anonymised or synthetic series often lack them entirely.
TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime")


def _complete_uids(datasets: list[Any]) -> list[Any]:
    """Copies of anonymised source headers with the identifiers a SEG must reference filled in.

    Anonymisers sometimes blank SOP Class/Instance UID (the file meta still has them), drop the
    Series, Study or Frame of Reference UID, or drop type-2 patient/study attributes (added empty). The SOP UIDs are taken from the file meta; missing series-
    level UIDs are derived deterministically from the instances, so every output of one series agrees.
    """
    from pydicom.uid import generate_uid

    needed = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
    if all(ds.get(tag) for ds in datasets for tag in needed) and all(tag in ds for ds in datasets for tag in TYPE2_COPIED):
        return datasets
    import copy

    completed = []
    filled: set[str] = set()
    for ds in datasets:
        ds = copy.copy(ds)  # shallow: only top-level elements are replaced below
        meta = getattr(ds, "file_meta", None)
        for tag, meta_tag in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(tag):
                value = meta.get(meta_tag) if meta is not None else None
                if not value:
                    raise InputError(f"{getattr(ds, 'filename', 'a source file')}: has no {tag}, in the dataset or "
                                     "its file meta; a DICOM SEG cannot reference it")
                setattr(ds, tag, value)
                filled.add(tag)
        for tag in TYPE2_COPIED:  # type 2: must be present, may be empty; highdicom copies them unconditionally
            if tag not in ds:
                setattr(ds, tag, "")
                filled.add(tag)
        completed.append(ds)
    instances = sorted(str(ds.SOPInstanceUID) for ds in completed)
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        present = {str(ds.get(tag)) for ds in completed if ds.get(tag)}
        if any(not ds.get(tag) for ds in completed) and len(present) <= 1:
            value = present.pop() if present else generate_uid(entropy_srcs=[tag, *instances])
            for ds in completed:
                setattr(ds, tag, value)
            filled.add(tag)
    if filled:
        log.warning("DICOM SEG: the source series lacks %s; filled in (SOP UIDs from the file meta, series-level "
                    "UIDs derived from the instance UIDs, patient/study attributes empty)", ", ".join(sorted(filled)))
    return completed


def _frame_placement(ds: Any, labels: Volume,
                     tolerance_voxel: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Where source slice ``ds`` lies on the label grid: (voxel index of pixel (0, 0), voxel step per
    row, voxel step per column, the slice's name for messages), from its corner pixels.

    Refuses a slice whose corners are not on voxel centres (the labels are not on the series' grid).
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    position = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    # DICOM: pixel (r, c) lies at position + c * col_spacing * row_dir + r * row_spacing * col_dir (LPS).
    corners_rc = np.array([[0, 0], [0, cols - 1], [rows - 1, 0], [rows - 1, cols - 1]], dtype=np.float64)
    lps = (position[None, :] + corners_rc[:, 1:2] * col_spacing * orientation[None, :3]
           + corners_rc[:, 0:1] * row_spacing * orientation[None, 3:])
    lps_h = np.concatenate([lps, np.ones((4, 1))], axis=1)
    ras_to_ijk = np.linalg.inv(labels.affine_ras)
    ijk = (ras_to_ijk @ LPS_TO_RAS @ lps_h.T).T[:, :3]
    rounded = np.round(ijk)
    name = getattr(ds, "filename", None) or ds.get("SOPInstanceUID", "?")
    if np.abs(ijk - rounded).max() > tolerance_voxel:
        raise GeometryError(f"source slice {name} does not lie on the label map's voxel grid (off by "
                            f"{np.abs(ijk - rounded).max():.3f} voxel); the labels must be on the exact "
                            "grid of the DICOM series they refer to")
    origin = rounded[0]
    step_c = (rounded[1] - origin) / max(cols - 1, 1)
    step_r = (rounded[2] - origin) / max(rows - 1, 1)
    return origin, step_r, step_c, str(name)


def _frame_indices(ds: Any, labels: Volume, tolerance_voxel: float = 0.1) -> tuple[np.ndarray, ...]:
    """Voxel indices (i, j, k arrays of shape rows x columns) of every pixel of source slice ``ds``."""
    placement = _frame_placement(ds, labels, tolerance_voxel)
    return _grid_indices(labels.shape, int(ds.Rows), int(ds.Columns), *placement)


def _grid_indices(shape: tuple[int, ...], rows: int, cols: int, origin: np.ndarray, step_r: np.ndarray,
                  step_c: np.ndarray, name: str) -> tuple[np.ndarray, ...]:
    """The general path: voxel indices of every pixel of a frame placed anywhere on the grid."""
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    indices = tuple(np.rint(origin[a] + r * step_r[a] + c * step_c[a]).astype(np.intp) for a in range(3))
    for a in range(3):
        if indices[a].min() < 0 or indices[a].max() >= shape[a]:
            raise GeometryError(f"source slice {name} reaches outside the label map's grid {shape} "
                                f"(axis {a}: {indices[a].min()}..{indices[a].max()})")
    return indices


def _unit_axis(step: np.ndarray) -> int | None:
    """The grid axis a step of exactly one voxel runs along, or None for any other step."""
    axis = _grid_axis(step)
    return axis if axis is not None and abs(step[axis]) == 1 else None


def _grid_axis(step: np.ndarray) -> int | None:
    """The grid axis a step of a whole, nonzero number of voxels runs along, or None."""
    nonzero = np.flatnonzero(step)
    if len(nonzero) != 1 or step[nonzero[0]] != round(step[nonzero[0]]):
        return None
    return int(nonzero[0])


def _axis_range(start: float, step: float, n: int, size: int) -> slice | None:
    """The slice taking ``n`` voxels from ``start`` in whole steps, or None when it leaves 0..size-1."""
    first, last = int(start), int(start) + (n - 1) * int(step)
    if min(first, last) < 0 or max(first, last) >= size:
        return None
    stop = last + int(step)
    return slice(first, stop if stop >= 0 else None, int(step))


def _plane_view(array: np.ndarray, rows: int, cols: int, origin: np.ndarray, step_r: np.ndarray,
                step_c: np.ndarray) -> np.ndarray | None:
    """The frame as a view of ``array`` when the slice is one plane of the grid with its rows and
    columns along grid axes (the usual case: the label map is the series' own grid), else None.

    Gathering a 512x512 frame by fancy indexing builds three full-size index arrays; slicing,
    flipping and transposing cost nothing and give exactly the same values.
    """
    axis_r, axis_c = _unit_axis(step_r), _unit_axis(step_c)
    if axis_r is None or axis_c is None or axis_r == axis_c:
        return None
    index: list[Any] = [int(v) for v in origin]  # the third axis stays at the slice's plane
    if any(not 0 <= v < size for v, size in zip(index, array.shape)):
        return None  # outside the grid (a negative index would wrap around): the general path says where
    for axis, step, n in ((axis_r, step_r, rows), (axis_c, step_c, cols)):
        index[axis] = _axis_range(origin[axis], step[axis], n, array.shape[axis])
        if index[axis] is None:
            return None  # reaches outside the grid: the general path says where
    plane = array[tuple(index)]  # its axes in grid order
    return plane.T if axis_r > axis_c else plane


def _frame(ds: Any, labels: Volume, placement: tuple | None = None) -> np.ndarray:
    """The label values under every pixel of source slice ``ds``, (rows, columns): a view of the
    label map when the slice is a grid plane, else gathered voxel by voxel."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    placement = placement or _frame_placement(ds, labels)
    view = _plane_view(labels.array, rows, cols, *placement[:3])
    return view if view is not None else labels.array[_grid_indices(labels.shape, rows, cols, *placement)]


def _stack_view(array: np.ndarray, rows: int, cols: int, placements: list[tuple]) -> np.ndarray | None:
    """All frames as one view (slices, rows, columns) of ``array`` when the slices are equally spaced
    grid planes with one in-plane layout, else None. For a series on its own grid that is
    ``array.transpose(2, 1, 0)``: no copy of the label map (a fresh copy costs more than the
    slicing, page faults included)."""
    origin, step_r, step_c, _name = placements[0]
    if len(placements) < 2 or any(not (np.array_equal(p[1], step_r) and np.array_equal(p[2], step_c))
                                  for p in placements[1:]):
        return None
    origins = np.array([p[0] for p in placements])
    step_k = origins[1] - origins[0]
    axes = (_grid_axis(step_k), _unit_axis(step_r), _unit_axis(step_c))
    if None in axes or len(set(axes)) != 3 or not (np.diff(origins, axis=0) == step_k).all():
        return None
    index: list[Any] = [None] * 3
    for axis, step, n in zip(axes, (step_k, step_r, step_c), (len(placements), rows, cols)):
        index[axis] = _axis_range(origin[axis], step[axis], n, array.shape[axis])
        if index[axis] is None:
            return None  # reaches outside the grid: the general path says where
    stack = array[tuple(index)].transpose(axes)
    stack.flags.writeable = False  # the label map itself: nothing downstream may write into it
    return stack


def _frames(datasets: list[Any], labels: Volume) -> np.ndarray:
    """The label values under every pixel of every source slice, (slices, rows, columns), as stored."""
    placements = [_frame_placement(ds, labels) for ds in datasets]
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    stack = _stack_view(labels.array, *next(iter(shapes)), placements) if len(shapes) == 1 else None
    if stack is not None:
        return stack
    return np.stack([_frame(ds, labels, placement) for ds, placement in zip(datasets, placements)])


def _segment_numbers(frames: np.ndarray, present: list[int], n_labels: int) -> np.ndarray:
    """The frames as uint8 segment numbers: label value ``present[n - 1]`` becomes segment ``n``.

    When the present labels are 1, 2, ... already, uint8 frames are their own segment numbers (every
    other value is absent from the label map), and the lookup, a full copy, is skipped.
    """
    if frames.dtype == np.uint8 and present == list(range(1, len(present) + 1)):
        return frames
    lut = np.zeros(n_labels, dtype=np.uint8)
    for number, value in enumerate(present, start=1):
        lut[value] = number
    return lut[frames]


def write_dicom_seg(labels: np.ndarray, volume: Volume, path: str | Path, label_names: Sequence[str],
                    colors: dict[str, Any] | None = None, *, source: Any = None, model_id: str = "liverseg",
                    series_description: str = "liverseg segmentation", series_number: int = 300) -> Path:
    """Write a DICOM SEG (BINARY) of ``labels`` referencing the source CT series.

    ``labels`` lie on ``volume``'s grid, the grid ``read_volume`` gave for the series; the series is
    the one the volume was read from (``volume.dicom``). ``source`` stands in for it where the volume
    does not carry it: the series' folder (the series is chosen as ``read_volume`` did, by
    ``volume.dicom.series_uid`` when set), a list of its files, or a list of pydicom datasets.
    Each source slice becomes a frame (frames without any segment are omitted); every foreground
    label present in ``labels`` is one segment, numbered 1, 2, ... in label-value order and named
    after its label. When no foreground label is present, all of them are written as empty segments
    so the file stays valid.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    path = Path(path)
    labels = labels_on_grid(labels, volume)
    check_labels(labels, label_names, path)
    datasets = _source_datasets(source, labels)
    rgb = resolve_colors(label_names, colors)

    frames = _frames(datasets, labels)
    if frames.dtype == bool:
        frames = frames.view(np.uint8)  # label values 0 and 1 (lookup indices), not a boolean mask
    counts = label_voxel_counts(labels.array, len(label_names))
    present = [v for v in range(1, len(label_names)) if counts[v] > 0]
    all_empty = not present
    if all_empty:
        present = list(range(1, len(label_names)))
    pixel_array = _segment_numbers(frames, present, len(label_names))

    algorithm = hd.AlgorithmIdentificationSequence(name=model_id[:64], version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, value in enumerate(present, start=1):
        name = label_names[value]
        (cat_code, cat_meaning), (type_code, type_meaning) = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=Code(cat_code, "SCT", cat_meaning),
            segmented_property_type=Code(type_code, "SCT", type_meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"label {value}: {name}"[:64],
            tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*rgb[name]),
        ))
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="liverseg",
        manufacturer_model_name=model_id[:64],
        software_versions=f"liverseg {__version__}",
        device_serial_number="0",
        series_description=series_description[:64],
        content_label="LIVERSEG",
        content_description=f"{model_id} automatic segmentation"[:64],
        omit_empty_frames=not all_empty,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path
