"""NIfTI / NRRD / MHA reading and writing through SimpleITK.

SimpleITK is used for every file format so that "the input's geometry" means one thing: what
SimpleITK reports for the file (that is also what 3D Slicer shows). Arrays come back in liverseg's
``[i, j, k]`` order and geometry as a RAS affine (see ``volume.py``).

Before SimpleITK sees a file, ``integrity`` parses its header and proves the data is all there (SimpleITK
zero-fills a truncated NIfTI); a ``.nii.gz``'s voxels are decompressed by ``integrity.read_nifti_gz``
(CRC-checked, read once), its geometry still comes from SimpleITK's header reader. Impossible geometry
(spacing <= 0 or not finite, a sheared or singular direction) and NaN / infinite voxels are refused;
the standard qform/sform choice is made as SimpleITK makes it and reported in ``meta["warnings"]``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from ..errors import InputError
from .compressed import count_decompressed
from .headers import ImageHeader, parse_header
from .integrity import check_data_length, check_geometry, check_values, nifti_form_warnings, read_nifti_gz, scan_values
from .volume import Volume, affine_from_lps, lps_from_affine

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


class _QuietITK:
    """Silence ITK's own warnings (printed to stderr, e.g. NIfTI "unexpected scales in sform"): liverseg
    checks the same things and says them in one line, or as a warning in report.json."""

    def __enter__(self):
        self.was = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc):
        sitk.ProcessObject.SetGlobalWarningDisplay(self.was)


def _header_reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _QuietITK():
            reader.ReadImageInformation()
    except RuntimeError as exc:  # SimpleITK reports every read failure as RuntimeError
        raise _unreadable(path, exc) from None
    return reader


def check_image_file(path: Path) -> None:
    """Proof, before anything is written, that the file is a CT volume liverseg can segment: its header,
    its geometry, the length of its data (file size, or the gzip trailer) and then one streamed pass over
    the data, nothing kept (``integrity.scan_values``: every CRC, no NaN / infinite voxel, not all one
    value). That pass costs about 0.3 s per 100 MB of compressed data, and is the only second read."""
    path = Path(path)
    _check_file(path)
    header = parse_header(path)
    if header is not None:
        check_data_length(header, path, full=False)
    reader = _header_reader(path)
    check_shape(tuple(reader.GetSize()), reader.GetNumberOfComponents(), path)
    check_geometry(path, reader.GetSpacing()[:3], reader.GetOrigin()[:3], _direction3(reader))
    if header is not None:
        scan_values(header, path)


def _direction3(source) -> np.ndarray:
    """The 3x3 spatial block of a 3D or 4D direction matrix."""
    n = len(source.GetSpacing())
    return np.asarray(source.GetDirection(), dtype=np.float64).reshape(n, n)[:3, :3]


_SITK_NUMPY = {sitk.sitkUInt8: np.uint8, sitk.sitkInt8: np.int8, sitk.sitkUInt16: np.uint16,
               sitk.sitkInt16: np.int16, sitk.sitkUInt32: np.uint32, sitk.sitkInt32: np.int32,
               sitk.sitkUInt64: np.uint64, sitk.sitkInt64: np.int64, sitk.sitkFloat32: np.float32,
               sitk.sitkFloat64: np.float64}


def _read_nifti_gz(path: Path, header: ImageHeader) -> Volume:
    """A .nii.gz read once: voxels from ``integrity.read_nifti_gz`` (CRC-checked), scaled and typed as
    SimpleITK would (scl_slope / scl_inter applied in double precision), geometry from SimpleITK's header."""
    reader = _header_reader(path)
    size = tuple(reader.GetSize())
    check_shape(size, reader.GetNumberOfComponents(), path)
    target = _SITK_NUMPY.get(reader.GetPixelID())
    if target is None:  # a type SimpleITK maps in its own way: let it read the file (CRC checked already)
        count_decompressed(path)
        return _read_with_sitk(path)
    spacing, origin = reader.GetSpacing()[:3], reader.GetOrigin()[:3]
    check_geometry(path, spacing, origin, _direction3(reader))
    raw = read_nifti_gz(header)
    raw = raw.reshape(header.dims[:3], order="F") if raw.ndim != 3 else raw
    slope, inter = header.extra["slope"], header.extra["inter"]
    rescale = abs(slope) > 1e-12 and (abs(slope - 1.0) > 1e-12 or abs(inter) > 1e-12)
    if not rescale:
        array = raw.astype(target, copy=False)
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
    else:
        array = np.empty(raw.shape, dtype=target, order="F")
        step = max(1, (1 << 24) // max(1, raw.shape[0] * raw.shape[1]))
        for k in range(0, raw.shape[2], step):
            block = raw[:, :, k:k + step].astype(target).astype(np.float64)
            array[:, :, k:k + step] = (block * slope + inter).astype(target)
    affine = affine_from_lps(spacing, origin, _direction3(reader).ravel())
    return Volume(array, affine, {"path": str(path), "format": "image"})


def _read_with_sitk(path: Path) -> Volume:
    try:
        with _QuietITK():
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None
    check_shape(tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel(), path)
    check_geometry(path, image.GetSpacing()[:3], image.GetOrigin()[:3], _direction3(image))
    return sitk_to_volume(image, path, {"format": "image"})


def read_image_file(path: Path) -> Volume:
    """Read a NIfTI / NRRD / MHA file into a Volume; errors name the file and the problem.

    The data must be all there (``integrity``), the grid possible, the voxels finite; repairs SimpleITK
    makes by convention (which of qform/sform) are listed in ``meta["warnings"]``.
    """
    path = Path(path)
    _check_file(path)
    header = parse_header(path)
    if header is not None:
        check_data_length(header, path, full=True)
    if header is not None and header.fmt == "nifti" and header.compression == "gzip":
        volume = _read_nifti_gz(path, header)
    else:
        volume = _read_with_sitk(path)
    check_values(path, volume.array)
    warnings = nifti_form_warnings(header, volume.affine_ras) if (
        header is not None and header.fmt == "nifti") else []
    if warnings:
        volume.meta["warnings"] = [f"{path}: {w}" for w in warnings]
    return volume


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
