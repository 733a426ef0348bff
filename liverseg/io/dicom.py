"""DICOM series discovery, validation and decoding.

The road from a folder of files to a ``Volume``:

1. **Discovery** (``find_series``): every file below the folder is parsed with pydicom (any name,
   with or without ``.dcm``; DICOMDIR and non-image objects such as SEG/RTSTRUCT/SR are passed over;
   an unchanged folder is parsed once per process, see ``find_series``).
   A file that cannot be parsed, or lacks a tag that geometry needs, is skipped with a warning that
   names it. Files are grouped by SeriesInstanceUID and split further where orientation, matrix size
   or pixel spacing differ inside one series. Images whose ImageType says LOCALIZER are excluded.
   Enhanced multi-frame files contribute one frame per slice (per-frame functional groups).
2. **Validation** (``dicom_assembly.plan_series``): slices are sorted by their position along the slice normal
   (never by file name or InstanceNumber); identical positions are merged when their pixels are
   identical and refused when they differ; a gap above 1.5x the median spacing is refused, naming
   where it is, unless ``allow_gaps`` (then the series is interpolated onto a uniform grid, as for
   non-uniform spacing); a gantry tilt (slice origins drifting in-plane) is corrected by shifting
   each slice onto an orthogonal grid, as dcm2niix does.
3. **Decoding**: native (uncompressed) pixel data straight from the bytes; compressed transfer
   syntaxes through pydicom's plug-ins (pylibjpeg-openjpeg, pylibjpeg-libjpeg, pyjpegls, RLE) and,
   for anything they cannot decode, SimpleITK's GDCM. Files are decoded in a thread pool. Per-slice
   RescaleSlope/RescaleIntercept are applied.

Geometry is built in LPS (DICOM's patient coordinates) and handed to ``affine_from_lps``; for a
regular series the result equals SimpleITK's ImageSeriesReader (same sort, origin and direction).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .volume import Volume, affine_from_lps, axis_codes

log = logging.getLogger(__name__)

# Files passed over without a warning: not DICOM by their name.
_NOT_DICOM_SUFFIXES = (".txt", ".json", ".xml", ".csv", ".md", ".pdf", ".png", ".jpg", ".jpeg", ".bmp", ".gif",
                       ".tif", ".tiff", ".nii", ".gz", ".zip", ".tar", ".nrrd", ".mha", ".mhd", ".raw", ".py",
                       ".yaml", ".yml", ".html", ".log", ".mat", ".npy", ".npz")
_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.1.3.10": "DICOMDIR",
    "1.2.840.10008.5.1.4.1.1.66.4": "DICOM SEG",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT structure set",
    "1.2.840.10008.5.1.4.1.1.11.1": "presentation state",
    "1.2.840.10008.5.1.4.1.1.88.11": "structured report",
    "1.2.840.10008.5.1.4.1.1.88.22": "structured report",
    "1.2.840.10008.5.1.4.1.1.88.33": "structured report",
    "1.2.840.10008.5.1.4.1.1.88.59": "key object selection",
}
THREADS = min(8, os.cpu_count() or 1)


class _Skip(Exception):
    """A file that is not a usable image slice (the reason is the message)."""


@dataclass(eq=False)
class Frame:
    """One 2D slice: a single-frame file or one frame of an enhanced multi-frame file."""

    path: Path
    frame: int                      # 0 for a single-frame file
    position: np.ndarray            # ImagePositionPatient, LPS mm
    row_dir: np.ndarray             # direction along a row (increasing column index)
    col_dir: np.ndarray             # direction along a column (increasing row index)
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as DICOM stores it
    rows: int
    cols: int
    slope: float
    intercept: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)


@dataclass(eq=False)
class SeriesInfo:
    series_uid: str                 # "" when the files have none (anonymised exports): see ``label``
    frames: list[Frame]
    modality: str = ""
    description: str = ""
    transfer_syntax: str = ""
    part: str = ""                  # "" or "2/3" when one UID holds several orientations/sizes
    localizers: int = 0             # LOCALIZER images excluded from this series

    @property
    def label(self) -> str:
        """The series UID, or for files without one a name for them (one such series per folder)."""
        return self.series_uid or f"(no SeriesInstanceUID: {self.folder})"

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(f.path for f in self.frames))

    @property
    def folder(self) -> Path:
        return Path(os.path.commonpath([str(p.parent) for p in self.files]))

    @property
    def n_slices(self) -> int:
        return len(self.frames)

    def spacing_mm(self) -> tuple[float, float, float]:
        f = self.frames[0]
        d = np.unique(np.round(np.sort([fr.position @ f.normal for fr in self.frames]), 3))
        dz = float(np.median(np.diff(d))) if len(d) > 1 else float("nan")
        return (f.pixel_spacing[1], f.pixel_spacing[0], dz)

    def orientation(self) -> str:
        """Three letters naming where each voxel axis points, e.g. 'LPS' for axial CT."""
        f = self.frames[0]
        direction = np.stack([f.row_dir, f.col_dir, f.normal], axis=1)
        return axis_codes(affine_from_lps((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction))


# ----------------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------------

def _floats(value: Any, n: int, name: str) -> np.ndarray:
    if value is None:
        raise _Skip(f"missing {name}")
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise _Skip(f"{name} {value!r} is not numeric") from None
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise _Skip(f"{name} {value!r} must hold {n} finite numbers")
    return out


def _orientation(iop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    row, col = iop[:3], iop[3:]
    if not (abs(np.linalg.norm(row) - 1) < 1e-2 and abs(np.linalg.norm(col) - 1) < 1e-2 and abs(row @ col) < 1e-2):
        raise _Skip(f"ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    return row, col / np.linalg.norm(col)


def _item(ds: Any, frame: int, sequence: str) -> Any:
    """The item of a functional-group macro for one frame (per-frame first, then shared)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > index:
            inner = seq[index].get(sequence)
            if inner is not None and len(inner) > 0:
                return inner[0]
    return None


