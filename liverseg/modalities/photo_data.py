"""2D photographs (``data.modality: photo``): loading and training patches.

* Input: each image's channels (``photo.color``: rgb, green or gray; optionally CLAHE, ``photo.clahe``)
  standardised to zero mean and unit variance inside its field-of-view mask (without one: the lit
  region when ``photo.fov_threshold`` > 0, else the whole image); pixels outside the field of view are
  set to 0 so the network never learns from the black border. With ``photo.fov_diameter`` each
  photograph is first resized so its field of view is that many pixels wide.
* Training: random patches (``train.patch_size``) centred on foreground with probability
  ``train.pos_fraction``, else anywhere inside the field of view; rotation + scaling, horizontal and
  vertical flips, brightness/contrast (colour jitter) per channel and Gaussian noise. Every patch is a
  pure function of ``(train.seed, draw index)``, so runs are reproducible.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..config import PHOTO_CHANNELS, ExperimentConfig
from ..errors import InputError
from ..io.photos import check_same_size, read_fov, read_mask, read_photo
from .sampling import StepSampler, sample_seed


# ----------------------------------------------------------------------------- loading

def select_channels(rgb: np.ndarray, color: str, clahe: float = 0.0) -> np.ndarray:
    """(H, W, 3) uint8 -> (C, H, W) float32 in [0, 1] for ``photo.color`` (and ``photo.clahe``)."""
    pixels = rgb.astype(np.float32) / 255.0
    if color == "rgb":
        channels = pixels.transpose(2, 0, 1)
    elif color == "green":
        channels = pixels[None, :, :, 1]
    elif color == "gray":
        channels = (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[None]
    else:
        raise InputError(f"photo.color={color!r}: use {', '.join(PHOTO_CHANNELS)}")
    if clahe > 0:
        from skimage.exposure import equalize_adapthist

        channels = np.stack([equalize_adapthist(c, clip_limit=clahe) for c in channels]).astype(np.float32)
    return np.ascontiguousarray(channels)


def standardize(channels: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per channel inside ``fov``; 0 outside it."""
    inside = channels[:, fov]
    mean = inside.mean(axis=1)[:, None, None]
    std = inside.std(axis=1)[:, None, None]
    out = (channels - mean) / np.maximum(std, 1e-6)
    out[:, ~fov] = 0.0
    return out.astype(np.float32)


def automatic_fov(rgb: np.ndarray, threshold: int) -> np.ndarray:
    """Pixels brighter than ``threshold`` in any channel, opened (2 px) and hole-filled: the lit disc of a
    fundus photograph (agrees with CHASE_DB1's masks on 99.8% of pixels at threshold 10)."""
    from scipy import ndimage

    lit = rgb.max(axis=2) > threshold
    return ndimage.binary_fill_holes(ndimage.binary_opening(lit, iterations=2))


