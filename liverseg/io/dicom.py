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
   (``dicom_assembly.plan_series``): it may be one of its slices, and a missing end slice leaves no
   gap to see. Files are grouped by SeriesInstanceUID and split further where orientation, matrix size
   or pixel spacing differ inside one series. Images whose ImageType says LOCALIZER are excluded.
   Enhanced multi-frame files contribute one frame per slice (per-frame functional groups).
2. **Validation** (``dicom_assembly.plan_series``): slices are sorted by their position along the slice normal
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
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
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
# transfer syntaxes whose pixel data is stored as it is (deflate is undone by pydicom): byte order
NATIVE_SYNTAXES = {"1.2.840.10008.1.2": "<", "1.2.840.10008.1.2.1": "<", "1.2.840.10008.1.2.2": ">",
                   "1.2.840.10008.1.2.1.99": "<"}
_COMPRESSED_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
                     (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\xfe\x00\xe0", "encapsulated"))


class _Skip(Exception):
    """A file that is not a usable image slice (the reason is the message)."""


class _NotRegular(OSError):
    """A path that is not a regular file any more (replaced by a FIFO, device, ...) when opened."""


@dataclass(eq=False)
class Skipped:
    """A file (or folder) discovery passed over, and why."""

    path: Path
    kind: str                       # one of SKIP_KINDS
    reason: str = ""
    group: str | None = None        # series label when its header was parsed (damaged files)


# kinds of skipped files, in the order the summary names them
SKIP_KINDS = {"not DICOM": "not DICOM", "non-image": "DICOMDIR/non-image DICOM", "special": "special",
              "link": "link(s) to folders not followed", "unreadable": "unreadable", "damaged": "damaged DICOM"}


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
    rescale_tags: tuple[bool, bool] = (True, True)  # whether RescaleSlope / RescaleIntercept were given

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
    rejected: list[Skipped] = field(default_factory=list)  # its damaged files, and unreadable ones beside it

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


def _int_tag(ds: Any, name: str, default: int | None = None) -> int:
    value = ds.get(name)
    if value is None or value == "":
        if default is None:
            raise _Skip(f"missing {name}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Skip(f"{name} {value!r} is not an integer") from None


def pixel_layout(ds: Any) -> tuple[int, int, int, int, int, bool]:
    """(frames, rows, cols, BitsAllocated, BitsStored, signed) of a grey image, checked for sense
    (``_Skip`` naming the tag otherwise): one sample per pixel, 8/16/32 bits allocated, BitsStored
    within them, PixelRepresentation 0 or 1, at least one frame."""
    rows, cols = _int_tag(ds, "Rows"), _int_tag(ds, "Columns")
    if rows < 1 or cols < 1 or rows * cols > 1 << 26:
        raise _Skip(f"implausible matrix size {rows}x{cols}")
    samples = _int_tag(ds, "SamplesPerPixel", 1)
    if samples != 1:
        raise _Skip(f"SamplesPerPixel {samples} (a colour image; liverseg reads grey CT/MR slices)")
    bits = _int_tag(ds, "BitsAllocated")
    if bits not in (8, 16, 32):
        raise _Skip(f"BitsAllocated {bits} (liverseg reads 8, 16 or 32)")
    stored = _int_tag(ds, "BitsStored", bits)
    if not 1 <= stored <= bits:
        raise _Skip(f"BitsStored {stored} with BitsAllocated {bits}")
    signed = _int_tag(ds, "PixelRepresentation")
    if signed not in (0, 1):
        raise _Skip(f"PixelRepresentation {signed} (0 or 1)")
    frames = _int_tag(ds, "NumberOfFrames", 1) if ds.get("NumberOfFrames") not in (None, "") else 1
    if frames < 1:
        raise _Skip(f"NumberOfFrames {frames}")
    return frames, rows, cols, bits, stored, bool(signed)


def transfer_syntax(ds: Any) -> str:
    """The file's TransferSyntaxUID, or (when the meta lacks it) the native one pydicom parsed it as."""
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if ts:
        return ts
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return ""
    return "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")


def native_size_problem(n_bytes: int, layout: tuple[int, int, int, int, int, bool]) -> str:
    """Why native pixel data of ``n_bytes`` does not fit the header (`` when it does: the exact byte
    count, or one pad byte more when that count is odd)."""
    frames, rows, cols, bits = layout[:4]
    expected = frames * rows * cols * bits // 8
    if n_bytes == expected or (expected % 2 and n_bytes == expected + 1):
        return ""
    by_frames = f" x NumberOfFrames {frames}" if frames > 1 else ""
    return (f"pixel data holds {n_bytes} bytes, but the header says Rows {rows} x Columns {cols} x "
            f"BitsAllocated {bits}/8{by_frames} = {expected} bytes")


def compressed_magic(head: bytes) -> str:
    """The name of a compressed format whose signature ``head`` starts with ('' for none)."""
    return next((name for magic, name in _COMPRESSED_MAGIC if head.startswith(magic)), "")


def _check_pixel_element(ds: Any, fp: Any, size: int, layout: tuple) -> None:
    """Header-only check of the PixelData element where a ``stop_before_pixels`` parse left ``fp``:
    present, encapsulated exactly when the transfer syntax is compressed, and for native syntaxes
    holding the bytes the header describes (not cut short, no compressed stream inside)."""
    from pydicom.uid import UID

    ts = transfer_syntax(ds)
    if ts == "1.2.840.10008.1.2.1.99":
        return  # deflated: the stream position is not the file's; decoding checks the size
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        raise _Skip("no PixelData")
    implicit, little = ds.original_encoding
    order = "<" if little else ">"
    tag = struct.unpack(order + "HH", head[:4])
    if tag != (0x7FE0, 0x0010):
        raise _Skip("no PixelData" if tag[0] != 0x7FE0 else f"float pixel data ({tag[0]:04X},{tag[1]:04X})")
    if implicit:
        length, value_at = struct.unpack(order + "I", head[4:8])[0], start + 8
    elif head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"SQ", b"UC", b"UR"):
        if len(head) < 12:
            raise _Skip("PixelData element cut short")
        length, value_at = struct.unpack(order + "I", head[8:12])[0], start + 12
    else:
        length, value_at = struct.unpack(order + "H", head[6:8])[0], start + 8
    encapsulated = length == 0xFFFFFFFF
    if ts in NATIVE_SYNTAXES:
        if encapsulated:
            raise _Skip(f"encapsulated (compressed) pixel data under the native transfer syntax {ts}")
        fp.seek(value_at)
        kind = compressed_magic(fp.read(12))
        if kind:
            raise _Skip(f"pixel data holds a {kind} stream but the transfer syntax {ts} says uncompressed")
        if value_at + length > size:
            raise _Skip(f"pixel data cut short: {size - value_at} of the {length} bytes it declares are in the file")
        problem = native_size_problem(length, layout)
        if problem:
            raise _Skip(problem)
        return
    uid = UID(ts)
    if not uid.is_transfer_syntax:
        raise _Skip(f"unknown transfer syntax {ts!r}")
    if not encapsulated:
        raise _Skip(f"the transfer syntax {ts} is compressed but the pixel data is not encapsulated")


