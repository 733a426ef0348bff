"""``liverseg check``: read every case of a manifest and verify it before anyone trains on it.

Per case: the image reads (any DICOM oddity refused with its reason), the label maps onto the image
grid (shape, spacing, origin, direction), its values are among the manifest's labels, and recorded
sha256 checksums match. One bad case does not stop the others; the summary table lists them all.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError, LiversegError
from ..io import read_volume
from ..io.labels import read_label
from .manifest import Case, load_manifest, sha256_of


@dataclass
class CaseReport:
    case_id: str
    ok: bool
    shape: tuple[int, ...] | None = None
    spacing_mm: tuple[float, ...] | None = None
    label_values: tuple[int, ...] = ()
    message: str = ""


def check_case(case: Case, allowed_values: set[int]) -> CaseReport:
    report = CaseReport(case.case_id, False)
    try:
        for key, expected in case.sha256.items():
            path = {"image": case.image, "label": case.label, "fov": case.fov}.get(key)
            if path is None:
                raise InputError(f"sha256 given for unknown file key {key!r} (image, label, fov)")
            if not Path(path).is_file():
                raise InputError(f"{path}: not found (its sha256 is recorded in the manifest)")
            actual = sha256_of(path)
            if actual != expected.lower():
                raise InputError(f"{path}: sha256 {actual[:12]}... does not match the manifest's {expected[:12]}...; "
                                 "the file is damaged or a different version; download it again")
        image = read_volume(case.image)
        report.shape = image.shape
        report.spacing_mm = tuple(float(s) for s in np.round(image.spacing_mm, 3))
        if case.label is not None:
            label = read_label(case.label, image, case.label_format, case.structures)
            values = tuple(int(v) for v in np.unique(label.array))
            report.label_values = values
            bad = [v for v in values if v not in allowed_values]
            if allowed_values and bad:
                raise InputError(f"{case.label}: label values {bad} are not in the manifest's labels "
                                 f"{sorted(allowed_values)}")
        report.ok = True
    except LiversegError as exc:
        report.message = " ".join(str(exc).split())
    return report


def check_manifest(manifest_path: str | Path, root: str | Path | None = None, split: str = "all",
                   progress: bool = True) -> list[CaseReport]:
    from tqdm import tqdm

    manifest = load_manifest(manifest_path, root)
    cases = manifest.split(split)
    allowed = set(manifest.labels.values())
    reports = []
    for case in tqdm(cases, desc=f"check {manifest.name}", unit="case", disable=not progress):
        reports.append(check_case(case, allowed))
    return reports


def format_reports(reports: list[CaseReport]) -> str:
    header = ("case", "status", "shape", "spacing mm", "label values", "problem")
    rows = [(r.case_id, "ok" if r.ok else "FAIL", "x".join(map(str, r.shape)) if r.shape else "-",
             ", ".join(f"{s:g}" for s in r.spacing_mm) if r.spacing_mm else "-",
             ", ".join(map(str, r.label_values)) or "-", r.message) for r in reports]
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header) - 1)]
    lines = ["  ".join([v.ljust(w) for v, w in zip(row[:-1], widths)] + [row[-1]]).rstrip() for row in [header, *rows]]
    failed = sum(not r.ok for r in reports)
    lines.append(f"{len(reports) - failed} of {len(reports)} cases ok" + (f", {failed} failed" if failed else ""))
    return "\n".join(lines)


def run_check(manifest_path: str | Path, root: str | Path | None = None, split: str = "all", progress: bool = True,
              echo: Callable[[str], Any] = print) -> list[CaseReport]:
    """``liverseg check``: every case read and checked, the table given to ``echo``; raises InputError naming
    the failed cases (after the table) when any failed."""
    reports = check_manifest(manifest_path, root, split, progress=progress)
    echo(format_reports(reports))
    failed = [r.case_id for r in reports if not r.ok]
    if failed:
        raise InputError(f"{manifest_path}: {len(failed)} of {len(reports)} cases failed the check: "
                         f"{', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''} (see the table above)")
    return reports


__all__ = ["CaseReport", "check_case", "check_manifest", "format_reports", "run_check"]
