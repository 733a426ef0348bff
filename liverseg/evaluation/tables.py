"""Tables of an evaluation: summary statistics, worst cases, the CSV files and the text table."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from .lesions import LesionResult, pool_lesions
from .scoring import METRICS, CaseResult

__all__ = ["summarise", "worst_cases", "write_csv", "write_lesions_csv", "write_summary_csv", "format_table",
           "format_lesion_table", "write_outputs"]


def _stat_row(label: str, metric: str, values) -> dict | None:
    """n, mean, sd (sample, ddof=1), median, min, max over the finite values; None when there are none."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return {"label": label, "metric": metric, "n": int(finite.size), "n_not_finite": int(values.size - finite.size),
            "mean": float(finite.mean()), "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max())}


def summarise(results: list[CaseResult]) -> list[dict]:
    """Per label and metric: n, mean, sd (sample, ddof=1), median, min, max over the finite values."""
    rows = []
    for name in sorted({r.name for r in results}):
        of_label = [r for r in results if r.name == name]
        for metric in METRICS:
            row = _stat_row(name, metric, [getattr(r, metric) for r in of_label])
            if row is not None:
                rows.append(row)
    return rows


def worst_cases(results: list[CaseResult], count: int = 3) -> dict[str, list[CaseResult]]:
    """The ``count`` lowest-Dice cases of every label."""
    return {name: sorted((r for r in results if r.name == name), key=lambda r: r.dice)[:count]
            for name in sorted({r.name for r in results})}


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.6f}")
    return str(value)


