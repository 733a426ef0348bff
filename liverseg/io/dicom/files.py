"""Which files are DICOM, and the walk over a folder that lists them (nothing is parsed here).

``list_files`` walks a folder in ``os.walk`` order with one ``os.scandir`` pass, opening nothing and
never following links to folders; ``open_regular`` opens only regular files (a FIFO never blocks);
``is_dicom_file`` looks for the DICM magic. Also the two helpers the rest of the package shares:
``parallel_map`` (the thread pool for header parsing and decoding) and ``fmt_mm``.
"""
from __future__ import annotations

import errno
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

THREADS = min(8, os.cpu_count() or 1)


# Files passed over without a warning: not DICOM by their name.
_NOT_DICOM_SUFFIXES = (".txt", ".json", ".xml", ".csv", ".md", ".pdf", ".png", ".jpg", ".jpeg", ".bmp", ".gif",
                       ".tif", ".tiff", ".nii", ".gz", ".zip", ".tar", ".nrrd", ".mha", ".mhd", ".raw", ".py",
                       ".yaml", ".yml", ".html", ".log", ".mat", ".npy", ".npz")


class NotRegularFile(OSError):
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


def open_regular(path: Path):
    """Open ``path`` for reading only if it is a regular file: the open itself never blocks (a FIFO
    put in its place after the listing opens at once, non-blocking, and is refused here)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, _special_name(mode))
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


def looks_not_dicom(name: str) -> bool:
    name = name.lower()
    return name.startswith(".") or name.endswith(_NOT_DICOM_SUFFIXES) or name in ("autorun.inf", "thumbs.db")


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


def all_files(path: Path) -> list[Path]:
    """Every regular file below ``path`` (or ``[path]`` for a regular file), in discovery order."""
    return list_files(Path(path))[0]


def list_files(path: Path) -> tuple[list[Path], list[tuple], list[Skipped]]:
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


def parallel_map(function, items: list) -> list:
    if THREADS <= 1 or len(items) < 8:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(function, items))


def fmt_mm(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


__all__ = ["SKIP_KINDS", "THREADS", "NotRegularFile", "Skipped", "all_files", "fmt_mm", "is_dicom_file", "list_files",
           "looks_not_dicom", "open_regular", "parallel_map"]
