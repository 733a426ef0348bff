"""NIfTI, NRRD and MetaImage headers parsed by liverseg itself (``parse_header``): what each declares
about its voxel data (``ImageHeader``), checked for sense, before SimpleITK sees the file.

The parser is chosen by ``formats.image_format``, from the suffix table that ``read_volume`` and the
case names use too. Every failure is an ``InputError`` whose one line names the file and the problem.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .compressed import HINT, is_gzip_name, refuse, stream
from .formats import image_format

MAX_VOXELS = 2 ** 31  # a 2048x2048x512 CT: anything larger declared in a header is a damaged header


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


# ----------------------------------------------------------------------------- NIfTI

NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
               1280: "u8"}
NIFTI_NONSCALAR = {32: "complex64", 128: "RGB", 1792: "complex128", 2048: "complex256", 2304: "RGBA",
                   1536: "float128"}


def read_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of the file, decompressed for .gz (fewer if the file is shorter)."""
    if is_gzip_name(path):
        out = bytearray()
        try:
            for piece in stream(path, 0, 31):
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
    head = read_head(path, 540)
    if len(head) < 348:
        raise refuse(path, f"is truncated: {len(head)} bytes, shorter than a NIfTI header (348 bytes); {HINT}")
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        raise refuse(path, f"is not a NIfTI file or its header is damaged: sizeof_hdr is "
                            f"{struct.unpack('<i', head[:4])[0]}, not 348 (NIfTI-1) or 540 (NIfTI-2)")
    if sizeof_hdr == 540 and len(head) < 540:
        raise refuse(path, f"is truncated: {len(head)} bytes, shorter than a NIfTI-2 header (540 bytes); {HINT}")

    def unpack(fmt: str, offset: int):
        return struct.unpack_from(endian + fmt, head, offset)

    if sizeof_hdr == 348:
        magic = head[344:348]
        if magic != b"n+1\0":
            raise refuse(path, f"bad NIfTI-1 magic {magic!r} (expected b'n+1\\x00' for a single-file .nii"
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
            raise refuse(path, f"bad NIfTI-2 magic {magic!r}: not a single-file NIfTI-2 or its header is damaged")
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
        raise refuse(path, f"NIfTI header declares {ndim} dimensions (dim[0] must be 1 to 7): the header is damaged")
    dims = tuple(int(d) for d in dim[1:ndim + 1])
    if any(d < 1 for d in dims):
        raise refuse(path, f"NIfTI header declares size {dims}: every dimension must be at least 1; the header "
                            "is damaged")
    check_voxel_count(path, dims)
    if datatype in NIFTI_NONSCALAR:
        raise refuse(path, f"holds {NIFTI_NONSCALAR[datatype]} voxels (NIfTI datatype {datatype}); liverseg needs a "
                            "single-channel CT volume")
    if datatype not in NIFTI_TYPES:
        raise refuse(path, f"NIfTI datatype code {datatype} is not a known scalar type: the header is damaged")
    dtype = np.dtype(endian + NIFTI_TYPES[datatype])
    if bitpix != dtype.itemsize * 8:
        raise refuse(path, f"NIfTI bitpix {bitpix} does not match datatype {datatype} ({dtype.itemsize * 8} bits): "
                            "the header is damaged")
    if not math.isfinite(vox_offset) or vox_offset != int(vox_offset) or vox_offset < min_offset:
        raise refuse(path, f"NIfTI vox_offset {vox_offset} is impossible (the voxel data must start at a whole "
                            f"byte at or after {min_offset}): the header is damaged")
    spatial = [float(p) for p in pixdim[1:1 + min(ndim, 3)]]
    bad = [(axis, p) for axis, p in enumerate(spatial, 1) if not math.isfinite(p) or p <= 0]
    if bad:
        raise refuse(path, "NIfTI voxel size " + ", ".join(f"pixdim[{a}]={p}" for a, p in bad)
                      + " is impossible (must be a finite number > 0 mm): the volume's size in mm and mL would be "
                        "wrong; fix the header")
    if not math.isfinite(slope) or (slope != 0 and not math.isfinite(inter)):
        raise refuse(path, f"NIfTI scaling scl_slope={slope}, scl_inter={inter} is not finite: the header is damaged")
    qform = np.array(quatern, dtype=np.float64)
    if qform_code > 0 and not np.all(np.isfinite(qform)):
        raise refuse(path, f"NIfTI qform (quaternion/offset {qform.tolist()}) is not finite: the header is damaged")
    if sform_code > 0 and not np.all(np.isfinite(srow)):
        raise refuse(path, "NIfTI sform (srow_x/y/z) is not finite: the header is damaged")
    return ImageHeader("nifti", dims, dtype.itemsize, path, int(vox_offset),
                       "gzip" if is_gzip_name(path) else None,
                       extra={"dtype": dtype, "slope": float(slope), "inter": float(inter), "qform_code": qform_code,
                              "sform_code": sform_code, "srow": srow, "quatern": qform, "pixdim": pixdim})


def data_description(header: ImageHeader) -> str:
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
        raise refuse(path, "has no complete MetaImage header (no ElementDataFile line): not a MetaImage or "
                            f"truncated; {HINT}")
    try:
        ndims = int(fields.get("ndims", "0"))
        dims = tuple(int(v) for v in fields.get("dimsize", "").split())
        components = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        raise refuse(path, "MetaImage NDims/DimSize/ElementNumberOfChannels are not integers: the header is "
                            "damaged") from None
    if not dims or len(dims) != ndims or any(d < 1 for d in dims):
        raise refuse(path, f"MetaImage header declares NDims {ndims} and DimSize {dims}: the header is damaged")
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
            raise refuse(path, f"its data file {data_file} is missing")
        offset = 0
    header_size = fields.get("headersize")
    if header_size is not None:
        try:
            skip = int(header_size)
            offset = None if skip == -1 else (offset if data_file == path else skip)
        except ValueError:
            raise refuse(path, f"MetaImage HeaderSize {header_size!r} is not an integer: the header is damaged") from None
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
        raise refuse(path, "is not a NRRD file (no NRRD000x magic) or its header is damaged")
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
        raise refuse(path, f"has no complete NRRD header (no blank line after it): truncated; {HINT}")
    try:
        dims = tuple(int(v) for v in fields.get("sizes", "").split())
    except ValueError:
        raise refuse(path, f"NRRD sizes {fields.get('sizes')!r} are not integers: the header is damaged") from None
    if not dims or any(d < 1 for d in dims):
        raise refuse(path, f"NRRD sizes {dims} are impossible: the header is damaged")
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
            raise refuse(path, f"its data file {data_file} is missing")
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
        raise refuse(path, f"header declares size {dims} = {voxels} voxels (more than 2^31): the header is damaged")


PARSERS = {"nifti": parse_nifti, "nrrd": parse_nrrd, "mha": parse_mha}


def parse_header(path: Path) -> ImageHeader | None:
    """The parsed header of a NIfTI / NRRD / MHA / MHD file (None for another suffix: ``formats.image_format``)."""
    parser = PARSERS.get(image_format(path))
    if parser is None:
        return None
    try:
        return parser(path)
    except (OSError, struct.error, UnicodeDecodeError) as exc:
        raise refuse(path, f"cannot be read ({type(exc).__name__}: {exc})") from None


__all__ = ["ImageHeader", "MAX_VOXELS", "PARSERS", "check_voxel_count", "data_description", "parse_header",
           "parse_mha", "parse_nifti", "parse_nrrd"]
