"""DICOM series discovery and decoding.

Pixel decoding goes through SimpleITK's GDCM reader, which handles compressed transfer syntaxes
(JPEG 2000, JPEG-LS, JPEG lossless, RLE) that pydicom cannot decode without extra plug-ins. Slice
ordering and the resulting geometry are GDCM's (sorted along the slice normal, not by file name), so
the Volume equals what SimpleITK's ImageSeriesReader returns for the same series.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from .images import _first_itk_reason, sitk_to_volume
from .volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesInfo:
    folder: Path
    series_uid: str
    files: tuple[str, ...]


def find_series(folder: Path) -> list[SeriesInfo]:
    """Every DICOM series in ``folder`` and its sub-folders, most slices first."""
    found: list[SeriesInfo] = []
    # ITK prints a multi-line warning for every folder without a series; liverseg reports that itself.
    warnings_were_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        for directory, _subdirs, files in sorted(os.walk(folder)):
            if not files:
                continue
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
                series_files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid)
                if series_files:
                    found.append(SeriesInfo(Path(directory), uid, tuple(series_files)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_were_shown)
    found.sort(key=lambda s: (-len(s.files), str(s.folder), s.series_uid))
    return found


def choose_series(folder: Path, series_uid: str | None = None) -> SeriesInfo:
    """The requested series, or the one with the most slices (logged when there is a choice)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: is not a folder")
    series = find_series(folder)
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder or below it; give a folder "
                         "of DICOM slice files or a NIfTI/NRRD/MHA file")
    if series_uid is not None:
        matching = [s for s in series if s.series_uid == series_uid]
        if not matching:
            known = ", ".join(s.series_uid for s in series)
            raise InputError(f"{folder}: no series with UID {series_uid}; found: {known}")
        chosen = matching[0]
    else:
        chosen = series[0]
        if len(series) > 1:
            log.warning("%s: %d DICOM series found; using %s (%d slices, in %s)", folder, len(series),
                        chosen.series_uid, len(chosen.files), chosen.folder)
    if len(chosen.files) < 2:
        raise InputError(f"{folder}: series {chosen.series_uid} has a single slice; liverseg needs a 3D "
                         "series with at least 2 slices")
    return chosen


def read_dicom_series(folder: Path, series_uid: str | None = None) -> Volume:
    """Read one series from a folder; by default the series with the most slices (and say so)."""
    folder = Path(folder)
    chosen = choose_series(folder, series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: DICOM series {chosen.series_uid} cannot be decoded "
                         f"({_first_itk_reason(str(exc))})") from None
    return sitk_to_volume(image, folder, {"format": "dicom", "series_uid": chosen.series_uid,
                                          "n_slices": len(chosen.files)})