def _rescale(item: Any) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a dataset or functional-group item; absent means 1 and 0."""
    slope, intercept = item.get("RescaleSlope"), item.get("RescaleIntercept")
    return float(1 if slope is None else slope), float(0 if intercept is None else intercept)


def _frames_from_dataset(ds: Any, path: Path) -> list[Frame]:
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class in _NON_IMAGE_SOP_CLASSES:
        raise _Skip(_NON_IMAGE_SOP_CLASSES[sop_class])
    if "Rows" not in ds or "Columns" not in ds:
        raise _Skip("missing Rows/Columns (not an image)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1 or rows * cols > 1 << 26:
        raise _Skip(f"implausible matrix size {rows}x{cols}")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise _Skip("colour image (SamplesPerPixel != 1)")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames < 1:
        raise _Skip(f"NumberOfFrames {n_frames}")
    if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        frames = []
        for k in range(n_frames):
            pos_item, ori_item = _item(ds, k, "PlanePositionSequence"), _item(ds, k, "PlaneOrientationSequence")
            meas, trans = _item(ds, k, "PixelMeasuresSequence"), _item(ds, k, "PixelValueTransformationSequence")
            if pos_item is None or ori_item is None or meas is None:
                raise _Skip(f"frame {k + 1} lacks PlanePosition/PlaneOrientation/PixelMeasures functional groups")
            row, col = _orientation(_floats(ori_item.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"))
            spacing = _floats(meas.get("PixelSpacing"), 2, "PixelSpacing")
            slope, intercept = _rescale(trans if trans is not None else ds)
            frames.append(Frame(path, k, _floats(pos_item.get("ImagePositionPatient"), 3, "ImagePositionPatient"),
                                row, col, (float(spacing[0]), float(spacing[1])), rows, cols, slope, intercept))
    else:
        row, col = _orientation(_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"))
        spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing")
        slope, intercept = _rescale(ds)
        frames = [Frame(path, 0, _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient"), row, col,
                        (float(spacing[0]), float(spacing[1])), rows, cols, slope, intercept)]
    for f in frames:
        if min(f.pixel_spacing) <= 0 or not np.isfinite([f.slope, f.intercept]).all() or f.slope == 0:
            raise _Skip(f"PixelSpacing {f.pixel_spacing} or RescaleSlope/Intercept {f.slope}/{f.intercept} invalid")
    return frames


def _read_file(path: Path) -> tuple[Any, list[Frame]] | None:
    """Parse one file; None (with a warning for files that looked like DICOM) when it is unusable."""
    import pydicom

    name = path.name.lower()
    if name.startswith(".") or name.endswith(_NOT_DICOM_SUFFIXES):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        frames = _frames_from_dataset(ds, path)
    except _Skip as exc:
        reason = str(exc)
        if reason in _NON_IMAGE_SOP_CLASSES.values():
            log.debug("%s: passed over (%s)", path, reason)
        else:
            log.warning("%s: skipped, %s", path, reason)
        return None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure means "skip this file"
        if name == "dicomdir":
            return None
        log.warning("%s: skipped, not a readable DICOM file (%s: %s)", path, type(exc).__name__,
                    " ".join(str(exc).split())[:150])
        return None
    return ds, frames


def _fmt(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _all_files(path: Path) -> list[Path]:
    """Every file below ``path`` (or ``[path]`` for a file), in discovery order."""
    return _list_files(Path(path))[0]


def _list_files(path: Path) -> tuple[list[Path], list[tuple]]:
    """Every file below ``path`` in ``os.walk`` order (a folder's files sorted by name, then its
    subfolders sorted, depth first; links to folders listed but not entered; unreadable folders
    passed over), or ``[path]`` for a file, with each file's ``stat`` stamp from the same
    ``os.scandir`` pass. Nothing is opened: a FIFO or device file is only stat'ed here."""
    if path.is_file():
        return [path], [_stamp(path)]
    files: list[Path] = []
    stamps: list[tuple] = []
    pending = [str(path)] if path.is_dir() else []
    while pending:
        try:
            with os.scandir(pending.pop()) as scan:
                entries = list(scan)
        except OSError:
            continue
        subdirs = []
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(entry)
            else:
                files.append(Path(entry.path))
                stamps.append(_stamp(entry))
        pending.extend(e.path for e in reversed(subdirs) if not e.is_symlink())
    return files, stamps


