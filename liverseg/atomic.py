"""Atomic file writes: every file liverseg writes appears complete or not at all.

The writer gets a temporary name beside the destination (same folder, so the final rename is atomic;
same suffixes, so writers that choose a format from the extension do the right thing). On success the
file gets the permissions a plain ``open`` would have given it (``mkstemp`` makes it owner-only, which
would hide segmentations and reports from the colleagues they are meant for) and replaces the
destination; on any error it is removed.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process umask; read from /proc where it can be (setting and restoring it, the only portable
    way, briefly leaves other threads with umask 0)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shared_mode(base: int = 0o777) -> int:
    """``base`` less the umask: the permissions a plain ``mkdir`` (0o777) or ``open`` (0o666) gives."""
    return base & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if len(path.suffixes) >= 2 else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, shared_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | Path) -> Path:
    """``text`` as UTF-8, byte for byte (no newline translation)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


__all__ = ["atomic_path", "write_text_atomic", "shared_mode"]
