"""What a run leaves to read: the metrics CSV (one row per epoch), the training-curve PNG, optional
TensorBoard event files (only when the ``tensorboard`` package is installed) and a one-screen
summary at the end; their names in the run folder are ``run_folder.RUN``'s. Every file is written
atomically; only rank 0 calls these under torchrun.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_path
from ..run_folder import RUN, TRAINING_OUTPUTS, read_metrics

log = logging.getLogger(__name__)

BASE_COLUMNS = ["epoch", "step", "train_loss", "lr", "epoch_seconds", "elapsed_minutes"]


def metric_columns(labels: Sequence[str]) -> list[str]:
    return BASE_COLUMNS + [f"val_dice_{name}" for name in labels[1:]] + ["val_mean_dice"]


def _atomic_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_metrics(path: Path, rows: list[dict], labels: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=metric_columns(labels), restval="", extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_bytes(path, buffer.getvalue().encode())


# ----------------------------------------------------------------------------- curves (Pillow)

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def _panel(draw, box, title: str, series: list[tuple[str, list[tuple[float, float]]]], log_y: bool = False,
           y_range: tuple[float, float] | None = None) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((left + 4, top - 14), title, fill=(0, 0, 0))
    points = [p for _, pts in series for p in pts if math.isfinite(p[1]) and (p[1] > 0 or not log_y)]
    if not points:
        draw.text((left + 10, top + 10), "no data yet", fill=(120, 120, 120))
        return
    xs = [p[0] for p in points]
    ys = [math.log10(p[1]) if log_y else p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def to_px(x: float, y: float) -> tuple[float, float]:
        y = math.log10(y) if log_y else y
        return (left + 8 + (x - x0) / (x1 - x0) * (right - left - 16),
                bottom - 8 - (y - y0) / (y1 - y0) * (bottom - top - 16))

    for value, anchor in ((y1, top + 2), (y0, bottom - 12)):
        draw.text((left - 44, anchor), f"{10 ** value:.3g}" if log_y else f"{value:.3g}", fill=(0, 0, 0))
    draw.text((left, bottom + 4), f"epoch {x0:g}", fill=(0, 0, 0))
    draw.text((right - 60, bottom + 4), f"epoch {x1:g}", fill=(0, 0, 0))
    for index, (name, pts) in enumerate(series):
        colour = _COLOURS[index % len(_COLOURS)]
        pts = [p for p in pts if math.isfinite(p[1]) and (p[1] > 0 or not log_y)]
        pixels = [to_px(x, y) for x, y in pts]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        draw.text((right - 150, top + 4 + 12 * index), name, fill=colour)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def write_curves(path: Path, rows: list[dict], labels: Sequence[str]) -> None:
    """Training loss (log scale), validation Dice per label and learning rate against epoch."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (900, 620), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    epochs = [_number(r["epoch"]) for r in rows]
    loss = [(e, _number(r.get("train_loss"))) for e, r in zip(epochs, rows)]
    lr = [(e, _number(r.get("lr"))) for e, r in zip(epochs, rows)]
    dice = [(f"val Dice {name}", [(e, _number(r.get(f"val_dice_{name}"))) for e, r in zip(epochs, rows)
                                  if r.get(f"val_dice_{name}") not in (None, "")]) for name in labels[1:]]
    _panel(draw, (60, 30, 440, 290), "training loss", [("train loss", loss)], log_y=True)
    _panel(draw, (500, 30, 880, 290), "validation Dice", dice, y_range=(0.0, 1.0))
    _panel(draw, (60, 340, 440, 590), "learning rate", [("lr", lr)], log_y=True)
    best = max(((d, e) for _, pts in dice[:1] for e, d in pts if math.isfinite(d)), default=None)
    text = [f"epochs logged: {len(rows)}"]
    if best:
        text.append(f"best val Dice {labels[1]}: {best[0]:.4f} (epoch {best[1]:g})")
    if rows:
        text.append(f"last train loss: {_number(rows[-1].get('train_loss')):.4f}")
    for i, line in enumerate(text):
        draw.text((500, 350 + 16 * i), line, fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _atomic_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- TensorBoard

class TensorBoard:
    """Scalars to the run's TensorBoard folder when ``tensorboard`` is installed; silent no-op otherwise."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            log.debug("tensorboard not installed: no event files")
            return
        self.writer = SummaryWriter(log_dir=str(run_dir / RUN.tensorboard))

    def log_row(self, row: dict) -> None:
        if self.writer is None:
            return
        step = int(row["step"])
        for key, value in row.items():
            if key not in ("epoch", "step") and value not in (None, "") and math.isfinite(_number(value)):
                self.writer.add_scalar(key, _number(value), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------- summary

def summary(run_dir: Path, rows: list[dict], labels: Sequence[str], *, best_epoch: int, best_metric: float,
            seconds: float, iterations: int, patches: int, world: int, inputs: str = "CT") -> str:
    """A one-screen account of the run; ``inputs`` names what predict takes (CT or PHOTO)."""
    lines = [f"training summary: {run_dir}",
             f"  epochs {len(rows)}, steps {int(_number(rows[-1]['step'])) if rows else 0}"
             f" ({world} process{'es' if world > 1 else ''})"]
    if iterations and seconds > 0:
        lines.append(f"  this session: {iterations} iterations in {seconds / 60:.1f} min "
                     f"({iterations / seconds:.2f} it/s, {patches / seconds:.1f} patches/s incl. validation)")
    if rows:
        first, last = rows[0], rows[-1]
        lines.append(f"  train loss: {_number(first['train_loss']):.4f} (epoch 1) -> "
                     f"{_number(last['train_loss']):.4f} (epoch {last['epoch']}), lr {_number(last['lr']):.2e}")
    validated = [r for r in rows if r.get("val_mean_dice") not in (None, "")]
    if validated:
        last = validated[-1]
        per_label = ", ".join(f"{name} {_number(last.get(f'val_dice_{name}')):.4f}" for name in labels[1:])
        lines.append(f"  last validation (epoch {last['epoch']}): {per_label}")
        lines.append(f"  best validation mean Dice {best_metric:.4f} at epoch {best_epoch} -> {RUN.best}")
    lines.append(f"  files: {', '.join(TRAINING_OUTPUTS)}")
    lines.append(f"  predict: liverseg predict {inputs} -o OUT --model {run_dir}")
    return "\n".join(lines)


__all__ = ["metric_columns", "write_metrics", "read_metrics", "write_curves", "TensorBoard", "summary"]
