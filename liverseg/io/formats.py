"""One format dispatch: which reader, and which header check, a path goes to.

``input_format`` is what ``read_volume`` and ``check_input`` branch on; ``image_format`` is what
``headers.parse_header`` branches on (by name alone: the header parsers themselves check the magic).
Both read the same suffix table, so a reader and its integrity check never disagree on a file.

* ``dicom``: a folder (searched for DICOM series), a ``.dcm`` file, or a file with the DICM magic at
  byte 128 (any name).
* ``nifti`` (``.nii``, ``.nii.gz``), ``nrrd`` (``.nrrd``, ``.nhdr``, ``.seg.nrrd``), ``mha`` (``.mha``,
  ``.mhd``): headers parsed and data proven complete (``integrity``), then read by SimpleITK.
* ``other``: any other file, left to SimpleITK alone.
"""
from __future__ import annotations

from pathlib import Path

from .dicom.files import is_dicom_file

# suffix -> format of the header liverseg parses itself
HEADER_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha",
                  ".mhd": "mha"}
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")


def image_format(path: str | Path) -> str | None:
    """'nifti', 'nrrd' or 'mha' by the file's name (any case), None for another name."""
    name = Path(path).name.lower()
    return next((fmt for suffix, fmt in HEADER_FORMATS.items() if name.endswith(suffix)), None)


def input_format(path: str | Path) -> str:
    """'dicom', 'nifti', 'nrrd', 'mha' or 'other': which reader ``read_volume`` hands ``path`` to."""
    path = Path(path)
    if path.is_dir() or is_dicom_file(path):
        return "dicom"
    return image_format(path) or "other"


def strip_image_suffix(name: str) -> str:
    """Case name of an image file: ``liver_3.nii.gz`` -> ``liver_3``."""
    lowered = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image_file(path: Path) -> bool:
    return path.is_file() and any(path.name.lower().endswith(s) for s in IMAGE_SUFFIXES)


__all__ = ["HEADER_FORMATS", "IMAGE_SUFFIXES", "image_format", "input_format", "is_image_file", "strip_image_suffix"]
