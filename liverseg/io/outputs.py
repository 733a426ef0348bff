"""Segmentation outputs written on the input's grid.

* ``write_label_map``: uint8 NIfTI/NRRD/MHA label map (SimpleITK).
* ``write_seg_nrrd``: 3D Slicer ``.seg.nrrd`` (one label-map layer plus Slicer's segment metadata:
  names, colours, label values, extents, terminology), following Slicer's segmentation file
  specification and ``vtkMRMLSegmentationStorageNode``'s writer.
* ``write_color_table``: Slicer ``.ctbl`` colour table (``index name R G B A``).
* ``write_dicom_seg``: DICOM Segmentation (highdicom, BINARY) referencing the source CT series,
  one frame per source slice that holds a segment.

Every file is written atomically: a temporary file in the destination folder, then ``os.replace``.
Label values are indices into ``label_names`` (index 0 is the background), as in
``ExperimentConfig.data.labels``.
"""
from __future__ import annotations

import colorsys
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GeometryError, InputError
from .images import write_volume
from .volume import LPS_TO_RAS, Volume, lps_from_affine

RGB = tuple[int, int, int]
log = logging.getLogger(__name__)


def write_label_map(labels: np.ndarray, reference: Volume, path: str | Path) -> Path:
    """Write a uint8 label map on exactly ``reference``'s grid (shape, spacing, origin, direction)."""
    if tuple(labels.shape) != reference.shape:
        raise GeometryError(f"label map shape {tuple(labels.shape)} differs from the reference grid "
                            f"{reference.shape} of {reference.meta.get('path', 'the input')}")
    if labels.size and int(labels.max()) > 255:
        raise ValueError(f"label values up to {int(labels.max())} do not fit uint8")
    return write_volume(reference.with_array(labels.astype(np.uint8, copy=False)), Path(path))


# ----------------------------------------------------------------------------- atomic writes

@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name keeps the destination's suffixes (``.seg.nrrd``, ``.png``) so that writers
    which pick a format from the extension do the right thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if len(path.suffixes) >= 2 else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# ----------------------------------------------------------------------------- names, colours, codes

