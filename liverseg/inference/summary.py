"""``OUT/batch_summary.csv``: one row per case of a batch (status, seconds, volume per label, warnings,
error), the volumes and warnings read from each case's ``report.json``.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from ..atomic import write_text_atomic

BATCH_SUMMARY = "batch_summary.csv"


def summary_row(case_id: str, status: str, case_dir: Path | None, label_names: Sequence[str],
                seconds: float | None = None, error: str = "") -> dict:
    """One row of batch_summary.csv; volumes and warnings come from the case's report.json."""
    row: dict = {"case": case_id, "status": status, "seconds": "" if seconds is None else f"{seconds:.1f}"}
    report: dict = {}
    if case_dir is not None and (case_dir / "report.json").is_file():
        try:
            report = json.loads((case_dir / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {}
    labels = report.get("labels") or {}
    for name in label_names[1:]:
        volume = (labels.get(name) or {}).get("volume_ml")
        row[f"{name}_ml"] = "" if volume is None else f"{volume:.2f}"
    warnings = (report.get("extra") or {}).get("warnings") or []
    row["warnings"] = " | ".join(" ".join(str(w).split()) for w in warnings)
    row["error"] = error
    return row


def write_batch_summary(rows: Sequence[dict], path: str | Path, label_names: Sequence[str]) -> Path:
    """``batch_summary.csv``: case, status (ok/failed/skipped), seconds, ``<label>_ml`` per foreground
    label, warnings (`` | ``-separated), error; written atomically."""
    columns = ["case", "status", "seconds", *[f"{name}_ml" for name in label_names[1:]], "warnings", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(buffer.getvalue(), path)


__all__ = ["BATCH_SUMMARY", "summary_row", "write_batch_summary"]