def write_csv(results: list[CaseResult], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = [f.name for f in fields(CaseResult)]
    writer.writerow(names)
    for r in results:
        writer.writerow([_fmt(v) for v in asdict(r).values()])
    return write_text_atomic(buffer.getvalue(), path)


def _lesion_summary_rows(lesions: list[LesionResult]) -> list[dict]:
    """summary.csv rows of the lesion label: per-case statistics of lesion_dice, lesion_precision,
    lesion_recall and lesion_f1; one-value rows (n = cases) of lesion_dice_global, the pooled
    lesion_*_pooled scores (left out when undefined) and the ``*_total`` lesion counts."""
    rows = []
    for name, pooled in pool_lesions(lesions).items():
        of_label = [r for r in lesions if r.name == name]
        for metric in ("dice", "precision", "recall", "f1"):
            row = _stat_row(name, f"lesion_{metric}", [getattr(r, metric) for r in of_label])
            if row is not None:
                rows.append(row)
        single = [("lesion_dice_global", pooled["dice_global"])]
        single += [(f"lesion_{key}_pooled", pooled[key]) for key in ("precision", "recall", "f1")]
        single += [(f"{key}_total", pooled[key]) for key in ("ref_lesions", "pred_lesions")]
        single += [(f"lesion_{key}_total", pooled[key]) for key in ("tp", "fp", "fn")]
        for metric, value in single:
            if isinstance(value, float) and math.isnan(value):
                continue
            rows.append({"label": name, "metric": metric, "n": pooled["cases"], "n_not_finite": 0, "mean": value,
                         "sd": 0.0, "median": value, "min": value, "max": value})
    return rows


def write_lesions_csv(lesions: list[LesionResult], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([f.name for f in fields(LesionResult)])
    for r in lesions:
        writer.writerow([_fmt(v) for v in asdict(r).values()])
    return write_text_atomic(buffer.getvalue(), path)


def write_summary_csv(results: list[CaseResult], path: str | Path, pooled_auc: dict[str, float] | None = None,
                      lesions: list[LesionResult] | None = None) -> Path:
    """summarise() rows, plus an ``auc_pooled`` row per label (one value over all cases' pixels) when given,
    plus the lesion label's ``lesion_*`` rows (see ``_lesion_summary_rows``) when ``lesions`` holds any."""
    buffer = io.StringIO()
    rows = summarise(results)
    for name, auc in (pooled_auc or {}).items():
        n = sum(1 for r in results if r.name == name)
        rows.append({"label": name, "metric": "auc_pooled", "n": n, "n_not_finite": 0, "mean": auc, "sd": 0.0,
                     "median": auc, "min": auc, "max": auc})
    rows += _lesion_summary_rows(lesions or [])
    writer = csv.DictWriter(buffer, fieldnames=["label", "metric", "n", "n_not_finite", "mean", "sd", "median",
                                                "min", "max"])
    writer.writeheader()
    writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)
    return write_text_atomic(buffer.getvalue(), path)


def format_table(results: list[CaseResult], lesions: list[LesionResult] | None = None) -> str:
    """Per-case rows, then per label: mean ± sd and median of the main metrics, and the worst cases;
    then, when ``lesions`` holds any, the lesion table (see ``format_lesion_table``)."""
    has_auc = any(not math.isnan(r.auc) for r in results)
    unit = results[0].unit if results else "mm"
    has_ece = any(not math.isnan(r.ece) for r in results)
    head = f"{'case':<28} {'label':<12} {'Dice':>7} {'IoU':>7} {'Sens':>7} {'Spec':>7} {'HD95':>8}"
    lines = [head + (f" {'AUC':>7}" if has_auc else "") + (f" {'ECE':>7}" if has_ece else "")]
    for r in results:
        line = (f"{r.case:<28} {r.name:<12} {r.dice:7.4f} {r.iou:7.4f} {r.recall:7.4f} {r.specificity:7.4f} "
                f"{r.hd95:8.2f}")
        lines.append(line + (f" {r.auc:7.4f}" if has_auc else "") + (f" {r.ece:7.4f}" if has_ece else ""))
    summary = {(row["label"], row["metric"]): row for row in summarise(results)}
    shown = (["dice", "iou", "recall", "specificity", "accuracy", "hd95", "assd", "surface_dice"]
             + (["auc"] if has_auc else []) + (["ece"] if has_ece else []))
    for name, worst in worst_cases(results).items():
        lines.append("")
        lines.append(f"{name}: {sum(1 for r in results if r.name == name)} cases (distances in {unit})")
        for metric in shown:
            row = summary.get((name, metric))
            if row:
                extra = f"  ({row['n_not_finite']} not finite)" if row["n_not_finite"] else ""
                lines.append(f"  {metric:<14} mean {row['mean']:.4f} ± {row['sd']:.4f}   median {row['median']:.4f}   "
                             f"min {row['min']:.4f}   max {row['max']:.4f}{extra}")
        lines.append("  worst Dice: " + ", ".join(f"{r.case} {r.dice:.4f}" for r in worst))
    if lesions:
        lines += ["", format_lesion_table(lesions)]
    return "\n".join(lines)


def format_lesion_table(lesions: list[LesionResult]) -> str:
    """Per case: Dice, lesion counts, TP/FP/FN, precision, recall, F1; per label: the global Dice and the
    detection scores of the summed counts."""
    def score(value: float) -> str:
        return f"{'nan':>7}" if math.isnan(value) else f"{value:7.4f}"

    lines = []
    for name, pooled in pool_lesions(lesions).items():
        of_label = [r for r in lesions if r.name == name]
        first = of_label[0]
        match = "any overlap" if first.min_iou == 0 else f"overlap with IoU >= {first.min_iou:g}"
        size = (f"components under {first.min_volume_ml:g} mL ignored" if first.min_volume_ml
                else "every component counts")
        lines.append(f"{name} (label {first.label}) lesions: {first.connectivity}-connected components, detected by "
                     f"{match}, {size}")
        lines.append(f"{'case':<28} {'Dice':>7} {'ref':>5} {'pred':>5} {'TP':>5} {'FP':>5} {'FN':>5} "
                     f"{'Prec':>7} {'Recall':>7} {'F1':>7}")
        for r in of_label:
            lines.append(f"{r.case:<28} {r.dice:7.4f} {r.ref_lesions:5d} {r.pred_lesions:5d} {r.tp:5d} {r.fp:5d} "
                         f"{r.fn:5d} {score(r.precision)} {score(r.recall)} {score(r.f1)}")
        dices = [r.dice for r in of_label]
        lines.append(f"  Dice per case: mean {np.mean(dices):.4f}   Dice global (all {pooled['cases']} cases' voxels "
                     f"pooled): {pooled['dice_global']:.4f}")
        detection = ", ".join(f"{key} {'undefined' if math.isnan(pooled[key]) else format(pooled[key], '.4f')}"
                              for key in ("precision", "recall", "f1"))
        lines.append(f"  detection over all cases: {pooled['ref_lesions']} reference lesions, {pooled['pred_lesions']} "
                     f"predicted; TP {pooled['tp']}, FP {pooled['fp']}, FN {pooled['fn']}; {detection}")
    return "\n".join(lines)


def write_outputs(results: list[CaseResult], out_dir: str | Path, pooled_auc: dict[str, float] | None = None,
                  lesions: list[LesionResult] | None = None) -> dict[str, Path]:
    """per_case.csv and summary.csv; lesions.csv too when ``lesions`` holds any."""
    out_dir = Path(out_dir)
    written = {"per_case": write_csv(results, out_dir / "per_case.csv"),
               "summary": write_summary_csv(results, out_dir / "summary.csv", pooled_auc, lesions)}
    if lesions:
        written["lesions"] = write_lesions_csv(lesions, out_dir / "lesions.csv")
    return written
