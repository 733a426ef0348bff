"""Segmentation outputs written on the input's grid.

Every writer of labels has the shape ``write_x(labels, volume, path, ...)``, as nnU-Net's
``write_seg(seg, file, properties)``: ``labels`` an integer array on ``volume``'s grid (the volume
the labels were predicted for: its geometry, and for DICOM SEG its source series, ``Volume.dicom``).

* ``write_label_map``: uint8 NIfTI/NRRD/MHA label map (SimpleITK).
* ``write_seg_nrrd``: 3D Slicer ``.seg.nrrd`` (one label-map layer plus Slicer's segment metadata:
  names, colours, label values, extents, terminology), following Slicer's segmentation file
  specification and ``vtkMRMLSegmentationStorageNode``'s writer.
* ``write_color_table``: Slicer ``.ctbl`` colour table (``index name R G B A``).
* ``write_probability_map``: 4D uint8 NIfTI (x, y, z, label) of softmax probabilities, value = round(255 p),
  with ``scl_slope`` 1/255 so NIfTI readers (nibabel, ITK, 3D Slicer) see p itself.
* DICOM SEG: ``dicom_seg.write_dicom_seg``.

Names, colours and codes come from the anatomy table (``anatomy``).

Every file is written atomically: a temporary file in the destination folder, then ``os.replace``.
Label values are indices into ``label_names`` (index 0 is the background), as in
``ExperimentConfig.data.labels``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text_atomic
from ..errors import GeometryError, InputError
from .anatomy import resolve_colors, slicer_terminology
from .images import write_volume
from .volume import Volume, lps_from_affine

log = logging.getLogger(__name__)


def labels_on_grid(labels: np.ndarray, volume: Volume) -> Volume:
    """``labels`` as a Volume on ``volume``'s grid (no copy); a GeometryError when the shapes differ."""
    if tuple(labels.shape) != volume.shape:
        raise GeometryError(f"label map shape {tuple(labels.shape)} differs from the reference grid "
                            f"{volume.shape} of {volume.meta.get('path', 'the input')}")
    return volume.with_array(labels)


def write_label_map(labels: np.ndarray, volume: Volume, path: str | Path) -> Path:
    """Write a uint8 label map on exactly ``volume``'s grid (shape, spacing, origin, direction)."""
    if labels.size and int(labels.max()) > 255:
        raise ValueError(f"label values up to {int(labels.max())} do not fit uint8")
    return write_volume(labels_on_grid(labels.astype(np.uint8, copy=False), volume), Path(path))


PROBABILITY_SLOPE = 1.0 / 255.0


def probability_map_description(label_names: Sequence[str]) -> dict:
    """How ``write_probability_map`` stores probabilities (for report.json)."""
    return {"dtype": "uint8", "axes": "x, y, z, label (the label map's grid; 4th index = label value)",
            "labels": list(label_names), "value": "round(255 * p); p = value / 255 (NIfTI scl_slope = 1/255)",
            "per_voxel_sum": "255 up to rounding (+-1 per label)",
            "note": "softmax of the network (mean over ensemble members) on the input grid, before post-processing "
                    "(largest component, hole filling, small-object removal), which can change the label map"}


def write_probability_map(probabilities: np.ndarray, volume: Volume, path: str | Path,
                          label_names: Sequence[str]) -> Path:
    """Write uint8 probabilities (X, Y, Z, K) on ``volume``'s grid as a gzipped 4D NIfTI (nibabel).

    Stored value = round(255 p); the header's ``scl_slope`` is 1/255 (so ``nibabel``'s ``get_fdata`` and
    ITK return p), the intent is NIFTI_INTENT_ESTIMATE named ``softmax v/255``, ``descrip`` names the
    labels in order, and qform and sform (code 1, scanner) hold ``volume``'s affine, as in the label
    map. Written from a Fortran-ordered array (``infer.predict_volume_probabilities``'s) without a copy.
    """
    import nibabel as nib

    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4 or tuple(probabilities.shape[:3]) != volume.shape:
        raise GeometryError(f"probability map shape {tuple(probabilities.shape)} does not fit the reference grid "
                            f"{volume.shape} (+ one axis of labels)")
    if probabilities.shape[3] != len(label_names):
        raise ValueError(f"{probabilities.shape[3]} probability channels for {len(label_names)} labels")
    if probabilities.dtype != np.uint8:
        raise ValueError(f"probabilities must be uint8 (round(255 p)), not {probabilities.dtype}")
    affine = np.asarray(volume.affine_ras, dtype=np.float64)
    image = nib.Nifti1Image(probabilities, affine, dtype=np.uint8)
    header = image.header
    header.set_slope_inter(PROBABILITY_SLOPE, 0.0)
    header.set_intent("estimate", (), name="softmax v/255")
    header.set_xyzt_units("mm", "unknown")
    header["descrip"] = ("p=v/255 " + ",".join(label_names)).encode("ascii", "replace")[:79]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def label_voxel_counts(array: np.ndarray, n_labels: int) -> np.ndarray:
    """Voxels per label value (at least ``n_labels`` entries) without a wide copy of the volume.

    ``np.bincount`` of a whole uint8 volume converts it to int64 first: 2 GB for a 512x512x1000 label
    map. Only the foreground is converted here (plus a one-byte-per-voxel mask). The volume is
    flattened in its memory order when that is a view (C- or Fortran-ordered; the DICOM reader gives
    Fortran order): a boolean selection that walks a Fortran-ordered volume in C order is ~20x slower.
    """
    flat = array.ravel(order="K") if array.flags.c_contiguous or array.flags.f_contiguous else array
    foreground = flat[flat != 0]
    counts = np.bincount(foreground.astype(np.intp, copy=False), minlength=n_labels)
    counts[0] = array.size - foreground.size
    return counts


def check_labels(labels: Volume, label_names: Sequence[str], path: Path) -> None:
    """Label names usable (two or more, unique) and every label value an index into them."""
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


def write_seg_nrrd(labels: np.ndarray, volume: Volume, path: str | Path, label_names: Sequence[str],
                   colors: dict[str, Any] | None = None) -> Path:
    """Write a 3D Slicer ``.seg.nrrd``: one label-map layer on ``volume``'s grid with segment metadata.

    Segment ``N`` is label value ``N + 1`` (``label_names[N + 1]``); every foreground name gets a
    segment, empty ones included (extent ``0 -1 0 -1 0 -1`` as Slicer writes it). Geometry is LPS
    (``space: left-posterior-superior``) from ``volume.affine_ras``, uncropped
    (``Segmentation_ReferenceImageExtentOffset = 0 0 0``), so the file has the input's exact grid.
    """
    import nrrd

    path = Path(path)
    labels = labels_on_grid(labels, volume)
    check_labels(labels, label_names, path)
    rgb = resolve_colors(label_names, colors)
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
        header[prefix + "Tags"] = f"TerminologyEntry:{slicer_terminology(name)}|"
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
    rgb = resolve_colors(label_names, colors)
    lines = [f"# Color table file {path.name}", f"# {len(label_names)} values",
             "# written by liverseg: label value, name, red, green, blue, alpha (0-255)"]
    for index, name in enumerate(label_names):
        r, g, b = rgb[name]
        alpha = 0 if index == 0 else 255
        token = re.sub(r"\s+", "_", name.strip())  # Slicer splits the line on whitespace
        lines.append(f"{index} {token} {r} {g} {b} {alpha}")
    return write_text_atomic("\n".join(lines) + "\n", path)