def _stamp(entry: os.DirEntry | Path) -> tuple:
    """What changes when a file is replaced or written: type, size, times, device and inode
    (``stat`` follows links, as opening the file would); () when it cannot be stat'ed."""
    try:
        st = entry.stat()
    except OSError:
        return ()
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)


# ----------------------------------------------------------------------------------------------------
# Discovery cache: ``check_input`` and then ``read_volume`` (and the DICOM SEG writer) discover the
# same folder within one run; the second discovery reuses the first unless a file changed.
# ----------------------------------------------------------------------------------------------------

SETTLE_S = 2.0               # files changed this recently (by their ctime) are not cached: see below
CACHE_MAX_FRAMES = 100_000   # slices kept over all cached folders (~1.3 kB each), oldest folders dropped first
_cache: OrderedDict[str, tuple[tuple, list[SeriesInfo]]] = OrderedDict()
_cache_lock = threading.Lock()


def _settled(stamps: list[tuple], now_ns: int) -> bool:
    """No file changed within ``SETTLE_S`` before the listing. File times tick coarsely (a few ms,
    2 s on FAT): a file rewritten in the same tick as its previous write, with the same size, keeps its
    stamp. A change after a settled listing always gets a later time."""
    newest = max((stamp[3] for stamp in stamps if stamp), default=0)
    return newest < now_ns - int(SETTLE_S * 1e9)


def _cached(key: str, fingerprint: tuple) -> list[SeriesInfo] | None:
    """The series found in ``key`` before, if its files still have this fingerprint. The fingerprint
    holds device and inode numbers, so a relative path read from another working folder misses."""
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None or entry[0] != fingerprint:
            return None
        _cache.move_to_end(key)
        return _copies(entry[1])


