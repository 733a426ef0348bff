"""QC pictures of one case: false negatives blue, false positives red, true positives green over the image."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..grid.record import canonical_ornt, to_canonical
from ..reports.case_report import CT_DISPLAY_WINDOW, error_overlay, save_png

__all__ = ["write_photo_qc", "write_volume_qc"]


def write_photo_qc(path: Path, pred: np.ndarray, ref: np.ndarray, background: np.ndarray | None,
                   region: np.ndarray | None) -> Path:
    if background is None:
        background = np.zeros((*ref.shape, 3), dtype=np.uint8)
    if region is not None:
        pred, ref = pred * region, ref * region
    return save_png(error_overlay(background, pred > 0, ref > 0), path)


def write_volume_qc(path: Path, pred: np.ndarray, ref: np.ndarray, affine: np.ndarray, image) -> Path:
    """The axial slice (canonical RAS orientation, radiological display) with the most errors."""
    ornt = canonical_ornt(affine)
    pred_c, ref_c = to_canonical(pred > 0, ornt), to_canonical(ref > 0, ornt)
    errors = np.count_nonzero(pred_c != ref_c, axis=(0, 1))
    k = int(np.argmax(errors)) if errors.any() else int(np.argmax(np.count_nonzero(ref_c, axis=(0, 1))))

    def display(slice_xy: np.ndarray) -> np.ndarray:  # rows anterior -> posterior, columns patient right -> left
        return np.ascontiguousarray(slice_xy.T[::-1, ::-1])

    if image is not None:
        hu = display(to_canonical(image.array, ornt)[:, :, k].astype(np.float32))
        low, high = CT_DISPLAY_WINDOW
        grey = np.clip((hu - low) / (high - low), 0.0, 1.0)
    else:
        grey = display(ref_c[:, :, k]).astype(np.float32) * 0.3
    background = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    return save_png(error_overlay(background, display(pred_c[:, :, k]), display(ref_c[:, :, k])), path)