def _key(name: str) -> str:
    """Normalised label name for look-ups: ``'Liver Tumour'`` -> ``'liver_tumour'``."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


# Colours: 3D Slicer's GenericAnatomyColors table (Slicer3:2010_GenericAnatomyColors), which is also
# what Slicer's terminology and TotalSegmentator's Slicer exports recommend for these structures.
_ANATOMY: RGB = (221, 130, 101)
_VEIN: RGB = (0, 151, 206)
_ARTERY: RGB = (216, 101, 79)
_MASS: RGB = (144, 238, 144)

# Segmentation property category codes (DICOM CID 7150) and type codes (SNOMED CT).
_CAT_ANATOMY = ("91723000", "Anatomical Structure")
_CAT_TISSUE = ("85756007", "Tissue")
_CAT_MORPH = ("49755003", "Morphologically Abnormal Structure")


class _Known:
    __slots__ = ("category", "color", "type_code")

    def __init__(self, color: RGB, category: tuple[str, str], type_code: tuple[str, str]):
        self.color, self.category, self.type_code = color, category, type_code


_KNOWN: dict[str, _Known] = {}


def _add(names: str, color: RGB, category: tuple[str, str], code: str, meaning: str) -> None:
    for name in names.split():
        _KNOWN[name] = _Known(color, category, (code, meaning))


_add("liver", (221, 130, 101), _CAT_ANATOMY, "10200004", "Liver")
_add("tumour tumor liver_tumour liver_tumor tumours tumors neoplasm liver_lesion hepatic_tumour "
     "hepatic_tumor", _MASS, _CAT_MORPH, "108369006", "Neoplasm")
_add("lesion lesions", (205, 205, 100), _CAT_MORPH, "52988006", "Lesion")
_add("mass", _MASS, _CAT_MORPH, "4147007", "Mass")
_add("cyst", (205, 205, 100), _CAT_MORPH, "367643001", "Cyst")
_add("spleen", (157, 108, 162), _CAT_ANATOMY, "78961009", "Spleen")
_add("kidney kidneys", (185, 102, 83), _CAT_ANATOMY, "64033007", "Kidney")
_add("kidney_right right_kidney", (185, 102, 83), _CAT_ANATOMY, "9846003", "Right kidney")
_add("kidney_left left_kidney", (212, 126, 104), _CAT_ANATOMY, "18639004", "Left kidney")
_add("gallbladder gall_bladder", (139, 150, 98), _CAT_ANATOMY, "28231008", "Gallbladder")
_add("pancreas", (249, 180, 111), _CAT_ANATOMY, "15776009", "Pancreas")
_add("stomach", (216, 132, 105), _CAT_ANATOMY, "69695003", "Stomach")
_add("duodenum", (255, 253, 229), _CAT_ANATOMY, "38848004", "Duodenum")
_add("colon", (204, 168, 143), _CAT_ANATOMY, "71854001", "Colon")
_add("small_bowel small_intestine", (205, 167, 142), _CAT_ANATOMY, "30315005", "Small intestine")
_add("esophagus oesophagus", (211, 171, 143), _CAT_ANATOMY, "32849002", "Esophagus")
_add("urinary_bladder bladder", (222, 154, 132), _CAT_ANATOMY, "89837001", "Urinary bladder")
_add("aorta", (224, 97, 76), _CAT_ANATOMY, "15825003", "Aorta")
_add("inferior_vena_cava ivc", _VEIN, _CAT_ANATOMY, "64131007", "Inferior vena cava")
_add("portal_vein portal_vein_and_splenic_vein", (0, 122, 171), _CAT_ANATOMY, "32764006", "Portal vein")
_add("hepatic_vein hepatic_veins", (0, 147, 202), _CAT_ANATOMY, "8993003", "Hepatic vein")
_add("vessel vessels hepatic_vessel hepatic_vessels blood_vessel", _VEIN, _CAT_ANATOMY, "59820001",
     "Blood vessel")
_add("vein veins", _VEIN, _CAT_ANATOMY, "29092000", "Vein")
_add("artery arteries hepatic_artery", _ARTERY, _CAT_ANATOMY, "51114001", "Artery")
_add("lung lungs", (197, 165, 145), _CAT_ANATOMY, "39607008", "Lung")
_add("heart", (206, 110, 84), _CAT_ANATOMY, "80891009", "Heart")
_add("bone bones", (241, 214, 145), _CAT_TISSUE, "272673000", "Bone")
_add("muscle muscles", (192, 104, 88), _CAT_TISSUE, "91727004", "Muscle")
_add("fat", (230, 220, 70), _CAT_TISSUE, "248153007", "Fat")

# Slicer's "region_N" colours, then golden-angle hues: distinct colours for names not listed above.
_PALETTE: tuple[RGB, ...] = (
    (185, 232, 61), (0, 226, 255), (251, 159, 255), (230, 169, 29), (0, 194, 113), (104, 160, 249),
    (221, 108, 158), (137, 142, 0), (230, 70, 0), (0, 147, 0), (0, 147, 248), (231, 0, 206),
    (129, 78, 0), (0, 116, 0), (0, 0, 255), (157, 0, 0))


def _palette(index: int) -> RGB:
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (round(r * 255), round(g * 255), round(b * 255))


def _too_close(color: RGB, used: list[RGB], min_distance: float = 40.0) -> bool:
    return any(float(np.linalg.norm(np.subtract(color, u))) < min_distance for u in used)


def label_colors(label_names: Sequence[str]) -> dict[str, RGB]:
    """Display colour (0-255 RGB) of every label name, background black.

    Known structures get 3D Slicer's standard anatomy colours (liver 221,130,101 as in Slicer and
    TotalSegmentator); other names get distinct colours from a fixed palette. The result depends only
    on the list of names, and no two foreground labels share (or nearly share) a colour: a known
    colour already taken by an earlier label makes the later one fall back to the palette.
    """
    colors: dict[str, RGB] = {}
    used: list[RGB] = []
    next_palette = 0
    for index, name in enumerate(label_names):
        if index == 0 or _key(name) == "background":
            colors[name] = (0, 0, 0)
            continue
        known = _KNOWN.get(_key(name))
        color = known.color if known is not None else None
        while color is None or _too_close(color, used):
            color = _palette(next_palette)
            next_palette += 1
        colors[name] = color
        used.append(color)
    return colors


def _resolve_colors(label_names: Sequence[str], colors: dict[str, Any] | None) -> dict[str, RGB]:
    resolved = label_colors(label_names)
    for name, value in (colors or {}).items():
        if name not in resolved:
            raise InputError(f"colour given for label {name!r}, which is not one of the label names "
                             f"{list(label_names)}")
        rgb = tuple(int(v) for v in value)
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise InputError(f"colour {tuple(value)} of label {name!r} is not three integers 0-255")
        resolved[name] = rgb  # type: ignore[assignment]
    return resolved


def _codes(name: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(category, type) SNOMED codes of a label; generic Tissue/Tissue when the name is unknown."""
    known = _KNOWN.get(_key(name))
    return (known.category, known.type_code) if known is not None else (_CAT_TISSUE, _CAT_TISSUE)


