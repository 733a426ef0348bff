"""The DICOM reading entry points: discovery -> choice of series -> validation (-> assembly)."""
from __future__ import annotations

from pathlib import Path

from ..volume import Volume
from .assembly import load_series, plan_series
from .discovery import SeriesInfo, choose_series


def read_dicom_series(path: Path, series: str | int | None = None, allow_gaps: bool = False) -> Volume:
    """Read one series from a folder (or one multi-frame file); by default the CT series with the most
    slices (and say so)."""
    path = Path(path)
    chosen = choose_series(path, series)
    return load_series(chosen, path, allow_gaps)


def check_dicom(path: Path, series: str | int | None = None, allow_gaps: bool = False) -> SeriesInfo:
    """Header-only: find, choose and validate the series (sort, duplicates, gaps) without decoding pixels."""
    chosen = choose_series(path, series, announce=False)  # read_volume says it when it reads the series
    plan_series(chosen, Path(path), allow_gaps)
    return chosen


__all__ = ["check_dicom", "read_dicom_series"]
