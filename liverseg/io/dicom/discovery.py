"""DICOM discovery: every image series below a folder (``find_series``), the one to read
(``choose_series``), and the table ``liverseg inspect`` prints (``inspect``).

Headers are parsed in a thread pool (``frames.read_header``), grouped by SeriesInstanceUID and split
where orientation, matrix size or pixel spacing differ; what was skipped is summed up in one warning
line. An unchanged folder is parsed once per process (the discovery cache below).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ..volume import affine_from_lps, axis_codes
from .files import SKIP_KINDS, Skipped, fmt_mm, is_dicom_file, list_files, looks_not_dicom, parallel_map
from .frames import Frame, read_header

log = logging.getLogger(__package__)  # "liverseg.io.dicom": one logger for the whole package


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


def ds_folder(result: tuple[Any, list[Frame]]) -> str:
    return str(result[1][0].path.parent)


def find_series(path: Path) -> list[SeriesInfo]:
    """Every image series in ``path`` (a folder, searched recursively, or one file), in the order
    ``liverseg inspect`` shows them: CT first, then most slices first. Headers only: the pixels of
    the one series used are read when it is loaded (``assembly.load_series``).

    Within one process an unchanged folder is parsed once: the result is cached under the path and a
    fingerprint of its files (names, sizes, times, inodes from one ``os.scandir`` pass), and the
    line summing up the skipped files is not repeated.
    """
    return _find(Path(path))[0]


def _find(path: Path) -> tuple[list[SeriesInfo], str]:
    """``find_series`` and the summary of what was skipped ('' for nothing)."""
    now_ns = time.time_ns()
    files, stamps, others = list_files(path)
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
    results = parallel_map(read_header, files)
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
                and not looks_not_dicom(s.path.name)))]
    return series, skipped_summary(skipped, root, len(files) + len(others))


def _series_below(path: Path, advice: str = "") -> list[SeriesInfo]:
    """The series found below ``path``; InputError (ending in ``advice``) when there is none."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    found, note = _find(path)
    if not found:
        raise InputError(f"{path}: no readable DICOM image series found in this folder or below it"
                         f"{f' ({note})' if note else ''}{advice}")
    return found


def choose_series(path: Path, series: str | int | None = None, *, announce: bool = True) -> SeriesInfo:
    """The requested series (UID or 0-based index from ``liverseg inspect``), or by default the CT
    series with the most slices (with a message when there was a choice and ``announce``)."""
    path = Path(path)
    found = _series_below(path, "; give a folder of DICOM slice files or a NIfTI/NRRD/MHA file")
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


def holds_dicom(folder: Path) -> bool:
    """Whether a DICOM file lies in ``folder`` or below it (the first one found ends the search;
    files named like photographs, text or web pages are not opened). A folder that holds DICOM is a
    DICOM input even when a viewer's thumbnail or index.html lies beside the slices."""
    files = list_files(Path(folder))[0] if Path(folder).is_dir() else []
    return any(not looks_not_dicom(f.name) and is_dicom_file(f) for f in files)


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
        spacing = ", ".join(fmt_mm(v) for v in s.spacing_mm())
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
    found = _series_below(path)
    default = f"default for predict: #0 ({found[0].label}); choose another with --series UID_OR_INDEX"
    return format_series_table(found) + "\n" + default


__all__ = ["CACHE_MAX_FRAMES", "SETTLE_S", "SeriesInfo", "choose_series", "clear_series_cache", "find_series",
           "format_series_table", "holds_dicom", "inspect", "skipped_summary"]