def _remember(key: str, fingerprint: tuple, series: list[SeriesInfo]) -> None:
    """Cache a discovery; the least recently used folders go once the cache holds CACHE_MAX_FRAMES
    slices (a batch checks every case up front, so all its folders are kept while that fits)."""
    with _cache_lock:
        _cache[key] = (fingerprint, _copies(series))
        _cache.move_to_end(key)
        while len(_cache) > 1 and sum(s.n_slices for _, found in _cache.values() for s in found) > CACHE_MAX_FRAMES:
            _cache.popitem(last=False)


def _copies(series: list[SeriesInfo]) -> list[SeriesInfo]:
    """Fresh SeriesInfo objects (and frame lists) around the shared, never modified, Frames."""
    return [replace(s, frames=list(s.frames)) for s in series]


def clear_series_cache() -> None:
    """Forget every cached discovery (the next ``find_series`` parses the files again)."""
    with _cache_lock:
        _cache.clear()


def _map(function, items: list) -> list:
    if THREADS <= 1 or len(items) < 8:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(function, items))


def ds_folder(result: tuple[Any, list[Frame]]) -> str:
    return str(result[1][0].path.parent)


def find_series(path: Path) -> list[SeriesInfo]:
    """Every image series in ``path`` (a folder, searched recursively, or one file), in the order
    ``liverseg inspect`` shows them: CT first, then most slices first. Headers only: the pixels of
    the one series used are read when it is loaded (``dicom_assembly.load_series``).

    Within one process an unchanged folder is parsed once: the result is cached under the path and a
    fingerprint of its files (names, sizes, times, inodes from one ``os.scandir`` pass), and the
    warnings about skipped files are not repeated.
    """
    path = Path(path)
    now_ns = time.time_ns()
    files, stamps = _list_files(path)
    key, fingerprint = str(path), (tuple(map(str, files)), tuple(stamps))
    cached = _cached(key, fingerprint)
    if cached is not None:
        return cached
    series = _discover(files)
    if _settled(stamps, now_ns):
        _remember(key, fingerprint, series)
    return series


def _discover(files: list[Path]) -> list[SeriesInfo]:
    """Parse the headers of ``files`` and group them into series (``find_series`` without the cache)."""
    results = _map(_read_file, files)
    groups: dict[tuple, SeriesInfo] = {}
    localizers: dict[str, int] = {}
    for result in results:
        if result is None:
            continue
        ds, frames = result
        # anonymised exports sometimes drop the UID: such files form one series per folder
        uid = str(ds.get("SeriesInstanceUID") or "")
        group = uid or f"(no SeriesInstanceUID: {ds_folder(result)})"
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])] if not isinstance(ds.get("ImageType"), str) \
            else [str(ds.ImageType).upper()]
        if "LOCALIZER" in image_type:
            localizers[group] = localizers.get(group, 0) + 1
            continue
        for frame in frames:
            key = (group, tuple(np.round(np.concatenate([frame.row_dir, frame.col_dir]), 3)), frame.rows, frame.cols,
                   tuple(np.round(frame.pixel_spacing, 4)))
            info = groups.get(key)
            if info is None:
                info = groups[key] = SeriesInfo(
                    uid, [], str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or ""),
                    str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
            info.frames.append(frame)
    series = list(groups.values())
    by_uid: dict[str, list[SeriesInfo]] = {}
    for info in series:
        by_uid.setdefault(info.label, []).append(info)
        info.localizers = localizers.get(info.label, 0)
    for parts in by_uid.values():
        if len(parts) > 1:
            parts.sort(key=lambda s: -s.n_slices)
            for i, part in enumerate(parts):
                part.part = f"{i + 1}/{len(parts)}"
    series.sort(key=lambda s: (s.modality.upper() != "CT", -s.n_slices, s.label, s.part))
    return series


