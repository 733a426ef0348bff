"""Label maps onto an image's voxel grid, from every layout public liver datasets use.

* ``volume``: a NIfTI / NRRD / MHA label map (MSD, LiTS).
* ``masks_dicom``: a folder of per-structure DICOM mask series, as 3D-IRCADb-01 ships them
  (``MASKS_DICOM/<structure>/image_N`` beside ``PATIENT_DICOM/``); ``structures`` maps folder names
  (shell patterns such as ``livertumor*``) to label values, painted in increasing value order.
* ``png_slices``: one PNG per image slice, as CHAOS CT ships them (``Ground/liver_GT_NNN.png`` beside
  ``DICOM_anon/``); the n-th PNG (natural name order) belongs to the n-th DICOM file in name order —
  the dataset's own convention — and is placed at that file's slice.
* ``dicom_seg``: a DICOM Segmentation object (read with highdicom); segment numbers are label values
  unless ``structures`` maps segment labels to values.

Every label is placed on the image grid exactly: the label grid must be the image grid, or a permutation
/ flip / integer shift of it (a sub-block, as DICOM SEG frames often are). Anything else raises a
``GeometryError`` that prints both grids and says how to fix it. Labels are never interpolated.
"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import numpy as np

from ..errors import GeometryError, InputError
from .dicom.files import all_files, is_dicom_file
from .dicom.reading import read_dicom_series
from .images import read_image_file
from .volume import LPS_TO_RAS, Volume, spacing_from_affine

LABEL_FORMATS = ("volume", "masks_dicom", "png_slices", "dicom_seg")
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def describe_grid(volume_or_shape, affine_ras: np.ndarray | None = None) -> str:
    """'shape (512, 512, 90), spacing [0.7, 0.7, 2.5] mm, origin [...] mm (RAS), axes [...]'."""
    if isinstance(volume_or_shape, Volume):
        shape, affine_ras = volume_or_shape.shape, volume_or_shape.affine_ras
    else:
        shape = tuple(volume_or_shape)
    spacing = spacing_from_affine(affine_ras)
    direction = affine_ras[:3, :3] / spacing
    return (f"shape {tuple(int(s) for s in shape)}, spacing {np.round(spacing, 4).tolist()} mm, origin "
            f"{np.round(affine_ras[:3, 3], 3).tolist()} mm (RAS), direction {np.round(direction, 3).tolist()}")


def place_on_grid(array: np.ndarray, affine_ras: np.ndarray, image: Volume, source: Path,
                  tol_voxel: float = 1e-2) -> np.ndarray:
    """Put a label ``array`` with its own affine onto ``image``'s grid without interpolation.

    Allowed: the same grid, or one whose voxel centres coincide with image voxel centres (axis
    permutation, flips, an integer offset, a sub-block). Voxels of the image outside the label's extent
    are background.
    """
    to_image = np.linalg.inv(image.affine_ras) @ np.asarray(affine_ras, dtype=np.float64)
    linear, offset = to_image[:3, :3], to_image[:3, 3]
    rounded = np.round(linear)
    exact = (np.abs(linear - rounded).max() <= tol_voxel and np.abs(offset - np.round(offset)).max() <= tol_voxel
             and np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1))
    if not exact:
        raise GeometryError(
            f"{source}: the label is not on the image grid: label {describe_grid(array.shape, affine_ras)}; image "
            f"{describe_grid(image)}; resample the label onto the image grid with nearest-neighbour interpolation "
            "(e.g. 3D Slicer 'Resample Scalar/Vector/DWI Volume' or SimpleITK Resample with sitkNearestNeighbor), "
            "or check that it belongs to this image")
    out = np.zeros(image.shape, dtype=array.dtype)
    # image index = rounded @ label index + offset; label index of image index along each image axis
    perm = [int(np.argmax(np.abs(rounded[a]))) for a in range(3)]  # image axis a <- label axis perm[a]
    signs = [int(rounded[a, perm[a]]) for a in range(3)]
    moved = np.transpose(array, perm)
    slices_img, slices_lab = [], []
    for a in range(3):
        n_lab, n_img = moved.shape[a], image.shape[a]
        if signs[a] < 0:
            moved = np.flip(moved, axis=a)
        start = int(round(offset[a])) - (n_lab - 1 if signs[a] < 0 else 0)
        lo, hi = max(start, 0), min(start + n_lab, n_img)
        if hi <= lo:
            raise GeometryError(f"{source}: the label lies entirely outside the image: label "
                                f"{describe_grid(array.shape, affine_ras)}; image {describe_grid(image)}; check that "
                                "the label belongs to this image")
        slices_img.append(slice(lo, hi))
        slices_lab.append(slice(lo - start, hi - start))
    outside = moved.copy()
    outside[tuple(slices_lab)] = 0
    if np.any(outside):
        raise GeometryError(f"{source}: part of the label lies outside the image: label "
                            f"{describe_grid(array.shape, affine_ras)}; image {describe_grid(image)}; crop or resample "
                            "the label onto the image grid")
    out[tuple(slices_img)] = moved[tuple(slices_lab)]
    return out


def natural_key(text: str) -> tuple:
    """Sort key putting liver_2 before liver_10 (digit runs compare as numbers)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _structure_value(name: str, structures: dict[str, int]) -> int | None:
    for pattern, value in structures.items():
        if fnmatch.fnmatch(name.lower(), pattern.lower()):
            return int(value)
    return None


