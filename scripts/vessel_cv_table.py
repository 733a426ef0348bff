#!/usr/bin/env python
"""The fold table of a cross-validation run of scripts/chase_vessels.sh --cv.

Reads OUT/fold<k>/pred/evaluation/per_case.csv (written by ``liverseg evaluate``) and, when present,
OUT/fold<k>/train_seconds, and prints per fold: images, mean ROC AUC inside the field of view, Dice and
accuracy (per-image means), training time; then the mean over folds and the mean over all images.
The same table goes to OUT/cv_table.md and OUT/cv_table.csv.

usage: python scripts/vessel_cv_table.py OUT [--label vessel]
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

METRICS = ("auc", "dice", "accuracy")


def read_fold(fold_dir: Path, label: str) -> dict:
    """Per-image metrics of one fold (rows of ``label``) and its training time."""
    per_case = fold_dir / "pred" / "evaluation" / "per_case.csv"
    if not per_case.is_file():
        raise SystemExit(f"{per_case}: missing; did the fold's evaluation finish?")
    with per_case.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["name"] == label]
    if not rows:
        raise SystemExit(f"{per_case}: no rows for label {label!r}")
    values = {m: [float(row[m]) for row in rows] for m in METRICS}
    for metric, numbers in values.items():
        bad = [row["case"] for row, v in zip(rows, numbers) if not math.isfinite(v)]
        if bad:
            raise SystemExit(f"{per_case}: {metric} is not finite for {', '.join(bad)} (no probability map?)")
    seconds_file = fold_dir / "train_seconds"
    seconds = float(seconds_file.read_text()) if seconds_file.is_file() else math.nan
    return {"fold": fold_dir.name, "cases": [row["case"] for row in rows], "values": values, "train_s": seconds}


def fold_table(out: Path, label: str = "vessel") -> tuple[list[dict], dict]:
    folds = sorted((p for p in out.glob("fold*") if p.is_dir()), key=lambda p: int(p.name[4:] or 0))
    if not folds:
        raise SystemExit(f"{out}: no fold<k> folders; run scripts/chase_vessels.sh --cv first")
    table = []
    for fold_dir in folds:
        fold = read_fold(fold_dir, label)
        row = {"fold": fold["fold"], "images": len(fold["cases"]), "train_min": fold["train_s"] / 60}
        row.update({m: statistics.fmean(v) for m, v in fold["values"].items()})
        row["auc_min"] = min(fold["values"]["auc"])
        row["worst"] = fold["cases"][fold["values"]["auc"].index(row["auc_min"])]
        row["_values"] = fold["values"]
        table.append(row)
    every = {m: [v for row in table for v in row["_values"][m]] for m in METRICS}
    summary = {"folds": len(table), "images": sum(r["images"] for r in table),
               "fold_mean": {m: statistics.fmean(r[m] for r in table) for m in METRICS},
               "fold_sd": {m: statistics.stdev(r[m] for r in table) if len(table) > 1 else 0.0 for m in METRICS},
               "image_mean": {m: statistics.fmean(every[m]) for m in METRICS},
               "train_min": statistics.fmean(r["train_min"] for r in table)}
    return table, summary


def markdown(table: list[dict], summary: dict) -> str:
    lines = ["| fold | images | ROC AUC (FOV) | Dice | accuracy | lowest AUC (image) | training |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        minutes = "—" if math.isnan(r["train_min"]) else f"{r['train_min']:.1f} min"
        lines.append(f"| {r['fold']} | {r['images']} | {r['auc']:.4f} | {r['dice']:.4f} | {r['accuracy']:.4f} | "
                     f"{r['auc_min']:.4f} ({r['worst']}) | {minutes} |")
    m, sd, im = summary["fold_mean"], summary["fold_sd"], summary["image_mean"]
    lines.append(f"| **mean of {summary['folds']} folds** | {summary['images']} | **{m['auc']:.4f}** +/- {sd['auc']:.4f} | "
                 f"{m['dice']:.4f} +/- {sd['dice']:.4f} | {m['accuracy']:.4f} +/- {sd['accuracy']:.4f} | | |")
    lines.append(f"| mean of {summary['images']} images | | {im['auc']:.4f} | {im['dice']:.4f} | {im['accuracy']:.4f} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the OUT folder of scripts/chase_vessels.sh --cv")
    parser.add_argument("--label", default="vessel", help="the label name to tabulate (default: vessel)")
    args = parser.parse_args(argv)
    table, summary = fold_table(args.out, args.label)
    text = markdown(table, summary)
    (args.out / "cv_table.md").write_text(text, encoding="utf-8")
    with (args.out / "cv_table.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "images", "auc", "dice", "accuracy", "auc_min", "worst", "train_min"])
        for r in table:
            writer.writerow([r["fold"], r["images"], f"{r['auc']:.6f}", f"{r['dice']:.6f}", f"{r['accuracy']:.6f}",
                             f"{r['auc_min']:.6f}", r["worst"], f"{r['train_min']:.2f}"])
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