def _rescale_tags(item: Any) -> tuple[bool, bool]:
    return item.get("RescaleSlope") not in (None, ""), item.get("RescaleIntercept") not in (None, "")


def _frames_from_dataset(ds: Any, path: Path) -> list[Frame]:
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class in _NON_IMAGE_SOP_CLASSES:
        raise _Skip(_NON_IMAGE_SOP_CLASSES[sop_class])
    if "Rows" not in ds or "Columns" not in ds:
        raise _Skip("missing Rows/Columns (not an image)")
    n_frames, rows, cols = pixel_layout(ds)[:3]
    if n_frames > 1 and "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        raise _Skip(f"NumberOfFrames {n_frames} without the functional groups that place each frame")
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
                                row, col, (float(spacing[0]), float(spacing[1])), rows, cols, slope, intercept,
                                _rescale_tags(trans if trans is not None else ds)))
    else:
        row, col = _orientation(_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"))
        spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing")
        slope, intercept = _rescale(ds)
        frames = [Frame(path, 0, _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient"), row, col,
                        (float(spacing[0]), float(spacing[1])), rows, cols, slope, intercept, _rescale_tags(ds))]
    for f in frames:
        if min(f.pixel_spacing) <= 0 or not np.isfinite([f.slope, f.intercept]).all() or f.slope == 0:
            raise _Skip(f"PixelSpacing {f.pixel_spacing} or RescaleSlope/Intercept {f.slope}/{f.intercept} invalid")
    return frames


def open_regular(path: Path):
    """Open ``path`` for reading only if it is a regular file: the open itself never blocks (a FIFO
    put in its place after the listing opens at once, non-blocking, and is refused here)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _NotRegular(errno.EINVAL, _special_name(mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _special_name(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "not a regular file"


def _image_sop_class(ds: Any) -> bool:
    """Whether the SOP class (of the dataset or, in a file cut short, its meta) is an image storage
    class or unknown: such a file without Rows/Columns is a damaged slice, not a non-image object."""
    from pydicom.uid import UID

    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    name = UID(sop_class).name
    known = bool(sop_class) and name != sop_class
    return not known or "Image Storage" in name  # unknown (missing, cut short, garbled): take it for a slice


def _looks_not_dicom(name: str) -> bool:
    name = name.lower()
    return name.startswith(".") or name.endswith(_NOT_DICOM_SUFFIXES) or name in ("autorun.inf", "thumbs.db")


def _read_file(path: Path) -> tuple[Any, list[Frame]] | Skipped:
    """Parse one file's header; a ``Skipped`` saying why when it is not a usable image slice."""
    import pydicom

    if _looks_not_dicom(path.name):
        return Skipped(path, "not DICOM")
    try:
        fp = open_regular(path)
    except _NotRegular as exc:
        return Skipped(path, "special", exc.strerror)
    except OSError as exc:
        return Skipped(path, "unreadable", exc.strerror or type(exc).__name__)
    ds = None
    with fp:
        try:
            size = os.fstat(fp.fileno()).st_size
            fp.seek(128)
            magic = fp.read(4) == b"DICM"
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            frames = _frames_from_dataset(ds, path)
            _check_pixel_element(ds, fp, size, pixel_layout(ds))
        except _Skip as exc:
            reason = str(exc)
            uid = str(ds.get("SeriesInstanceUID") or "")
            if reason in _NON_IMAGE_SOP_CLASSES.values():
                return Skipped(path, "non-image", reason)
            if reason.startswith("missing Rows/Columns") and not _image_sop_class(ds):
                return Skipped(path, "non-image", reason, uid or None)  # refuses a series sharing its UID
            return Skipped(path, "damaged", reason, uid or None)  # without a UID: refuses the series beside it
        except OSError as exc:
            return Skipped(path, "unreadable", exc.strerror or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure means "skip this file"
            if path.name.lower() == "dicomdir":
                return Skipped(path, "non-image", "DICOMDIR")
            if not (magic or path.suffix.lower() == ".dcm"):
                return Skipped(path, "not DICOM")
            return Skipped(path, "damaged", f"not a readable DICOM file ({type(exc).__name__}: "
                                             f"{' '.join(str(exc).split())[:120]})")
    return ds, frames


def _fmt(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _all_files(path: Path) -> list[Path]:
    """Every regular file below ``path`` (or ``[path]`` for a regular file), in discovery order."""
    return _list_files(Path(path))[0]


def _list_files(path: Path) -> tuple[list[Path], list[tuple], list[Skipped]]:
    """Every regular file below ``path`` in ``os.walk`` order (a folder's files sorted by name, then its
    subfolders sorted, depth first), or ``[path]`` for a regular file, with each file's ``stat`` stamp
    from the same ``os.scandir`` pass, and what was passed over: special files (FIFO, socket, device),
    broken links and link loops, links to folders (never followed, so no loop can trap the walk) and
    folders that cannot be listed. Nothing is opened."""
    if not path.is_dir():
        try:
            st = path.stat()
        except OSError as exc:
            return [], [], [Skipped(path, "unreadable", exc.strerror or type(exc).__name__)]
        if stat.S_ISREG(st.st_mode):
            return [path], [_stamp(st)], []
        return [], [], [Skipped(path, "special", _special_name(st.st_mode))]
    files: list[Path] = []
    stamps: list[tuple] = []
    others: list[Skipped] = []
    pending = [str(path)]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as exc:
            others.append(Skipped(Path(folder), "unreadable", f"folder not listed: {exc.strerror}"))
            continue
        subdirs = []
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                link = entry.is_symlink()
                st = os.stat(entry.path) if link else entry.stat(follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a link loop holds no slice: passed over like a FIFO
                    others.append(Skipped(Path(entry.path), "special", "symbolic link loop"))
                else:  # a broken link may be a slice of the series, unreachable
                    reason = "broken symbolic link" if exc.errno == errno.ENOENT else exc.strerror or type(exc).__name__
                    others.append(Skipped(Path(entry.path), "unreadable", reason))
                continue
            if stat.S_ISDIR(st.st_mode):
                if link:
                    others.append(Skipped(Path(entry.path), "link", "link to a folder"))
                else:
                    subdirs.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                files.append(Path(entry.path))
                stamps.append(_stamp(st))
            else:
                others.append(Skipped(Path(entry.path), "special", _special_name(st.st_mode)))
        pending.extend(reversed(subdirs))
    return files, stamps, others


def _stamp(st: os.stat_result) -> tuple:
    """What changes when a file is replaced or written: type, size, times, device and inode (of the
    file a link points to, as opening it would)."""
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)


def skipped_summary(skipped: list[Skipped], root: Path, n_files: int) -> str:
    """One line: how many files were skipped, by kind, with the first few names (and reasons)."""
    if not skipped:
        return ""
    parts = []
    for kind, label in SKIP_KINDS.items():
        items = [s for s in skipped if s.kind == kind]
        if not items:
            continue
        names = []
        for s in items[:3]:
            try:
                name = str(s.path.relative_to(root)) if s.path != root else s.path.name
            except ValueError:
                name = str(s.path)
            names.append(f"{name}: {s.reason}" if s.reason and kind != "link" else name)
        more = ", ..." if len(items) > 3 else ""
        parts.append(f"{len(items):,} {label} ({', '.join(names)}{more})")
    files = f" of {n_files:,} file(s)" if n_files else ""
    return f"skipped {len(skipped):,}{files}: " + "; ".join(parts)


# ----------------------------------------------------------------------------------------------------
# Discovery cache: ``check_input`` and then ``read_volume`` (and the DICOM SEG writer) discover the
# same folder within one run; the second discovery reuses the first unless a file changed.
# ----------------------------------------------------------------------------------------------------

SETTLE_S = 2.0               # files changed this recently (by their ctime) are not cached: see below
CACHE_MAX_FRAMES = 100_000   # slices kept over all cached folders (~1.3 kB each), oldest folders dropped first
_cache: OrderedDict[str, tuple[tuple, list[SeriesInfo], str]] = OrderedDict()
_cache_lock = threading.Lock()
_said: dict[str, tuple] = {}  # the last summary of skipped files logged for a folder, with its fingerprint


def _settled(stamps: list[tuple], now_ns: int) -> bool:
    """No file changed within ``SETTLE_S`` before the listing. File times tick coarsely (a few ms,
    2 s on FAT): a file rewritten in the same tick as its previous write, with the same size, keeps its
    stamp. A change after a settled listing always gets a later time."""
    newest = max((stamp[3] for stamp in stamps if stamp), default=0)
    return newest < now_ns - int(SETTLE_S * 1e9)


def _cached(key: str, fingerprint: tuple) -> tuple[list[SeriesInfo], str] | None:
    """The series found in ``key`` before, if its files still have this fingerprint. The fingerprint
    holds device and inode numbers, so a relative path read from another working folder misses."""
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None or entry[0] != fingerprint:
            return None
        _cache.move_to_end(key)
        return _copies(entry[1]), entry[2]


def _remember(key: str, fingerprint: tuple, series: list[SeriesInfo], note: str) -> None:
    """Cache a discovery; the least recently used folders go once the cache holds CACHE_MAX_FRAMES
    slices (a batch checks every case up front, so all its folders are kept while that fits)."""
    with _cache_lock:
        _cache[key] = (fingerprint, _copies(series), note)
        _cache.move_to_end(key)
        while len(_cache) > 1 and sum(s.n_slices for _, found, _ in _cache.values() for s in found) > CACHE_MAX_FRAMES:
            _cache.popitem(last=False)


def _copies(series: list[SeriesInfo]) -> list[SeriesInfo]:
    """Fresh SeriesInfo objects (and frame lists) around the shared, never modified, Frames."""
    return [replace(s, frames=list(s.frames)) for s in series]


def clear_series_cache() -> None:
    """Forget every cached discovery (the next ``find_series`` parses the files again)."""
    with _cache_lock:
        _cache.clear()
        _said.clear()


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
    line summing up the skipped files is not repeated.
    """
    return _find(Path(path))[0]


def _find(path: Path) -> tuple[list[SeriesInfo], str]:
    """``find_series`` and the summary of what was skipped ('' for nothing)."""
    now_ns = time.time_ns()
    files, stamps, others = _list_files(path)
    key, fingerprint = str(path), (tuple(map(str, files)), tuple(stamps), tuple(str(o.path) for o in others))
    cached = _cached(key, fingerprint)
    if cached is not None:
        return cached
    series, note = _discover(path, files, others)
    # said once, also for a folder too fresh to cache; not when every series will be refused (the
    # error names the file) or none was found (the error holds the summary)
    if note and series and not all(s.rejected for s in series) and _said.get(key) != (fingerprint, note):
        log.warning("%s: %s", path, note)
        _said[key] = (fingerprint, note)
        while len(_said) > 1000:
            _said.pop(next(iter(_said)))
    if _settled(stamps, now_ns):
        _remember(key, fingerprint, series, note)
    return series, note


def _discover(root: Path, files: list[Path], others: list[Skipped]) -> tuple[list[SeriesInfo], str]:
    """Parse the headers of ``files`` and group them into series (``find_series`` without the cache),
    with one line summing up the skipped files."""
    results = _map(_read_file, files)
    skipped = list(others)
    groups: dict[tuple, SeriesInfo] = {}
    localizers: dict[str, int] = {}
    for result in results:
        if isinstance(result, Skipped):
            skipped.append(result)
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
    odd: list[Skipped] = []  # slices that look like a damaged member of a series beside them
    for parts in by_uid.values():
        if len(parts) > 1:
            parts.sort(key=lambda s: -s.n_slices)
            for i, part in enumerate(parts):
                part.part = f"{i + 1}/{len(parts)}"
            if parts[0].n_slices > 1:  # a lone slice with another orientation, matrix or spacing
                odd += [Skipped(f.path, "damaged", "its orientation, matrix size or pixel spacing differs from the "
                                f"other {parts[0].n_slices} slices of the series", part.label)
                        for part in parts[1:] if part.n_slices == 1 for f in part.frames]
    series.sort(key=lambda s: (s.modality.upper() != "CT", -s.n_slices, s.label, s.part))
    with_uid = [info for info in series if info.series_uid]
    for info in series:  # files without a SeriesInstanceUID beside a series that has one
        if not info.series_uid:
            folders = {f.path.parent for f in info.frames}
            odd += [Skipped(f.path, "damaged", "no SeriesInstanceUID, unlike the slices beside it", other.label)
                    for other in with_uid if folders & {g.path.parent for g in other.frames} for f in info.frames]
    # A damaged file of a series, or a DICOM-looking file that cannot be read or parsed beside its
    # slices, may be one of its slices (a missing end slice leaves no gap to see): plan_series
    # refuses such a series. A damaged file names its series by its UID; when that UID is none of the
    # series found (missing, or itself damaged), it counts against every series in its folder.
    labels = {info.label for info in series}
    for info in series:
        folders = {f.path.parent for f in info.frames}
        own = {f.path for f in info.frames}
        info.rejected = [s for s in skipped + odd if s.path not in own and (
            (s.kind in ("damaged", "non-image") and s.group is not None and s.group == info.label)
            or (s.kind in ("damaged", "unreadable") and s.group not in labels and s.path.parent in folders
                and not _looks_not_dicom(s.path.name)))]
    return series, skipped_summary(skipped, root, len(files) + len(others))


def choose_series(path: Path, series: str | int | None = None, *, announce: bool = True) -> SeriesInfo:
    """The requested series (UID or 0-based index from ``liverseg inspect``), or by default the CT
    series with the most slices (with a message when there was a choice and ``announce``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    found, note = _find(path)
    if not found:
        raise InputError(f"{path}: no readable DICOM image series found in this folder or below it"
                         f"{f' ({note})' if note else ''}; give a folder of DICOM slice files or a "
                         "NIfTI/NRRD/MHA file")
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
    """A regular file with the DICM magic at byte 128 (or a .dcm suffix)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open_regular(path) as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def holds_dicom(folder: Path) -> bool:
    """Whether a DICOM file lies in ``folder`` or below it (the first one found ends the search;
    files named like photographs, text or web pages are not opened). A folder that holds DICOM is a
    DICOM input even when a viewer's thumbnail or index.html lies beside the slices."""
    files = _list_files(Path(folder))[0] if Path(folder).is_dir() else []
    return any(not _looks_not_dicom(f.name) and is_dicom_file(f) for f in files)


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
        extra += f" +{len(s.rejected)} unusable (predict refuses)" if s.rejected else ""
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
    found, note = _find(path)
    if not found:
        raise InputError(f"{path}: no readable DICOM image series found in this folder or below it"
                         f"{f' ({note})' if note else ''}")
    default = f"default for predict: #0 ({found[0].label}); choose another with --series UID_OR_INDEX"
    return format_series_table(found) + "\n" + default


__all__ = ["Frame", "SeriesInfo", "Skipped", "check_dicom", "choose_series", "clear_series_cache", "find_series", "format_series_table", "holds_dicom", "inspect", "is_dicom_file", "read_dicom_series"]