def _check_labels(labels: Volume, label_names: Sequence[str], path: Path) -> None:
    if len(label_names) < 2:
        raise InputError(f"{path}: needs at least two label names (background first), got {list(label_names)}")
    if len(set(label_names)) != len(label_names):
        raise InputError(f"{path}: label names {list(label_names)} are not unique")
    if not np.issubdtype(labels.array.dtype, np.integer) and labels.array.dtype != bool:
        raise InputError(f"{path}: label map has dtype {labels.array.dtype}; give integer label values")
    top = int(labels.array.max()) if labels.array.size else 0
    low = int(labels.array.min()) if labels.array.size else 0
    if low < 0 or top >= len(label_names):
        raise InputError(f"{path}: label values {low}..{top} are outside 0..{len(label_names) - 1}, the "
                         f"indices of the label names {list(label_names)}")


# ----------------------------------------------------------------------------- Slicer .seg.nrrd

def _slicer_terminology(name: str) -> str:
    (cat_code, cat_meaning), (type_code, type_meaning) = _codes(name)
    # Slicer's own terminology files name these two categories "Anatomical Structure" (123037004) and
    # "Morphologically Altered Structure"; use its spelling so that Slicer finds the entry.
    if cat_code == _CAT_ANATOMY[0]:
        cat_code, cat_meaning = "123037004", "Anatomical Structure"
    elif cat_code == _CAT_MORPH[0]:
        cat_meaning = "Morphologically Altered Structure"
    return ("Segmentation category and type - DICOM master list"
            f"~SCT^{cat_code}^{cat_meaning}~SCT^{type_code}^{type_meaning}~^^"
            "~Anatomic codes - DICOM master list~^^~^^")


def _segment_extents(array: np.ndarray, n_labels: int) -> list[str]:
    """Slicer extent ``minI maxI minJ maxJ minK maxK`` of label values 1..n_labels-1.

    An empty segment gets ``0 -1 0 -1 0 -1``, the empty extent Slicer itself writes.
    """
    from scipy import ndimage

    boxes = ndimage.find_objects(array, max_label=n_labels - 1)  # one pass over the volume
    extents = []
    for box in boxes:
        if box is None:
            extents.append("0 -1 0 -1 0 -1")
        else:
            extents.append(" ".join(f"{s.start} {s.stop - 1}" for s in box))
    return extents


def _conversion_parameters(labels: Volume) -> str:
    """Slicer's 'Reference image geometry' (IJK-to-RAS, row-major, then extent) and surface smoothing."""
    m = labels.affine_ras
    nums = ";".join(repr(float(v)) for v in m.ravel())
    extent = ";".join(str(v) for s in labels.shape for v in (0, s - 1))
    return (f"Reference image geometry|{nums};{extent};|Image geometry description string determining "
            "the geometry of the reference image.&Smoothing factor|0.5|Smoothing factor.")