def choose_series(path: Path, series: str | int | None = None, *, announce: bool = True) -> SeriesInfo:
    """The requested series (UID or 0-based index from ``liverseg inspect``), or by default the CT
    series with the most slices (with a message when there was a choice and ``announce``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    found = find_series(path)
    if not found:
        raise InputError(f"{path}: no readable DICOM image series found in this folder or below it; give a "
                         "folder of DICOM slice files or a NIfTI/NRRD/MHA file")
    if series is not None and str(series).strip().isdigit():
        index = int(series)
        if index >= len(found):
            raise InputError(f"{path}: --series {index} is out of range: {len(found)} series found "
                             f"(0..{len(found) - 1}); run `liverseg inspect {path}` to list them")
        chosen = found[index]
    elif series is not None:
        matching = [s for s in found if s.series_uid == str(series).strip()]
        if not matching:
            known = ", ".join(s.label for s in found[:10])
            raise InputError(f"{path}: no series with UID {series}; found: {known} (run `liverseg inspect {path}`)")
        chosen = matching[0]
    else:
        chosen = found[0]
        if len(found) > 1 and announce:
            log.warning("%s: %d DICOM series found; using %s (%d slices, in %s); pick another with --series "
                        "(see `liverseg inspect`)", path, len(found), chosen.label, chosen.n_slices, chosen.folder)
    if chosen.n_slices < 2:
        raise InputError(f"{path}: series {chosen.label} has a single slice; liverseg needs a 3D series with "
                         "at least 2 slices")
    return chosen


def read_dicom_series(path: Path, series: str | int | None = None, allow_gaps: bool = False) -> Volume:
    """Read one series from a folder (or one multi-frame file); by default the CT series with the most
    slices (and say so)."""
    from .dicom_assembly import load_series

    path = Path(path)
    chosen = choose_series(path, series)
    return load_series(chosen, path, allow_gaps)


def check_dicom(path: Path, series: str | int | None = None, allow_gaps: bool = False) -> SeriesInfo:
    """Header-only: find, choose and validate the series (sort, duplicates, gaps) without decoding pixels."""
    from .dicom_assembly import plan_series

    chosen = choose_series(path, series, announce=False)  # read_volume says it when it reads the series
    plan_series(chosen, Path(path), allow_gaps)
    return chosen


def is_dicom_file(path: Path) -> bool:
    """A file with the DICM magic at byte 128 (or a .dcm suffix)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


_SYNTAX_NAMES = {"1.2.840.10008.1.2": "implicit LE", "1.2.840.10008.1.2.1": "explicit LE",
                 "1.2.840.10008.1.2.2": "explicit BE", "1.2.840.10008.1.2.4.50": "JPEG baseline",
                 "1.2.840.10008.1.2.4.57": "JPEG lossless", "1.2.840.10008.1.2.4.70": "JPEG lossless SV1",
                 "1.2.840.10008.1.2.4.80": "JPEG-LS lossless", "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
                 "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000",
                 "1.2.840.10008.1.2.5": "RLE lossless", "1.2.840.10008.1.2.1.99": "deflated explicit LE"}


def format_series_table(found: list[SeriesInfo]) -> str:
    header = ("#", "series UID", "modality", "description", "slices", "spacing mm (x, y, z)", "orientation",
              "transfer syntax", "files")
    rows = []
    for i, s in enumerate(found):
        spacing = ", ".join(_fmt(v) for v in s.spacing_mm())
        uid = s.label + (f" (part {s.part})" if s.part else "")
        extra = f" +{s.localizers} localizer(s) excluded" if s.localizers else ""
        rows.append((str(i), uid, s.modality, s.description[:28], str(s.n_slices), spacing, s.orientation(),
                     _SYNTAX_NAMES.get(s.transfer_syntax, s.transfer_syntax), f"{len(s.files)}{extra}"))
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def inspect(path: Path) -> str:
    """The table ``liverseg inspect`` prints: every series below ``path``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    found = find_series(path)
    if not found:
        raise InputError(f"{path}: no readable DICOM image series found in this folder or below it")
    default = f"default for predict: #0 ({found[0].label}); choose another with --series UID_OR_INDEX"
    return format_series_table(found) + "\n" + default


__all__ = ["Frame", "SeriesInfo", "check_dicom", "choose_series", "clear_series_cache", "find_series", "format_series_table", "inspect", "is_dicom_file", "read_dicom_series"]
