"""DICOM series discovery, validation and decoding.

The road from a folder of files to a ``Volume``:

1. **Discovery** (``find_series``): every regular file below the folder is parsed with pydicom (any
   name, with or without ``.dcm``; an unchanged folder is parsed once per process, see ``find_series``).
   The walk opens nothing but regular files (a FIFO, socket or device file is never opened, links to
   folders are not followed, so a link loop cannot trap it). Whatever is not an image slice is
   skipped and summed up in ONE warning line per discovery: files that are not DICOM (a viewer's
   thumbnail, index.html, autorun.inf), DICOMDIR and non-image objects (SEG/RTSTRUCT/SR), special
   files, unreadable files, and damaged DICOM files (header faults: geometry tags missing or invalid,
   a pixel format liverseg does not read, pixel data whose size does not match Rows x Columns x
   BitsAllocated x NumberOfFrames, compressed bytes under a native transfer syntax). A damaged file
   of a series, or one that cannot be read or parsed next to its slices, makes that series refused
   (``assembly.plan_series``): it may be one of its slices, and a missing end slice leaves no
   gap to see. Files are grouped by SeriesInstanceUID and split further where orientation, matrix size
   or pixel spacing differ inside one series. Images whose ImageType says LOCALIZER are excluded.
   Enhanced multi-frame files contribute one frame per slice (per-frame functional groups).
2. **Validation** (``assembly.plan_series``): slices are sorted by their position along the slice normal
   (never by file name or InstanceNumber); identical positions are merged when their pixels are
   identical and refused when they differ; a gap above 1.5x the median spacing is refused, naming
   where it is, unless ``allow_gaps`` (then the series is interpolated onto a uniform grid, as for
   non-uniform spacing); a gantry tilt (slice origins drifting in-plane) is corrected by shifting
   each slice onto an orthogonal grid, as dcm2niix does.
3. **Decoding**: native (uncompressed) pixel data straight from the bytes, only when it holds exactly
   the bytes the header describes (plus the one pad byte of an odd length); compressed transfer
   syntaxes through pydicom's plug-ins (pylibjpeg-openjpeg, pylibjpeg-libjpeg, pyjpegls, RLE) and,
   for anything they cannot decode, SimpleITK's GDCM; a decoder's result must have the header's
   frames, rows and columns. Anything else refuses the series naming the file. Files are decoded in a
   thread pool. Per-slice RescaleSlope/RescaleIntercept are applied. SliceThickness is not used (the
   spacing comes from the positions).

Geometry is built in LPS (DICOM's patient coordinates) and handed to ``affine_from_lps``; for a
regular series the result equals SimpleITK's ImageSeriesReader (same sort, origin and direction).

The package, imports flowing one way (each module imports only those above it):

* ``files``: which files are DICOM, the folder walk, ``open_regular``; the thread pool (``THREADS``).
* ``frames``: one file's header -> its slices (``Frame``) or why it was skipped.
* ``discovery``: folder -> series (``find_series``, ``choose_series``, ``inspect``), cached (``SETTLE_S``,
  ``CACHE_MAX_FRAMES``).
* ``assembly``: series -> validated plan -> decoded ``Volume`` (``plan_series``, ``load_series``).
* ``reading``: the entry points ``read_dicom_series`` and ``check_dicom``.

Settings (``THREADS``, ``SETTLE_S``, ...) live in their module: set them there, not on the package.
The package imports none of its modules; the names below load their module on first use.
"""
from __future__ import annotations

from ...lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "assembly": ("SeriesPlan", "load_series", "plan_series"),
    "discovery": ("SeriesInfo", "choose_series", "clear_series_cache", "find_series", "format_series_table",
                  "holds_dicom", "inspect", "skipped_summary"),
    "files": ("Skipped", "is_dicom_file"),
    "frames": ("Frame",),
    "reading": ("check_dicom", "read_dicom_series"),
})
