"""gzip / zlib streams decompressed with every CRC / Adler check and length verified (``stream``).

Shared by the header parsers (``headers``: a ``.nii.gz`` header is inside its gzip stream) and the
data checks (``integrity``). Every failure is an ``InputError`` naming the file.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator

from ..errors import InputError

CHUNK = 1 << 20
HINT = "the file is damaged or was not written completely; copy or export it again"


def refuse(path: Path, problem: str) -> InputError:
    return InputError(f"{path}: {problem}")


def is_gzip_name(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def stream(path: Path, offset: int, wbits: int, length: int | None = None) -> Iterator[memoryview | bytes]:
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
                    raise refuse(path, f"has {len(chunk)}+ bytes of unexpected data after the end of its {kind} "
                                        f"stream; {HINT}")
                decomp = zlib.decompressobj(wbits)
            started = True
            while chunk:
                try:
                    piece = decomp.decompress(chunk, 16 * CHUNK)
                except zlib.error as exc:
                    problem = ("its data fails the CRC check" if "incorrect data check" in str(exc)
                               or "incorrect length check" in str(exc) else f"its {kind} stream is corrupt ({exc})")
                    raise refuse(path, f"{problem}; {HINT}") from None
                if piece:
                    yield piece
                if decomp.eof:
                    pending = decomp.unused_data
                    break
                chunk = decomp.unconsumed_tail
        if not started or not decomp.eof:
            raise refuse(path, f"is truncated: its {kind} stream ends before its end marker; {HINT}")


def count_decompressed(path: Path, offset: int = 0, wbits: int = 31, length: int | None = None) -> int:
    """Decompress and count (nothing kept); raises InputError for a damaged or truncated stream."""
    return sum(len(piece) for piece in stream(path, offset, wbits, length))


def length_problem(have: int, need: int, what: str) -> str:
    if have < need:
        return (f"is truncated: holds {have} bytes of voxel data, its header ({what}) needs {need} "
                f"({100.0 * have / need:.1f}%); {HINT}")
    return (f"holds {have} bytes of voxel data but its header ({what}) declares only {need}: the header's "
            "dimensions or data type are wrong, or the file is damaged")


__all__ = ["CHUNK", "HINT", "count_decompressed", "is_gzip_name", "length_problem", "refuse", "stream"]
