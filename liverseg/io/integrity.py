"""Proof that an image file holds all the data its header declares, on a grid that makes sense.

SimpleITK reads a truncated NIfTI (``.nii`` or ``.nii.gz``) without complaint, filling the missing
voxels with zeros; it reads a compressed MHA whose zlib stream is damaged (MetaIO prints "Uncompress
failed" and carries on); and it replaces a zero, NaN or infinite NIfTI ``pixdim`` with 1 mm. So every
NIfTI / NRRD / MHA header is parsed first (``headers.parse_header``), and:

* cheap checks (header fields, the byte count of uncompressed data, the gzip trailer's
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
from pathlib import Path
from typing import Iterator

import numpy as np

from .compressed import CHUNK, HINT, count_decompressed, length_problem, refuse, stream
from .headers import ImageHeader, data_description


def read_nifti_gz(header: ImageHeader) -> np.ndarray:
    """The raw voxel array of a ``.nii.gz`` (file order, ``[i, j, k, ...]`` as a Fortran-ordered view),
    decompressed once with the gzip CRC-32 and length verified."""
    path, offset, need = header.data_file, header.data_offset, header.nbytes
    assert offset is not None and need is not None
    out = np.empty(need, dtype=np.uint8)
    pos = -offset  # bytes of voxel data written so far (negative while still in the header/extensions)
    for piece in stream(path, 0, 31):
        piece = memoryview(piece)
        if pos < 0:
            skip = min(-pos, len(piece))
            piece, pos = piece[skip:], pos + skip
        if not len(piece):
            continue
        if pos + len(piece) > need:
            rest = count_decompressed(path)  # the length to report: rare, so a second pass is fine
            raise refuse(path, length_problem(rest - offset, need, data_description(header)))
        out[pos:pos + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        pos += len(piece)
    if pos < need:
        raise refuse(path, length_problem(max(pos, 0), need, data_description(header)))
    dtype = header.extra["dtype"]
    return out.view(dtype).reshape(header.dims, order="F")


def check_data_length(header: ImageHeader, path: Path, full: bool) -> None:
    """Does the file hold exactly the voxel data its header declares?

    Uncompressed data: the file size. gzip (``.nii.gz``, NRRD ``encoding: gzip``): the trailer's length,
    and with ``full`` (or when the trailer disagrees) a decompression that checks every CRC. zlib (MHA):
    decompressed in full when ``full``.
    """
    need = header.nbytes
    if need is None or header.compression == "other":
        return
    what = data_description(header)
    data_file = header.data_file
    size = data_file.stat().st_size
    offset = header.data_offset
    if header.compression is None:
        if offset is None:  # data at the end of the file: nothing to compare the size with
            if size < need:
                raise refuse(path, length_problem(size, need, what))
            return
        have = size - offset
        if have != need:
            raise refuse(path, length_problem(max(have, 0), need, what))
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
                raise refuse(path, f"its data is not gzip-compressed (no gzip signature at byte {start}); {HINT}")
            handle.seek(0, 2)
            if handle.tell() - start >= 18:
                handle.seek(-4, 2)
                if struct.unpack("<I", handle.read(4))[0] == expect % 2 ** 32:
                    return  # the trailer agrees; the CRC is checked while reading (NIfTI here, NRRD by teem)
        total = count_decompressed(data_file, start, 31)  # say exactly what is wrong (or accept several members)
        if total != expect:
            raise refuse(path, length_problem(max(total - head_bytes, 0), need, what))
        return
    if header.compression == "zlib" and offset is not None and full:
        total = count_decompressed(data_file, offset, 47, header.extra.get("compressed_size"))
        if total != need:
            raise refuse(path, length_problem(total, need, what))


def check_geometry(path: Path, spacing, origin, direction) -> None:
    """Refuse a grid no scanner makes: spacing not finite and > 0, origin not finite, direction not a rotation."""
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    n = len(spacing)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise refuse(path, f"voxel spacing {spacing.tolist()} mm is impossible (must be finite and > 0): fix the "
                            "header")
    if not np.all(np.isfinite(origin)):
        raise refuse(path, f"origin {origin.tolist()} is not finite: fix the header")
    direction = direction.reshape(n, n)
    if not np.all(np.isfinite(direction)):
        raise refuse(path, f"direction {direction.tolist()} is not finite: fix the header")
    error = float(np.abs(direction.T @ direction - np.eye(n)).max())
    if error > 1e-3:
        kind = "singular (two axes coincide)" if abs(np.linalg.det(direction)) < 1e-6 else "not orthonormal (sheared)"
        raise refuse(path, f"direction matrix {np.round(direction, 4).tolist()} is {kind}: voxel axes must be "
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
        raise refuse(path, f"{what} NaN or infinite; liverseg refuses undefined intensities rather than guess "
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
        pieces = stream(data_file, 0 if header.fmt == "nifti" else offset, 31)
    else:
        head = 0
        pieces = stream(data_file, offset, 47, header.extra.get("compressed_size"))
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
        raise refuse(path, length_problem(seen + len(carry), need, data_description(header)))
    voxels = need // itemsize
    if bad:
        what = "every voxel is" if bad == voxels else f"{bad} of {voxels} voxels ({100.0 * bad / voxels:.2g}%) are"
        raise refuse(path, f"{what} NaN or infinite; liverseg refuses undefined intensities rather than guess "
                            "them: fix or re-export the image")
    if low is not None and low == high:
        raise refuse(path, f"every voxel has the same value ({low}): this is not a CT image (blank or damaged "
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
        raise refuse(Path(str(path)), f"every voxel has the same value ({value}): this is not a CT image (blank or "
                                       "damaged export)")


__all__ = ["check_data_length", "check_geometry", "check_values", "check_ct_values", "nifti_form_warnings",
           "read_nifti_gz", "scan_values"]
