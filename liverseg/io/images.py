"""NIfTI / NRRD / MHA reading and writing through SimpleITK.

SimpleITK is used for every file format so that "the input's geometry" means one thing: what
SimpleITK reports for the file (that is also what 3D Slicer shows). Arrays come back in liverseg's
``[i, j, k]`` order and geometry as a RAS affine (see ``volume.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from ..errors import InputError
from .volume import Volume, affine_from_lps, lps_from_affine

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")


def strip_image_suffix(name: str) -> str:
    """Case name of an image file: ``liver_3.nii.gz`` -> ``liver_3``."""
    lowered = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image_file(path: Path) -> bool:
    return path.is_file() and any(path.name.lower().endswith(s) for s in IMAGE_SUFFIXES)


def check_shape(size: tuple[int, ...], components: int, source: Path) -> None:
    """Refuse anything that is not a scalar 3D volume (a trailing 4th axis of length 1 is allowed)."""
    if components != 1:
        raise InputError(
            f"{source}: has {components} components per voxel (RGB or vector image); liverseg needs a "
            "single-channel CT volume")
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        raise InputError(
            f"{source}: is a {len(size)}D image of size {tuple(size)}; liverseg needs a 3D volume "
            "(a 2D slice cannot be segmented in 3D: give the whole series or volume)")
    if min(size) < 2:
        raise InputError(
            f"{source}: has size {tuple(size)}, i.e. a single slice along one axis; liverseg needs a 3D "
            "volume with at least 2 voxels along every axis")


def sitk_to_volume(image: sitk.Image, source: Path, meta: dict | None = None) -> Volume:
    """Convert a SimpleITK image to a Volume, refusing anything that is not a scalar 3D volume."""
    check_shape(tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel(), source)
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    # (z, y, x) -> (i, j, k) as a transposed view (Fortran order): no second copy of the volume, which
    # for a 512x512x1000 CT is half a gigabyte of peak memory. Slabs along k stay contiguous.
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    affine = affine_from_lps(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return Volume(array, affine, {"path": str(source), **(meta or {})})


def volume_to_sitk(volume: Volume, dtype: np.dtype | None = None) -> sitk.Image:
    array = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    spacing, origin, direction = lps_from_affine(volume.affine_ras)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not path.is_file():
        raise InputError(f"{path}: is not a file")


def _unreadable(path: Path, exc: RuntimeError) -> InputError:
    return InputError(f"{path}: cannot be read as a NIfTI/NRRD/MHA image ({_first_itk_reason(str(exc))}); "
                      "check that the file is complete and in one of these formats")


def check_image_file(path: Path) -> None:
    """Read only the header: cheap proof that the file is a readable 3D volume."""
    path = Path(path)
    _check_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:  # SimpleITK reports every read failure as RuntimeError
        raise _unreadable(path, exc) from None
    check_shape(tuple(reader.GetSize()), reader.GetNumberOfComponents(), path)


def read_image_file(path: Path) -> Volume:
    """Read a NIfTI / NRRD / MHA file into a Volume; errors name the file and the problem."""
    path = Path(path)
    _check_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None
    return sitk_to_volume(image, path, {"format": "image"})


def write_volume(volume: Volume, path: Path, dtype: np.dtype | None = None) -> Path:
    """Write a Volume atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = volume_to_sitk(volume, dtype)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def _first_itk_reason(message: str) -> str:
    """ITK error messages are multi-line; keep the line that says what went wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    for line in reversed(lines):
        if not line.startswith("itk::"):
            return line[:200]
    return lines[-1][:200] if lines else "unknown error"
