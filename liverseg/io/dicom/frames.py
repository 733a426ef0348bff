"""One file's DICOM header -> the 2D slices (``Frame``) it holds, or why it holds none (``read_header``).

Geometry tags (position, orientation, pixel spacing, per-frame functional groups of enhanced
multi-frame files), the pixel format and the PixelData element are checked from the header alone
(``stop_before_pixels``): a file that is not a usable image slice is a ``Skipped`` saying why.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import NotRegularFile, Skipped, looks_not_dicom, open_regular

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


# transfer syntaxes whose pixel data is stored as it is (deflate is undone by pydicom): byte order
NATIVE_SYNTAXES = {"1.2.840.10008.1.2": "<", "1.2.840.10008.1.2.1": "<", "1.2.840.10008.1.2.2": ">",
                   "1.2.840.10008.1.2.1.99": "<"}


_COMPRESSED_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
                     (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\xfe\x00\xe0", "encapsulated"))


class SkipFile(Exception):
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
    rescale_tags: tuple[bool, bool] = (True, True)  # whether RescaleSlope / RescaleIntercept were given

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)


def _floats(value: Any, n: int, name: str) -> np.ndarray:
    if value is None:
        raise SkipFile(f"missing {name}")
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise SkipFile(f"{name} {value!r} is not numeric") from None
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise SkipFile(f"{name} {value!r} must hold {n} finite numbers")
    return out


def _orientation(iop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    row, col = iop[:3], iop[3:]
    if not (abs(np.linalg.norm(row) - 1) < 1e-2 and abs(np.linalg.norm(col) - 1) < 1e-2 and abs(row @ col) < 1e-2):
        raise SkipFile(f"ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
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
            raise SkipFile(f"missing {name}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SkipFile(f"{name} {value!r} is not an integer") from None


def pixel_layout(ds: Any) -> tuple[int, int, int, int, int, bool]:
    """(frames, rows, cols, BitsAllocated, BitsStored, signed) of a grey image, checked for sense
    (``SkipFile`` naming the tag otherwise): one sample per pixel, 8/16/32 bits allocated, BitsStored
    within them, PixelRepresentation 0 or 1, at least one frame."""
    rows, cols = _int_tag(ds, "Rows"), _int_tag(ds, "Columns")
    if rows < 1 or cols < 1 or rows * cols > 1 << 26:
        raise SkipFile(f"implausible matrix size {rows}x{cols}")
    samples = _int_tag(ds, "SamplesPerPixel", 1)
    if samples != 1:
        raise SkipFile(f"SamplesPerPixel {samples} (a colour image; liverseg reads grey CT/MR slices)")
    bits = _int_tag(ds, "BitsAllocated")
    if bits not in (8, 16, 32):
        raise SkipFile(f"BitsAllocated {bits} (liverseg reads 8, 16 or 32)")
    stored = _int_tag(ds, "BitsStored", bits)
    if not 1 <= stored <= bits:
        raise SkipFile(f"BitsStored {stored} with BitsAllocated {bits}")
    signed = _int_tag(ds, "PixelRepresentation")
    if signed not in (0, 1):
        raise SkipFile(f"PixelRepresentation {signed} (0 or 1)")
    frames = _int_tag(ds, "NumberOfFrames", 1) if ds.get("NumberOfFrames") not in (None, "") else 1
    if frames < 1:
        raise SkipFile(f"NumberOfFrames {frames}")
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
        raise SkipFile("no PixelData")
    implicit, little = ds.original_encoding
    order = "<" if little else ">"
    tag = struct.unpack(order + "HH", head[:4])
    if tag != (0x7FE0, 0x0010):
        raise SkipFile("no PixelData" if tag[0] != 0x7FE0 else f"float pixel data ({tag[0]:04X},{tag[1]:04X})")
    if implicit:
        length, value_at = struct.unpack(order + "I", head[4:8])[0], start + 8
    elif head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"SQ", b"UC", b"UR"):
        if len(head) < 12:
            raise SkipFile("PixelData element cut short")
        length, value_at = struct.unpack(order + "I", head[8:12])[0], start + 12
    else:
        length, value_at = struct.unpack(order + "H", head[6:8])[0], start + 8
    encapsulated = length == 0xFFFFFFFF
    if ts in NATIVE_SYNTAXES:
        if encapsulated:
            raise SkipFile(f"encapsulated (compressed) pixel data under the native transfer syntax {ts}")
        fp.seek(value_at)
        kind = compressed_magic(fp.read(12))
        if kind:
            raise SkipFile(f"pixel data holds a {kind} stream but the transfer syntax {ts} says uncompressed")
        if value_at + length > size:
            raise SkipFile(f"pixel data cut short: {size - value_at} of the {length} bytes it declares are in the file")
        problem = native_size_problem(length, layout)
        if problem:
            raise SkipFile(problem)
        return
    uid = UID(ts)
    if not uid.is_transfer_syntax:
        raise SkipFile(f"unknown transfer syntax {ts!r}")
    if not encapsulated:
        raise SkipFile(f"the transfer syntax {ts} is compressed but the pixel data is not encapsulated")


def _rescale_tags(item: Any) -> tuple[bool, bool]:
    return item.get("RescaleSlope") not in (None, ""), item.get("RescaleIntercept") not in (None, "")


def _frames_from_dataset(ds: Any, path: Path) -> list[Frame]:
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class in _NON_IMAGE_SOP_CLASSES:
        raise SkipFile(_NON_IMAGE_SOP_CLASSES[sop_class])
    if "Rows" not in ds or "Columns" not in ds:
        raise SkipFile("missing Rows/Columns (not an image)")
    n_frames, rows, cols = pixel_layout(ds)[:3]
    if n_frames > 1 and "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        raise SkipFile(f"NumberOfFrames {n_frames} without the functional groups that place each frame")
    if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        frames = []
        for k in range(n_frames):
            pos_item, ori_item = _item(ds, k, "PlanePositionSequence"), _item(ds, k, "PlaneOrientationSequence")
            meas, trans = _item(ds, k, "PixelMeasuresSequence"), _item(ds, k, "PixelValueTransformationSequence")
            if pos_item is None or ori_item is None or meas is None:
                raise SkipFile(f"frame {k + 1} lacks PlanePosition/PlaneOrientation/PixelMeasures functional groups")
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
            raise SkipFile(f"PixelSpacing {f.pixel_spacing} or RescaleSlope/Intercept {f.slope}/{f.intercept} invalid")
    return frames


def _image_sop_class(ds: Any) -> bool:
    """Whether the SOP class (of the dataset or, in a file cut short, its meta) is an image storage
    class or unknown: such a file without Rows/Columns is a damaged slice, not a non-image object."""
    from pydicom.uid import UID

    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    name = UID(sop_class).name
    known = bool(sop_class) and name != sop_class
    return not known or "Image Storage" in name  # unknown (missing, cut short, garbled): take it for a slice


def read_header(path: Path) -> tuple[Any, list[Frame]] | Skipped:
    """Parse one file's header; a ``Skipped`` saying why when it is not a usable image slice."""
    import pydicom

    if looks_not_dicom(path.name):
        return Skipped(path, "not DICOM")
    try:
        fp = open_regular(path)
    except NotRegularFile as exc:
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
        except SkipFile as exc:
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


__all__ = ["NATIVE_SYNTAXES", "Frame", "SkipFile", "compressed_magic", "native_size_problem", "pixel_layout",
           "read_header", "transfer_syntax"]