def load_photo(image_path: str | Path, fov_path: str | Path | None, color: str, clahe: float = 0.0,
               fov_threshold: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb uint8 (H, W, 3), network input float32 (C, H, W), fov bool (H, W)).

    Field of view: the mask at ``fov_path``; without one, ``automatic_fov`` when ``fov_threshold`` > 0
    (``photo.fov_threshold``), else the whole image.
    """
    rgb = read_photo(image_path)
    if fov_path:
        fov = read_fov(fov_path, rgb, image_path)
        if not fov.any():
            raise InputError(f"{fov_path}: field-of-view mask is empty; it must mark the image's valid pixels")
    elif fov_threshold > 0:
        fov = automatic_fov(rgb, fov_threshold)
        if not fov.any():
            raise InputError(f"{image_path}: no pixel is brighter than photo.fov_threshold="
                             f"{fov_threshold}; give a field-of-view mask or lower the threshold (0 = whole image)")
    else:
        fov = np.ones(rgb.shape[:2], dtype=bool)
    return rgb, standardize(select_channels(rgb, color, clahe), fov), fov


# ----------------------------------------------------------------------------- resolution normalisation

# photo.fov_diameter: photographs whose field of view is within this fraction of the target width
# are not resampled.
NATIVE_TOLERANCE = 0.02


def fov_width(fov: np.ndarray) -> int:
    """Width in pixels of the field of view: the number of columns it touches."""
    return int(fov.any(axis=0).sum())


def network_size(fov: np.ndarray, fov_diameter: int) -> tuple[int, int]:
    """(H, W) the network sees: the photograph scaled so its field of view is ``fov_diameter`` pixels wide
    (``photo.fov_diameter``; 0 = native size). Within 2% of that width the photograph is used as
    it is: resampling would only blur it (CHASE_DB1's fields of view are 896-924 px wide)."""
    height, width = fov.shape
    if fov_diameter <= 0:
        return height, width
    factor = fov_diameter / max(fov_width(fov), 1)
    if abs(factor - 1.0) <= NATIVE_TOLERANCE:
        return height, width
    return max(int(round(height * factor)), 1), max(int(round(width * factor)), 1)


def resize_channels(channels: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float -> (C, *size), bilinear; anti-aliased when shrinking so thin vessels fade rather than
    alias into broken dashes."""
    tensor = torch.as_tensor(channels, dtype=torch.float32)
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    shrinking = size[0] < tensor.shape[-2] or size[1] < tensor.shape[-1]
    return F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False, antialias=shrinking)[0]


def to_network_resolution(image: np.ndarray, fov: np.ndarray, label: np.ndarray | None,
                          fov_diameter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Image (C, H, W), fov (H, W) and label (H, W) class indices at the network's resolution. Masks are
    resized as per-class fractions and take the class covering most of each new pixel (the FOV at 1/2),
    so a shrunken vessel keeps the pixels it mostly fills."""
    size = network_size(fov, fov_diameter)
    if size == fov.shape:
        return image, fov, label
    image = resize_channels(image, size).numpy()
    fov = resize_channels(fov[None].astype(np.float32), size)[0].numpy() >= 0.5
    image[:, ~fov] = 0.0
    if label is not None:
        classes = int(label.max()) + 1
        fractions = resize_channels(np.stack([label == k for k in range(classes)]).astype(np.float32), size)
        label = fractions.argmax(0).numpy().astype(label.dtype)
    return image, fov, label


def load_photo_case(item: dict, cfg: ExperimentConfig) -> dict:
    """A manifest item {id, image, label, fov} -> tensors at the network's resolution: image (C, H, W),
    label (1, H, W), fov (H, W)."""
    p = cfg.photo
    rgb, image, fov = load_photo(item["image"], item.get("fov"), p.color, p.clahe, p.fov_threshold)
    label = None
    if item.get("label"):
        label = read_mask(item["label"], len(cfg.data.labels))
        check_same_size(rgb, label, item["image"], item["label"])
    image, fov, label = to_network_resolution(image, fov, label, p.fov_diameter)
    case = {"id": item["id"], "image": torch.from_numpy(np.ascontiguousarray(image)), "fov": torch.from_numpy(fov)}
    if label is not None:
        case["label"] = torch.from_numpy(label.astype(np.int64))[None]
    return case


# ----------------------------------------------------------------------------- training patches

class PhotoPatches(Dataset):
    """Random augmented patches from photographs held in memory; item ``i`` is a function of (seed, i)."""

    def __init__(self, cases: list[dict], cfg: ExperimentConfig, seed: int):
        self.cases = cases
        self.cfg = cfg
        self.seed = seed
        # Flat pixel indices to centre patches on: foreground, and anywhere in the field of view (int32:
        # a quarter of torch.nonzero's (N, 2) int64, which for 20 CHASE images was 214 MB).
        self.foreground = [np.flatnonzero(c["label"][0].numpy() > 0).astype(np.int32) for c in cases]
        self.inside = [np.flatnonzero(c["fov"].numpy()).astype(np.int32) for c in cases]

    def __len__(self) -> int:
        return len(self.cases)  # nominal: any index >= 0 is a valid draw

    def __getitem__(self, index: int) -> dict:
        t = self.cfg.train
        rng = np.random.default_rng(sample_seed(self.seed, index))
        case_index = int(rng.integers(len(self.cases)))
        case = self.cases[case_index]
        pool = self.foreground[case_index]
        if len(pool) == 0 or rng.random() >= t.pos_fraction:
            pool = self.inside[case_index]
        row, col = divmod(int(pool[int(rng.integers(len(pool)))]), int(case["fov"].shape[1]))

        angle = (math.radians(rng.uniform(-t.augment.rotate_deg, t.augment.rotate_deg))
                 if rng.random() < t.augment.affine_prob else 0.0)
        scale = rng.uniform(1 - t.augment.scale, 1 + t.augment.scale) if rng.random() < t.augment.affine_prob else 1.0
        flips = [rng.random() < t.augment.flip_prob, rng.random() < t.augment.flip_prob]
        image, label = crop_transformed(case["image"], case["label"], (row, col), tuple(t.patch_size), angle, scale)
        for axis, flip in zip((-2, -1), flips):
            if flip:
                image, label = image.flip(axis), label.flip(axis)
        if rng.random() < t.augment.intensity_prob:
            channels = image.shape[0]
            contrast = torch.from_numpy(rng.uniform(0.75, 1.25, size=(channels, 1, 1)).astype(np.float32))
            brightness = torch.from_numpy(rng.normal(0.0, 0.2, size=(channels, 1, 1)).astype(np.float32))
            image = image * contrast + brightness
        if t.augment.noise_std > 0:
            noise = rng.normal(0.0, t.augment.noise_std, size=image.shape).astype(np.float32)
            image = image + torch.from_numpy(noise)
        return {"image": image.contiguous(), "label": label.contiguous()}


def crop_transformed(image: torch.Tensor, label: torch.Tensor, centre: tuple[int, int], size: tuple[int, int],
                     angle: float = 0.0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (C, h, w) patch centred on ``centre`` (row, col), rotated by ``angle`` and zoomed by ``scale``.

    Only the region the patch can reach is resampled (bilinear for the image, nearest for the label);
    pixels beyond the image are 0 in both.
    """
    h, w = size
    reach = int(math.ceil(math.hypot(h, w) / 2 / min(scale, 1.0))) + 2
    row, col = centre
    top, left = row - reach, col - reach
    region_image = _crop_padded(image, top, left, 2 * reach + 1)
    region_label = _crop_padded(label.float(), top, left, 2 * reach + 1)
    if angle == 0.0 and scale == 1.0:
        r0, c0 = reach - h // 2, reach - w // 2
        return (region_image[:, r0:r0 + h, c0:c0 + w],
                region_label[:, r0:r0 + h, c0:c0 + w].long())
    side = 2 * reach + 1
    # Output pixel (i, j) samples the region at centre + R(angle) (i - h//2, j - w//2) / scale, in pixels;
    # grid_sample with align_corners=True maps pixel p to p / (side - 1) * 2 - 1.
    rows = torch.arange(h, dtype=torch.float32)[:, None] - h // 2
    cols = torch.arange(w, dtype=torch.float32)[None, :] - w // 2
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    source_rows = reach + cos * rows - sin * cols
    source_cols = reach + sin * rows + cos * cols
    grid = torch.stack([source_cols, source_rows], dim=-1)[None] / (side - 1) * 2 - 1
    out_image = F.grid_sample(region_image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    out_label = F.grid_sample(region_label[None], grid, mode="nearest", padding_mode="zeros", align_corners=True)[0]
    return out_image, out_label.long()


def _crop_padded(array: torch.Tensor, top: int, left: int, side: int) -> torch.Tensor:
    """array[:, top:top+side, left:left+side] with zeros where the window leaves the image."""
    channels, height, width = array.shape
    out = array.new_zeros((channels, side, side))
    r0, r1 = max(top, 0), min(top + side, height)
    c0, c1 = max(left, 0), min(left + side, width)
    if r1 > r0 and c1 > c0:
        out[:, r0 - top:r1 - top, c0 - left:c1 - left] = array[:, r0:r1, c0:c1]
    return out


def photo_train_loader(cfg: ExperimentConfig, items: list[dict], workers: int, seed: int, *, rank: int = 0,
                       world: int = 1) -> DataLoader:
    """Patches for global sample indices chosen by ``sampling.StepSampler`` (the loop sets each epoch's steps)."""
    cases = [load_photo_case(item, cfg) for item in items]
    return DataLoader(PhotoPatches(cases, cfg, seed), batch_size=cfg.train.batch_size,
                      sampler=StepSampler(cfg.train.batch_size, rank, world), num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def photo_validation_cases(cfg: ExperimentConfig, items: list[dict]) -> list[dict]:
    return [load_photo_case(item, cfg) for item in items]


__all__ = ["select_channels", "standardize", "automatic_fov", "load_photo", "fov_width", "network_size",
           "resize_channels", "to_network_resolution", "load_photo_case", "PhotoPatches", "crop_transformed",
           "photo_train_loader", "photo_validation_cases"]
