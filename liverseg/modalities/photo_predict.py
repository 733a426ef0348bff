"""2D photographs (``data.modality: photo``): prediction.

Gaussian sliding window over the full image at the network's resolution (``photo.fov_diameter``, else
native); writes the mask, a 16-bit probability map per foreground class, and contours of prediction (and
truth when known) drawn on the photograph.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import ExperimentConfig
from ..engine.tiling import sliding_window, softmax_predictor
from ..io.photos import check_same_size, probability_filename, read_mask
from ..reports.case_report import draw_contours, save_png
from .photo_data import load_photo, resize_channels, to_network_resolution

# Overlay colours (RGB): prediction contour, reference contour.
PREDICTION_COLOR = (0, 255, 0)
REFERENCE_COLOR = (255, 0, 255)


def photo_probabilities(model: torch.nn.Module, image: torch.Tensor | np.ndarray, cfg: ExperimentConfig,
                        device: torch.device, progress: bool = False) -> np.ndarray:
    """Class probabilities (K, H, W) float32 for a standardised photograph (C, H, W); flip TTA per
    ``infer.tta_flip_axes``."""
    predictor = softmax_predictor(model, device, cfg.infer.tta_flip_axes)
    return sliding_window(image, predictor, cfg.infer.roi_size, overlap=cfg.infer.overlap,
                          batch_size=cfg.infer.sw_batch_size, blend=cfg.infer.blend, progress=progress)


def read_photo_input(case, cfg: ExperimentConfig) -> dict:
    """One photograph (a ``manifest.Case``: image, optional field-of-view mask) read and made the network's
    input: ``{"rgb": (H, W, 3) uint8, "image": (C, H, W) standardised, "fov": (H, W) bool}``."""
    p = cfg.photo
    rgb, image, fov = load_photo(case.image, case.fov, p.color, p.clahe, p.fov_threshold)
    return {"rgb": rgb, "image": image, "fov": fov}


def segment_photo(model: torch.nn.Module, cfg: ExperimentConfig, read: dict,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 (H, W), probabilities float32 (K, H, W)) of a read photograph (``read_photo_input``), on
    its own pixels (with ``photo.fov_diameter`` the network runs on the resized photograph and its
    probabilities are resized back, bilinear).

    Outside the field of view every pixel is background (probability of class 0 set to 1).
    """
    fov = read["fov"]
    network_image, _, _ = to_network_resolution(read["image"], fov, None, cfg.photo.fov_diameter)
    model.eval()
    with torch.inference_mode():
        probabilities = photo_probabilities(model, network_image, cfg, device)
    if probabilities.shape[1:] != fov.shape:
        probabilities = resize_channels(probabilities, fov.shape).clamp_(0.0, 1.0).numpy()
    probabilities[:, ~fov] = 0.0
    probabilities[0, ~fov] = 1.0
    return probabilities.argmax(0).astype(np.uint8), probabilities


def write_photo_outputs(names: tuple[str, ...] | list[str], case, read: dict, labels: np.ndarray,
                        probabilities: np.ndarray, case_dir: str | Path) -> list[Path]:
    """mask.png, probability[_<label>].png and overlay.png of one segmented photograph into ``case_dir``.

    mask.png holds 0/255 for two-class tasks and class indices otherwise; the probability maps are
    16-bit (0..65535) so metrics such as ROC AUC can be computed from them without losing precision.
    The overlay draws the prediction's contours (and the reference's, when the case has a mask).
    """
    case_dir = Path(case_dir)
    rgb = read["rgb"]
    mask = labels * 255 if len(names) == 2 else labels
    written = [save_png(mask.astype(np.uint8), case_dir / "mask.png")]
    for index in range(1, len(names)):
        quantised = np.rint(probabilities[index] * 65535.0).astype(np.uint16)
        written.append(save_png(quantised, case_dir / probability_filename(names, index)))
    overlay = rgb
    if case.label is not None and Path(case.label).is_file():
        reference = read_mask(case.label, len(names))
        check_same_size(rgb, reference, case.image, case.label)
        overlay = draw_contours(overlay, reference > 0, REFERENCE_COLOR)
    overlay = draw_contours(overlay, labels > 0, PREDICTION_COLOR)
    written.append(save_png(overlay, case_dir / "overlay.png"))
    return written


__all__ = ["PREDICTION_COLOR", "REFERENCE_COLOR", "photo_probabilities", "read_photo_input", "segment_photo",
           "write_photo_outputs"]
