"""Any input path: ``read_volume`` (a DICOM series or an image file into a ``Volume``), ``check_input``
(the cheap check before it) and ``case_name`` (its output folder's name)."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .dicom.reading import check_dicom, read_dicom_series
from .formats import is_dicom_input, strip_image_suffix
from .images import check_image_file, read_image_file
from .volume import Volume


def read_volume(path: str | Path, *, series: str | None = None, allow_gaps: bool = False) -> Volume:
    """Read a DICOM series folder (or one DICOM multi-frame file) or a NIfTI/NRRD/MHA file into a Volume.

    ``series``: a SeriesInstanceUID or a 0-based index as ``liverseg inspect`` lists them (default: the
    CT series with the most slices). ``allow_gaps``: interpolate across missing slices instead of refusing.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if is_dicom_input(path):
        return read_dicom_series(path, series, allow_gaps)
    return read_image_file(path)


def check_input(path: str | Path, *, series: str | None = None, allow_gaps: bool = False) -> None:
    """Cheap up-front check (headers, series discovery, slice order and gaps) that ``read_volume`` can be
    tried on ``path``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if is_dicom_input(path):
        check_dicom(path, series, allow_gaps)
    else:
        check_image_file(path)


def case_name(path: str | Path) -> str:
    """Output folder name for an input: file name without image suffix, or the folder's name."""
    path = Path(path)
    return path.name if path.is_dir() else strip_image_suffix(path.name)


__all__ = ["read_volume", "check_input", "case_name"]