def write_seg_nrrd(labels: Volume, label_names: Sequence[str], path: str | Path,
                   colors: dict[str, Any] | None = None) -> Path:
    """Write a 3D Slicer ``.seg.nrrd``: one label-map layer on ``labels``' grid with segment metadata.

    Segment ``N`` is label value ``N + 1`` (``label_names[N + 1]``); every foreground name gets a
    segment, empty ones included (extent ``0 -1 0 -1 0 -1`` as Slicer writes it). Geometry is LPS
    (``space: left-posterior-superior``) from ``labels.affine_ras``, uncropped
    (``Segmentation_ReferenceImageExtentOffset = 0 0 0``), so the file has the input's exact grid.
    """
    import nrrd

    path = Path(path)
    _check_labels(labels, label_names, path)
    rgb = _resolve_colors(label_names, colors)
    dtype = np.uint8 if len(label_names) <= 256 else np.uint16
    array = labels.array.astype(dtype, copy=False)

    spacing, origin, direction = lps_from_affine(labels.affine_ras)
    axes = np.asarray(direction).reshape(3, 3) * np.asarray(spacing)[None, :]  # column a: axis a in LPS
    header: dict[str, Any] = {
        "type": "unsigned char" if dtype == np.uint8 else "unsigned short",
        "dimension": 3,
        "space": "left-posterior-superior",
        "sizes": np.array(labels.shape),
        "space directions": axes.T.copy(),  # NRRD: one row per axis
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "space origin": np.array(origin),
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|Closed surface|",
        "Segmentation_ConversionParameters": _conversion_parameters(labels),
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    extents = _segment_extents(array, len(label_names))
    for n, name in enumerate(label_names[1:]):
        value = n + 1
        prefix = f"Segment{n}_"
        header[prefix + "ID"] = f"Segment_{value}"
        header[prefix + "Name"] = name
        header[prefix + "NameAutoGenerated"] = "0"
        header[prefix + "Color"] = " ".join(f"{c / 255.0:.6g}" for c in rgb[name])
        header[prefix + "ColorAutoGenerated"] = "0"
        header[prefix + "Extent"] = extents[n]
        header[prefix + "LabelValue"] = str(value)
        header[prefix + "Layer"] = "0"
        header[prefix + "Tags"] = f"TerminologyEntry:{_slicer_terminology(name)}|"
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), _fortran_order(array), header, index_order="F", compression_level=1)
    return path


