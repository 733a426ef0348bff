"""One format dispatch: which reader, and which header check, a path goes to.

``is_dicom_input`` is what ``read_volume`` and ``check_input`` branch on; ``image_format`` is what
``headers.parse_header`` branches on (by name alone: the header parsers themselves check the magic).
One suffix table (``HEADER_FORMATS``) serves both and the case names, so a reader and its integrity
check never disagree on a file.

* DICOM: a folder (searched for DICOM series), a ``.dcm`` file, or a file with the DICM magic at
  byte 128 (any name).
* ``nifti`` (``.nii``, ``.nii.gz``), ``nrrd`` (``.nrrd``, ``.nhdr``, ``.seg.nrrd``), ``mha`` (``.mha``,
  ``.mhd``): headers parsed and data proven complete (``integrity``), then read by SimpleITK.
* any other file: left to SimpleITK alone.
"""
from __future__ import annotations

from pathlib import Path

from .dicom.files import is_dicom_file

# suffix -> format of the header liverseg parses itself
HEADER_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha",
                  ".mhd": "mha"}
# every image suffix; ".seg.nrrd" (a Slicer segmentation) so that its case name drops the whole suffix
IMAGE_SUFFIXES = (*HEADER_FORMATS, ".seg.nrrd")


def image_format(path: str | Path) -> str | None:
    """'nifti', 'nrrd' or 'mha' by the file's name (any case), None for another name."""
    name = Path(path).name.lower()
    return next((fmt for suffix, fmt in HEADER_FORMATS.items() if name.endswith(suffix)), None)


def is_dicom_input(path: str | Path) -> bool:
    """Whether ``read_volume`` hands ``path`` to the DICOM reader (a folder, or a DICOM file by name or
    magic) rather than to the image-file reader."""
    path = Path(path)
    return path.is_dir() or is_dicom_file(path)


def strip_image_suffix(name: str) -> str:
    """Case name of an image file: ``liver_3.nii.gz`` -> ``liver_3``."""
    lowered = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image_file(path: Path) -> bool:
    """A NIfTI / NRRD / MetaImage file, by name (``image_format``)."""
    return path.is_file() and image_format(path) is not None


__all__ = ["HEADER_FORMATS", "IMAGE_SUFFIXES", "image_format", "is_dicom_input", "is_image_file", "strip_image_suffix"]
