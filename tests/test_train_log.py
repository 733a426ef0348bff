"""metrics.csv, the training-curve PNG, optional TensorBoard and the end-of-run summary."""
from __future__ import annotations

import importlib.util

import numpy as np
from PIL import Image

from liverseg.training.log import TensorBoard, metric_columns, read_metrics, summary, write_curves, write_metrics

LABELS = ("background", "liver", "tumour")


def _rows(n: int = 6) -> list[dict]:
    rows = []
    for epoch in range(1, n + 1):
        row = {"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0 / epoch, "lr": 1e-3 * (1 - epoch / (n + 1)),
               "epoch_seconds": 2.5, "elapsed_minutes": epoch * 2.5 / 60}
        if epoch % 2 == 0:
            row.update({"val_dice_liver": 0.5 + 0.03 * epoch, "val_dice_tumour": 0.1 * epoch / 2,
                        "val_mean_dice": 0.4})
        rows.append(row)
    return rows


def test_metrics_csv_has_one_row_per_epoch_and_every_label(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics(path, _rows(), LABELS)
    back = read_metrics(path)
    assert list(back[0].keys()) == metric_columns(LABELS)
    assert "val_dice_tumour" in back[0] and "lr" in back[0] and "epoch_seconds" in back[0]
    assert [r["epoch"] for r in back] == [str(e) for e in range(1, 7)]
    assert back[0]["val_dice_liver"] == "" and float(back[1]["val_dice_liver"]) == 0.56
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_curves_png_draws_loss_and_dice(tmp_path):
    path = tmp_path / "training_curves.png"
    write_curves(path, _rows(), LABELS)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (620, 900, 3)
    loss_panel, dice_panel = image[30:290, 60:440], image[30:290, 500:880]
    blue, red = np.array([31, 119, 180]), np.array([214, 39, 40])
    assert (np.abs(loss_panel.astype(int) - blue).sum(-1) == 0).sum() > 100  # the loss line
    assert (np.abs(dice_panel.astype(int) - red).sum(-1) == 0).sum() > 20  # tumour Dice, 2nd series
    write_curves(path, [], LABELS)  # an empty run still gives a picture
    assert Image.open(path).size == (900, 620)


def test_summary_fits_one_screen_and_names_the_best_epoch(tmp_path):
    text = summary(tmp_path, _rows(), LABELS, best_epoch=6, best_metric=0.4, seconds=90.0, iterations=60,
                   patches=120, world=2)
    lines = text.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 120
    assert "best validation mean Dice 0.4000 at epoch 6" in text and "2 processes" in text
    assert "liver 0.6800" in text and "tumour 0.3000" in text


def test_tensorboard_is_optional(tmp_path):
    board = TensorBoard(tmp_path)
    board.log_row(_rows()[1])
    board.close()
    installed = importlib.util.find_spec("tensorboard") is not None
    assert (tmp_path / "tensorboard").is_dir() == installed