def _read_masks_dicom(folder: Path, image: Volume, structures: dict[str, int]) -> np.ndarray:
    if not structures:
        raise InputError(f"{folder}: masks_dicom labels need a 'structures' map from folder names to label values, "
                         "e.g. {\"liver\": 1, \"livertumor*\": 2}")
    chosen = []
    for sub in sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        value = _structure_value(sub.name, structures)
        if value is not None:
            chosen.append((value, sub))
    if not chosen:
        known = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_dir())) or "none"
        raise InputError(f"{folder}: no structure folder matches {sorted(structures)}; folders here: {known}")
    out = np.zeros(image.shape, dtype=np.uint8)
    for value, sub in sorted(chosen, key=lambda item: item[0]):  # higher values (tumours) painted last
        mask = read_dicom_series(sub)
        placed = place_on_grid(mask.array != 0, mask.affine_ras, image, sub)
        out[placed] = value
    return out


def _read_png_slices(folder: Path, image: Volume, value: int) -> np.ndarray:
    from PIL import Image

    slice_files = image.dicom.slice_files if image.dicom is not None else None
    if not slice_files:
        raise InputError(f"{folder}: PNG slice masks need an image read straight from its DICOM slices (this image "
                         f"was resampled or is not DICOM: {image.meta.get('path')})")
    pngs = sorted(folder.glob("*.png"), key=lambda p: natural_key(p.name))
    by_name = sorted(slice_files, key=lambda f: natural_key(Path(f).name))
    if len(pngs) != len(by_name):
        raise InputError(f"{folder}: {len(pngs)} PNG masks for {len(by_name)} DICOM slices in "
                         f"{image.meta.get('path')}; the CHAOS layout has one PNG per DICOM file")
    k_of_file = {f: k for k, f in enumerate(slice_files)}
    out = np.zeros(image.shape, dtype=np.uint8)
    for png, dicom_file in zip(pngs, by_name):
        with Image.open(png) as handle:
            mask = np.asarray(handle.convert("L"))
        if mask.shape != (image.shape[1], image.shape[0]):
            raise GeometryError(f"{png}: PNG mask of {mask.shape[1]}x{mask.shape[0]} pixels for a "
                                f"{image.shape[0]}x{image.shape[1]} DICOM slice ({dicom_file})")
        out[:, :, k_of_file[dicom_file]] = (mask.T != 0) * value
    return out


def _read_dicom_seg(path: Path, image: Volume, structures: dict[str, int]) -> np.ndarray:
    import highdicom as hd

    if path.is_dir():
        import pydicom

        candidates = [p for p in all_files(path) if is_dicom_file(p)
                      and str(pydicom.dcmread(p, stop_before_pixels=True).get("SOPClassUID", "")) == SEG_SOP_CLASS]
        if len(candidates) != 1:
            raise InputError(f"{path}: expected one DICOM SEG file here, found {len(candidates)}")
        path = candidates[0]
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - highdicom raises many types for a file that is not a SEG
        raise InputError(f"{path}: cannot be read as a DICOM SEG ({type(exc).__name__}: {exc})") from None
    numbers = list(seg.segment_numbers)
    values = {}
    for number in numbers:
        name = seg.get_segment_description(number).segment_label
        value = _structure_value(name, structures) if structures else number
        if value is not None:
            values[number] = value
    out = np.zeros(image.shape, dtype=np.uint8)
    for number, value in sorted(values.items(), key=lambda item: item[1]):
        volume = seg.get_volume(segment_numbers=[number], combine_segments=True)
        # highdicom: array (slice, row, column) -> LPS mm; liverseg: (i=column, j=row, k=slice) -> RAS
        array = np.asarray(volume.array).transpose(2, 1, 0)
        affine_lps = np.asarray(volume.affine)[:, [2, 1, 0, 3]]
        placed = place_on_grid(array != 0, LPS_TO_RAS @ affine_lps, image, path)
        out[placed] = value
    return out


def read_label(path: str | Path, image: Volume, fmt: str = "volume",
               structures: dict[str, int] | None = None) -> Volume:
    """A label map for ``image`` on exactly its grid (values as integers)."""
    path = Path(path)
    if fmt not in LABEL_FORMATS:
        raise InputError(f"label format {fmt!r} is unknown; known: {', '.join(LABEL_FORMATS)}")
    if not path.exists():
        raise InputError(f"{path}: label not found")
    structures = structures or {}
    if fmt == "volume":
        label = read_image_file(path)
        array = label.array
        if array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise InputError(f"{path}: label map holds non-integer values; labels must be integer class values")
        array = array.astype(np.int64) if array.dtype.kind == "f" else array
        if image.same_grid(label, atol_mm=1e-3):
            return image.with_array(array.astype(np.uint8 if array.max(initial=0) < 256 and array.min(initial=0) >= 0
                                                 else np.int32), format="label")
        return image.with_array(place_on_grid(array, label.affine_ras, image, path), format="label")
    if fmt == "masks_dicom":
        array = _read_masks_dicom(path, image, structures)
    elif fmt == "png_slices":
        array = _read_png_slices(path, image, int(structures.get("*", 1)) if structures else 1)
    else:
        array = _read_dicom_seg(path, image, structures)
    return image.with_array(array, format="label", label_path=str(path))


__all__ = ["LABEL_FORMATS", "describe_grid", "natural_key", "place_on_grid", "read_label"]