def _fortran_order(array: np.ndarray) -> np.ndarray:
    """The same array in Fortran memory order (NRRD's first axis fastest), copied in blocks.

    numpy's one-shot transposing copy of a large C-ordered volume is cache-hostile (about 10 s for
    512x512x1000 uint8); copying 32 MB slabs along the first axis takes about 2 s.
    """
    if array.flags.f_contiguous:
        return array
    out = np.empty(array.shape[::-1], dtype=array.dtype)  # C-ordered (k, j, i) == F-ordered (i, j, k)
    step = max(1, (1 << 25) // max(1, array.shape[1] * array.shape[2]))
    for i0 in range(0, array.shape[0], step):
        out[:, :, i0:i0 + step] = array[i0:i0 + step].transpose(2, 1, 0)
    return out.T


# ----------------------------------------------------------------------------- Slicer colour table

def write_color_table(label_names: Sequence[str], path: str | Path,
                      colors: dict[str, Any] | None = None) -> Path:
    """Write a 3D Slicer colour table (``.ctbl``): ``index name R G B A`` per label, background transparent."""
    path = Path(path)
    rgb = _resolve_colors(label_names, colors)
    lines = [f"# Color table file {path.name}", f"# {len(label_names)} values",
             "# written by liverseg: label value, name, red, green, blue, alpha (0-255)"]
    for index, name in enumerate(label_names):
        r, g, b = rgb[name]
        alpha = 0 if index == 0 else 255
        token = re.sub(r"\s+", "_", name.strip())  # Slicer splits the line on whitespace
        lines.append(f"{index} {token} {r} {g} {b} {alpha}")
    return write_text_atomic("\n".join(lines) + "\n", path)


# ----------------------------------------------------------------------------- DICOM SEG

def _source_datasets(source: Any, labels: Volume) -> list[Any]:
    """pydicom datasets (headers only) of the source series: a folder, a list of files or datasets.

    For a folder, the slice files recorded by the DICOM reader (``labels.meta['slice_files']``) are
    used when present; otherwise the series is discovered again (``labels.meta['series_uid']``).
    """
    import pydicom

    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.exists():
            raise InputError(f"{folder}: DICOM SEG needs the source DICOM series (a folder or its files)")
        if labels.meta.get("slice_files"):
            files: list[Any] = list(labels.meta["slice_files"])
        elif labels.meta.get("corrections"):
            raise GeometryError(f"{folder}: the series was read with corrections ({'; '.join(labels.meta['corrections'])}), "
                                "so its voxel grid is not the grid of the source slices; a DICOM SEG must follow "
                                "the source slices, write segmentation.nii.gz / .seg.nrrd instead")
        else:
            from .dicom import choose_series
            files = list(choose_series(folder, labels.meta.get("series_uid")).files)
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
    expected = labels.meta.get("series_uid")
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


def _frame_indices(ds: Any, labels: Volume, tolerance_voxel: float = 0.1) -> tuple[np.ndarray, ...]:
    """Voxel indices (i, j, k arrays of shape rows x columns) of every pixel of source slice ``ds``."""
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
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    indices = tuple(np.rint(origin[a] + r * step_r[a] + c * step_c[a]).astype(np.intp) for a in range(3))
    for a in range(3):
        if indices[a].min() < 0 or indices[a].max() >= labels.shape[a]:
            raise GeometryError(f"source slice {name} reaches outside the label map's grid {labels.shape} "
                                f"(axis {a}: {indices[a].min()}..{indices[a].max()})")
    return indices


def write_dicom_seg(labels: Volume, source_dicom: Any, label_names: Sequence[str], path: str | Path,
                    colors: dict[str, Any] | None = None, *, model_id: str = "liverseg",
                    series_description: str = "liverseg segmentation", series_number: int = 300) -> Path:
    """Write a DICOM SEG (BINARY) of ``labels`` referencing the source CT series.

    ``source_dicom`` is the series' folder (the series is chosen as ``read_volume`` did, by
    ``labels.meta['series_uid']`` when set), a list of its files, or a list of pydicom datasets.
    ``labels`` must be on the grid ``read_volume`` gave for that series. Each source slice becomes a
    frame (frames without any segment are omitted); every foreground label present in ``labels`` is
    one segment, numbered 1, 2, ... in label-value order and named after its label. When no
    foreground label is present, all of them are written as empty segments so the file stays valid.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from .. import __version__

    path = Path(path)
    _check_labels(labels, label_names, path)
    datasets = _source_datasets(source_dicom, labels)
    rgb = _resolve_colors(label_names, colors)

    frames = np.stack([labels.array[_frame_indices(ds, labels)] for ds in datasets]).astype(np.int64)
    counts = np.bincount(labels.array.ravel().astype(np.int64), minlength=len(label_names))
    present = [v for v in range(1, len(label_names)) if counts[v] > 0]
    all_empty = not present
    if all_empty:
        present = list(range(1, len(label_names)))
    lut = np.zeros(len(label_names), dtype=np.uint8)
    for number, value in enumerate(present, start=1):
        lut[value] = number
    pixel_array = lut[frames]

    algorithm = hd.AlgorithmIdentificationSequence(name=model_id[:64], version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, value in enumerate(present, start=1):
        name = label_names[value]
        (cat_code, cat_meaning), (type_code, type_meaning) = _codes(name)
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
