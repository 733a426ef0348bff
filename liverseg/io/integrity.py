"""Proof that an image file holds all the data its header declares, on a grid that makes sense.

SimpleITK reads a truncated NIfTI (``.nii`` or ``.nii.gz``) without complaint, filling the missing
voxels with zeros; it reads a compressed MHA whose zlib stream is damaged (MetaIO prints "Uncompress
failed" and carries on); and it replaces a zero, NaN or infinite NIfTI ``pixdim`` with 1 mm. So every
NIfTI / NRRD / MHA header is parsed here first, and:

* cheap checks (``check_header``: header fields, the byte count of uncompressed data, the gzip trailer's
  length of compressed data) run before SimpleITK is called, from ``liverseg.io.check_input`` too;
* a ``.nii.gz`` is decompressed once, here, with every gzip member's CRC-32 and length verified
  (``read_nifti_gz``), instead of by SimpleITK, so its data is read only once;
* a compressed NRRD is left to teem, which refuses short or damaged gzip streams itself; a compressed
  MHA's zlib stream is verified here (a second decompression of that file: MHA inputs are rare).

Every failure is an ``InputError`` whose one line names the file and the problem.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError

MAX_VOXELS = 2 ** 31  # a 2048x2048x512 CT: anything larger declared in a header is a damaged header
CHUNK = 1 << 20
HINT = "the file is damaged or was not written completely; copy or export it again"


@dataclass
class ImageHeader:
    """What a header declares about the voxel data (enough to check the data's length)."""

    fmt: str  # nifti | nrrd | mha
    dims: tuple[int, ...]
    itemsize: int | None  # bytes per voxel component, None where the type is not one we size
    data_file: Path
    data_offset: int | None  # None: data at the end of the file (NRRD byte skip -1, MHA HeaderSize -1)
    compression: str | None  # None, "gzip" (NIfTI .gz / NRRD gzip), "zlib" (MHA), or "other" (not checked)
    components: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int | None:
        if self.itemsize is None:
            return None
        return math.prod(self.dims) * self.itemsize * self.components


def _refuse(path: Path, problem: str) -> InputError:
    return InputError(f"{path}: {problem}")


def is_gzip_name(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


# ----------------------------------------------------------------------------- gzip / zlib streams

def _stream(path: Path, offset: int, wbits: int, length: int | None = None) -> Iterator[memoryview | bytes]:
    """Decompressed pieces of the compressed data at ``offset`` of ``path`` (every gzip member in turn),
    raising an InputError when a stream is damaged, fails its CRC / Adler check or ends early."""
    kind = "gzip" if wbits > 16 else "zlib"
    with open(path, "rb") as handle:
        handle.seek(offset)
        remaining = length
        decomp = zlib.decompressobj(wbits)
        started = False
        pending = b""
        while True:
            if pending:
                chunk, pending = pending, b""
            else:
                size = CHUNK if remaining is None else min(CHUNK, remaining)
                chunk = handle.read(size) if size > 0 else b""
                if remaining is not None:
                    remaining -= len(chunk)
            if not chunk:
                break
            if decomp.eof:  # a new member (gzip allows several), or padding after the last one
                if chunk.strip(b"\0") == b"" and kind == "gzip":
                    continue
                if kind != "gzip" or chunk[:2] != b"\x1f\x8b":
                    raise _refuse(path, f"has {len(chunk)}+ bytes of unexpected data after the end of its {kind} "
                                        f"stream; {HINT}")
                decomp = zlib.decompressobj(wbits)
            started = True
            while chunk:
                try:
                    piece = decomp.decompress(chunk, 16 * CHUNK)
                except zlib.error as exc:
                    problem = ("its data fails the CRC check" if "incorrect data check" in str(exc)
                               or "incorrect length check" in str(exc) else f"its {kind} stream is corrupt ({exc})")
                    raise _refuse(path, f"{problem}; {HINT}") from None
                if piece:
                    yield piece
                if decomp.eof:
                    pending = decomp.unused_data
                    break
                chunk = decomp.unconsumed_tail
        if not started or not decomp.eof:
            raise _refuse(path, f"is truncated: its {kind} stream ends before its end marker; {HINT}")


def count_decompressed(path: Path, offset: int = 0, wbits: int = 31, length: int | None = None) -> int:
    """Decompress and count (nothing kept); raises InputError for a damaged or truncated stream."""
    return sum(len(piece) for piece in _stream(path, offset, wbits, length))


def _length_problem(have: int, need: int, what: str) -> str:
    if have < need:
        return (f"is truncated: holds {have} bytes of voxel data, its header ({what}) needs {need} "
                f"({100.0 * have / need:.1f}%); {HINT}")
    return (f"holds {have} bytes of voxel data but its header ({what}) declares only {need}: the header's "
            "dimensions or data type are wrong, or the file is damaged")


# ----------------------------------------------------------------------------- NIfTI

NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
               1280: "u8"}
NIFTI_NONSCALAR = {32: "complex64", 128: "RGB", 1792: "complex128", 2048: "complex256", 2304: "RGBA",
                   1536: "float128"}


def _read_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of the file, decompressed for .gz (fewer if the file is shorter)."""
    if is_gzip_name(path):
        out = bytearray()
        try:
            for piece in _stream(path, 0, 31):
                out += piece
                if len(out) >= size:
                    break
        except InputError:
            if len(out) < size:
                raise
        return bytes(out[:size])
    with open(path, "rb") as handle:
        return handle.read(size)


def parse_nifti(path: Path) -> ImageHeader:
    head = _read_head(path, 540)
    if len(head) < 348:
        raise _refuse(path, f"is truncated: {len(head)} bytes, shorter than a NIfTI header (348 bytes); {HINT}")
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        raise _refuse(path, f"is not a NIfTI file or its header is damaged: sizeof_hdr is "
                            f"{struct.unpack('<i', head[:4])[0]}, not 348 (NIfTI-1) or 540 (NIfTI-2)")
    if sizeof_hdr == 540 and len(head) < 540:
        raise _refuse(path, f"is truncated: {len(head)} bytes, shorter than a NIfTI-2 header (540 bytes); {HINT}")

    def unpack(fmt: str, offset: int):
        return struct.unpack_from(endian + fmt, head, offset)

    if sizeof_hdr == 348:
        magic = head[344:348]
        if magic != b"n+1\0":
            raise _refuse(path, f"bad NIfTI-1 magic {magic!r} (expected b'n+1\\x00' for a single-file .nii"
                                f"{'; ni1 is a .hdr/.img pair' if magic == b'ni1' + bytes(1) else ''}): not a NIfTI "
                                "file or its header is damaged")
        dim = unpack("8h", 40)
        datatype, bitpix = unpack("2h", 70)
        pixdim = unpack("8f", 76)
        vox_offset = unpack("f", 108)[0]
        slope, inter = unpack("2f", 112)
        qform_code, sform_code = unpack("2h", 252)
        quatern = unpack("6f", 256)
        srow = np.array(unpack("12f", 280), dtype=np.float64).reshape(3, 4)
        min_offset = 352
    else:
        magic = head[4:12]
        if magic != b"n+2\0\r\n\x1a\n":
            raise _refuse(path, f"bad NIfTI-2 magic {magic!r}: not a single-file NIfTI-2 or its header is damaged")
        datatype, bitpix = unpack("2h", 12)
        dim = unpack("8q", 16)
        pixdim = unpack("8d", 104)
        vox_offset = unpack("q", 168)[0]
        slope, inter = unpack("2d", 176)
        qform_code, sform_code = unpack("2i", 344)
        quatern = unpack("6d", 352)
        srow = np.array(unpack("12d", 400), dtype=np.float64).reshape(3, 4)
        min_offset = 544
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise _refuse(path, f"NIfTI header declares {ndim} dimensions (dim[0] must be 1 to 7): the header is damaged")
    dims = tuple(int(d) for d in dim[1:ndim + 1])
    if any(d < 1 for d in dims):
        raise _refuse(path, f"NIfTI header declares size {dims}: every dimension must be at least 1; the header "
                            "is damaged")
    check_voxel_count(path, dims)
    if datatype in NIFTI_NONSCALAR:
        raise _refuse(path, f"holds {NIFTI_NONSCALAR[datatype]} voxels (NIfTI datatype {datatype}); liverseg needs a "
                            "single-channel CT volume")
    if datatype not in NIFTI_TYPES:
        raise _refuse(path, f"NIfTI datatype code {datatype} is not a known scalar type: the header is damaged")
    dtype = np.dtype(endian + NIFTI_TYPES[datatype])
    if bitpix != dtype.itemsize * 8:
        raise _refuse(path, f"NIfTI bitpix {bitpix} does not match datatype {datatype} ({dtype.itemsize * 8} bits): "
                            "the header is damaged")
    if not math.isfinite(vox_offset) or vox_offset != int(vox_offset) or vox_offset < min_offset:
        raise _refuse(path, f"NIfTI vox_offset {vox_offset} is impossible (the voxel data must start at a whole "
                            f"byte at or after {min_offset}): the header is damaged")
    spatial = [float(p) for p in pixdim[1:1 + min(ndim, 3)]]
    bad = [(axis, p) for axis, p in enumerate(spatial, 1) if not math.isfinite(p) or p <= 0]
    if bad:
        raise _refuse(path, "NIfTI voxel size " + ", ".join(f"pixdim[{a}]={p}" for a, p in bad)
                      + " is impossible (must be a finite number > 0 mm): the volume's size in mm and mL would be "
                        "wrong; fix the header")
    if not math.isfinite(slope) or (slope != 0 and not math.isfinite(inter)):
        raise _refuse(path, f"NIfTI scaling scl_slope={slope}, scl_inter={inter} is not finite: the header is damaged")
    qform = np.array(quatern, dtype=np.float64)
    if qform_code > 0 and not np.all(np.isfinite(qform)):
        raise _refuse(path, f"NIfTI qform (quaternion/offset {qform.tolist()}) is not finite: the header is damaged")
    if sform_code > 0 and not np.all(np.isfinite(srow)):
        raise _refuse(path, "NIfTI sform (srow_x/y/z) is not finite: the header is damaged")
    return ImageHeader("nifti", dims, dtype.itemsize, path, int(vox_offset),
                       "gzip" if is_gzip_name(path) else None,
                       extra={"dtype": dtype, "slope": float(slope), "inter": float(inter), "qform_code": qform_code,
                              "sform_code": sform_code, "srow": srow, "quatern": qform, "pixdim": pixdim})


def read_nifti_gz(header: ImageHeader) -> np.ndarray:
    """The raw voxel array of a ``.nii.gz`` (file order, ``[i, j, k, ...]`` as a Fortran-ordered view),
    decompressed once with the gzip CRC-32 and length verified."""
    path, offset, need = header.data_file, header.data_offset, header.nbytes
    assert offset is not None and need is not None
    out = np.empty(need, dtype=np.uint8)
    pos = -offset  # bytes of voxel data written so far (negative while still in the header/extensions)
    for piece in _stream(path, 0, 31):
        piece = memoryview(piece)
        if pos < 0:
            skip = min(-pos, len(piece))
            piece, pos = piece[skip:], pos + skip
        if not len(piece):
            continue
        if pos + len(piece) > need:
            rest = count_decompressed(path)  # the length to report: rare, so a second pass is fine
            raise _refuse(path, _length_problem(rest - offset, need, _nifti_what(header)))
        out[pos:pos + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        pos += len(piece)
    if pos < need:
        raise _refuse(path, _length_problem(max(pos, 0), need, _nifti_what(header)))
    dtype = header.extra["dtype"]
    return out.view(dtype).reshape(header.dims, order="F")


def _nifti_what(header: ImageHeader) -> str:
    return (f"size {header.dims}, {header.extra['dtype'].name}, data from byte {header.data_offset}"
            if header.fmt == "nifti" else f"size {header.dims}")


# ----------------------------------------------------------------------------- MetaImage

MET_TYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
             "MET_UINT": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def parse_mha(path: Path) -> ImageHeader:
    with open(path, "rb") as handle:
        head = handle.read(65536)
    fields: dict[str, str] = {}
    end = None
    pos = 0
    for line in head.split(b"\n"):
        nxt = pos + len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                end = nxt
                break
        pos = nxt
    if end is None:
        raise _refuse(path, "has no complete MetaImage header (no ElementDataFile line): not a MetaImage or "
                            f"truncated; {HINT}")
    try:
        ndims = int(fields.get("ndims", "0"))
        dims = tuple(int(v) for v in fields.get("dimsize", "").split())
        components = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        raise _refuse(path, "MetaImage NDims/DimSize/ElementNumberOfChannels are not integers: the header is "
                            "damaged") from None
    if not dims or len(dims) != ndims or any(d < 1 for d in dims):
        raise _refuse(path, f"MetaImage header declares NDims {ndims} and DimSize {dims}: the header is damaged")
    check_voxel_count(path, dims)
    code = MET_TYPES.get(fields.get("elementtype", "").upper())
    msb = (fields.get("binarydatabyteordermsb") or fields.get("elementbyteordermsb") or "false").lower() == "true"
    dtype = None if code is None else np.dtype((">" if msb else "<") + code)
    itemsize = None if dtype is None else dtype.itemsize
    compressed = fields.get("compresseddata", "false").lower() == "true"
    data_name = fields["elementdatafile"]
    if data_name.upper() == "LOCAL":
        data_file, offset = path, end
    elif data_name.upper().startswith("LIST") or "%" in data_name or " " in data_name:
        return ImageHeader("mha", dims, None, path, None, "other", components)  # one file per slice: not sized
    else:
        data_file = path.parent / data_name
        if not data_file.is_file():
            raise _refuse(path, f"its data file {data_file} is missing")
        offset = 0
    header_size = fields.get("headersize")
    if header_size is not None:
        try:
            skip = int(header_size)
            offset = None if skip == -1 else (offset if data_file == path else skip)
        except ValueError:
            raise _refuse(path, f"MetaImage HeaderSize {header_size!r} is not an integer: the header is damaged") from None
    length = None
    if compressed and fields.get("compresseddatasize"):
        try:
            length = int(fields["compresseddatasize"])
        except ValueError:
            length = None
    return ImageHeader("mha", dims, itemsize, data_file, offset, "zlib" if compressed else None, components,
                       extra={"compressed_size": length, "dtype": dtype})


# ----------------------------------------------------------------------------- NRRD

NRRD_TYPES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8,
              "float": 4, "double": 8, "signed char": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1,
              "uint8_t": 1, "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16_t": 2,
              "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16_t": 2, "int": 4, "signed int": 4,
              "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32_t": 4, "longlong": 8, "long long": 8,
              "long long int": 8, "signed long long": 8, "signed long long int": 8, "int64_t": 8, "ulonglong": 8,
              "unsigned long long": 8, "unsigned long long int": 8, "uint64_t": 8}


def parse_nrrd(path: Path) -> ImageHeader:
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if not head.startswith(b"NRRD000"):
        raise _refuse(path, "is not a NRRD file (no NRRD000x magic) or its header is damaged")
    fields: dict[str, str] = {}
    pos, end = 0, None
    lines = head.split(b"\n")
    for line in lines[:-1]:
        pos += len(line) + 1
        text = line.decode("latin-1").rstrip("\r")
        if not text.strip():
            end = pos
            break
        if text.startswith("#") or ":" not in text:
            continue
        key, _, value = text.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    data_name = fields.get("data file") or fields.get("datafile")
    if end is None and not data_name:
        raise _refuse(path, f"has no complete NRRD header (no blank line after it): truncated; {HINT}")
    try:
        dims = tuple(int(v) for v in fields.get("sizes", "").split())
    except ValueError:
        raise _refuse(path, f"NRRD sizes {fields.get('sizes')!r} are not integers: the header is damaged") from None
    if not dims or any(d < 1 for d in dims):
        raise _refuse(path, f"NRRD sizes {dims} are impossible: the header is damaged")
    check_voxel_count(path, dims)
    encoding = fields.get("encoding", "raw").lower()
    compression = {"raw": None, "gzip": "gzip", "gz": "gzip"}.get(encoding, "other")
    itemsize = NRRD_TYPES.get(fields.get("type", "").lower())
    type_name = fields.get("type", "").lower()
    kind = "f" if type_name in ("float", "double") else ("u" if "u" in type_name.replace("signed", "")
                                                          .replace("unsigned", "u") else "i")
    big = fields.get("endian", "little").lower() == "big"
    dtype = None if itemsize is None else np.dtype(f"{'>' if big else '<'}{kind}{itemsize}")
    if data_name:
        if data_name.upper().startswith("LIST") or "%" in data_name or " " in data_name:
            return ImageHeader("nrrd", dims, None, path, None, "other")
        data_file = path.parent / data_name
        if not data_file.is_file():
            raise _refuse(path, f"its data file {data_file} is missing")
        offset: int | None = 0
    else:
        data_file, offset = path, end
    line_skip = int(fields.get("line skip", fields.get("lineskip", "0")) or 0)
    byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
    if line_skip:
        compression = "other"  # rare; teem sizes the data itself
    if byte_skip == -1:
        offset = None
    elif offset is not None:
        offset += byte_skip
    return ImageHeader("nrrd", dims, itemsize, data_file, offset, compression, extra={"dtype": dtype})


# ----------------------------------------------------------------------------- all formats

def check_voxel_count(path: Path, dims: tuple[int, ...]) -> None:
    voxels = math.prod(dims)
    if voxels > MAX_VOXELS:
        raise _refuse(path, f"header declares size {dims} = {voxels} voxels (more than 2^31): the header is damaged")


def parse_header(path: Path) -> ImageHeader | None:
    """The parsed header of a NIfTI / NRRD / MHA / MHD file (None for another suffix)."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return parse_nifti(path)
        if name.endswith((".nrrd", ".nhdr")):
            return parse_nrrd(path)
        if name.endswith((".mha", ".mhd")):
            return parse_mha(path)
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise _refuse(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    return None


def check_data_length(header: ImageHeader, path: Path, full: bool) -> None:
    """Does the file hold exactly the voxel data its header declares?

    Uncompressed data: the file size. gzip (``.nii.gz``, NRRD ``encoding: gzip``): the trailer's length,
    and with ``full`` (or when the trailer disagrees) a decompression that checks every CRC. zlib (MHA):
    decompressed in full when ``full``.
    """
    need = header.nbytes
    if need is None or header.compression == "other":
        return
    what = _nifti_what(header)
    data_file = header.data_file
    size = data_file.stat().st_size
    offset = header.data_offset
    if header.compression is None:
        if offset is None:  # data at the end of the file: nothing to compare the size with
            if size < need:
                raise _refuse(path, _length_problem(size, need, what))
            return
        have = size - offset
        if have != need:
            raise _refuse(path, _length_problem(max(have, 0), need, what))
        return
    if header.compression == "gzip":
        start = offset if header.fmt == "nrrd" else 0  # a .nii.gz is one gzip stream, header included
        if start is None:
            return
        head_bytes = 0 if header.fmt == "nrrd" else offset
        expect = head_bytes + need
        with open(data_file, "rb") as handle:
            handle.seek(start)
            if handle.read(2) != b"\x1f\x8b":
                raise _refuse(path, f"its data is not gzip-compressed (no gzip signature at byte {start}); {HINT}")
            handle.seek(0, 2)
            if handle.tell() - start >= 18:
                handle.seek(-4, 2)
                if struct.unpack("<I", handle.read(4))[0] == expect % 2 ** 32:
                    return  # the trailer agrees; the CRC is checked while reading (NIfTI here, NRRD by teem)
        total = count_decompressed(data_file, start, 31)  # say exactly what is wrong (or accept several members)
        if total != expect:
            raise _refuse(path, _length_problem(max(total - head_bytes, 0), need, what))
        return
    if header.compression == "zlib" and offset is not None and full:
        total = count_decompressed(data_file, offset, 47, header.extra.get("compressed_size"))
        if total != need:
            raise _refuse(path, _length_problem(total, need, what))


def check_geometry(path: Path, spacing, origin, direction) -> None:
    """Refuse a grid no scanner makes: spacing not finite and > 0, origin not finite, direction not a rotation."""
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    n = len(spacing)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise _refuse(path, f"voxel spacing {spacing.tolist()} mm is impossible (must be finite and > 0): fix the "
                            "header")
    if not np.all(np.isfinite(origin)):
        raise _refuse(path, f"origin {origin.tolist()} is not finite: fix the header")
    direction = direction.reshape(n, n)
    if not np.all(np.isfinite(direction)):
        raise _refuse(path, f"direction {direction.tolist()} is not finite: fix the header")
    error = float(np.abs(direction.T @ direction - np.eye(n)).max())
    if error > 1e-3:
        kind = "singular (two axes coincide)" if abs(np.linalg.det(direction)) < 1e-6 else "not orthonormal (sheared)"
        raise _refuse(path, f"direction matrix {np.round(direction, 4).tolist()} is {kind}: voxel axes must be "
                            "perpendicular unit vectors; liverseg will not guess the grid: fix the header")


def nifti_form_warnings(header: ImageHeader, affine_ras: np.ndarray) -> list[str]:
    """Warnings for the standard qform/sform choice SimpleITK (and 3D Slicer) made for this NIfTI."""
    extra = header.extra
    qcode, scode = extra["qform_code"], extra["sform_code"]
    if qcode <= 0 and scode <= 0:
        return ["the NIfTI header declares no orientation (qform_code = sform_code = 0): the grid was placed as "
                "SimpleITK / 3D Slicer do, from pixdim alone; left-right and the origin are not known from the file"]
    if scode <= 0 or qcode <= 0:
        return []
    sform = np.eye(4)
    sform[:3] = extra["srow"]
    qform = _qform_affine(extra["quatern"], extra["pixdim"])
    if np.allclose(sform, qform, atol=1e-3, rtol=0):
        return []
    used = "sform" if np.allclose(affine_ras, sform, atol=1e-3, rtol=0) else (
        "qform" if np.allclose(affine_ras, qform, atol=1e-3, rtol=0) else "a repaired form")
    return [f"the NIfTI header's qform and sform disagree (largest difference "
            f"{np.abs(sform - qform).max():.3g} mm); the {used} was used, as SimpleITK / 3D Slicer do"]


def _qform_affine(quatern: np.ndarray, pixdim) -> np.ndarray:
    b, c, d, qx, qy, qz = (float(v) for v in quatern)
    a = 1.0 - (b * b + c * c + d * d)
    a = math.sqrt(a) if a > 1e-7 else 0.0
    if a == 0.0:
        norm = math.sqrt(b * b + c * c + d * d) or 1.0
        b, c, d = b / norm, c / norm, d / norm
    rot = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                    [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                    [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qfac = -1.0 if float(pixdim[0]) < 0 else 1.0
    zooms = np.array([abs(float(pixdim[1])), abs(float(pixdim[2])), abs(float(pixdim[3])) * qfac])
    out = np.eye(4)
    out[:3, :3] = rot * zooms[None, :]
    out[:3, 3] = (qx, qy, qz)
    return out


def check_values(path: Path, array: np.ndarray) -> None:
    """Refuse NaN / infinite voxels: no intensity model can segment an undefined value."""
    if array.dtype.kind != "f":
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        what = "every voxel is" if bad == array.size else f"{bad} of {array.size} voxels ({100.0 * bad / array.size:.2g}%) are"
        raise _refuse(path, f"{what} NaN or infinite; liverseg refuses undefined intensities rather than guess "
                            "them: fix or re-export the image")


def scan_values(header: ImageHeader, path: Path) -> None:
    """Stream the voxel data once, nothing kept: verify every CRC / length on the way and refuse NaN /
    infinite voxels and a volume whose voxels all have one value (not a CT). Used by ``check_input``;
    formats whose data layout is not sized here (slice lists, line skips, other encodings) are left
    to SimpleITK's reader."""
    dtype = header.extra.get("dtype")
    need = header.nbytes
    if dtype is None or need is None or header.compression == "other" or header.data_offset is None:
        return
    data_file, offset = header.data_file, header.data_offset
    if header.compression is None:
        pieces: Iterator = _file_pieces(data_file, offset, need)
        head = 0
    elif header.compression == "gzip":
        head = offset if header.fmt == "nifti" else 0
        pieces = _stream(data_file, 0 if header.fmt == "nifti" else offset, 31)
    else:
        head = 0
        pieces = _stream(data_file, offset, 47, header.extra.get("compressed_size"))
    itemsize = dtype.itemsize
    carry = b""
    seen = bad = 0
    low = high = None
    for piece in pieces:
        piece = bytes(piece)
        if head:
            cut = min(head, len(piece))
            piece, head = piece[cut:], head - cut
        data = carry + piece if carry else piece
        usable = len(data) - len(data) % itemsize
        carry = data[usable:]
        if not usable:
            continue
        values = np.frombuffer(data, dtype=dtype, count=usable // itemsize)
        seen += usable
        if dtype.kind == "f":
            finite = np.isfinite(values)
            n_bad = int(values.size - np.count_nonzero(finite))
            if n_bad:
                bad += n_bad
                values = values[finite]
        if values.size:
            lo, hi = values.min(), values.max()
            low = lo if low is None or lo < low else low
            high = hi if high is None or hi > high else high
    if seen + len(carry) != need:
        raise _refuse(path, _length_problem(seen + len(carry), need, _nifti_what(header)))
    voxels = need // itemsize
    if bad:
        what = "every voxel is" if bad == voxels else f"{bad} of {voxels} voxels ({100.0 * bad / voxels:.2g}%) are"
        raise _refuse(path, f"{what} NaN or infinite; liverseg refuses undefined intensities rather than guess "
                            "them: fix or re-export the image")
    if low is not None and low == high:
        raise _refuse(path, f"every voxel has the same value ({low}): this is not a CT image (blank or damaged "
                            "export)")


def _file_pieces(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(offset)
        while length > 0:
            chunk = handle.read(min(16 * CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def check_ct_values(path: Path | str, array: np.ndarray) -> None:
    """A CT to segment must vary: a constant volume (all air, all zeros) has nothing to find."""
    if array.size and np.ptp(array[:: max(1, array.shape[0] // 64)]) == 0 and np.ptp(array) == 0:
        value = array.flat[0]
        raise _refuse(Path(str(path)), f"every voxel has the same value ({value}): this is not a CT image (blank or "
                                       "damaged export)")


__all__ = ["ImageHeader", "MAX_VOXELS", "parse_header", "check_data_length", "check_geometry", "check_values",
           "check_ct_values", "nifti_form_warnings", "read_nifti_gz", "count_decompressed", "scan_values"]
