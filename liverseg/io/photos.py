"""2D photographs and their masks: PNG, JPEG, TIFF, GIF and BMP read and written with Pillow.

Photographs are (H, W) arrays in row/column order; there is no physical grid, so "same geometry"
means the same height and width. Masks are label images: a two-class task accepts any binary
encoding (0/1, 0/255, 1-bit, a lossy JPEG of a binary mask thresholded at half range); a multi-class
task needs the class indices themselves as pixel values.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GeometryError, InputError

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")


def is_photo_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PHOTO_SUFFIXES


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    if not is_photo_file(path):
        raise InputError(f"{path}: not a photograph format liverseg reads ({', '.join(PHOTO_SUFFIXES)})")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc}); the file "
                         "may be truncated or not what its suffix says") from None
    return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit or float single-channel images scaled to 0..255 by their own range."""
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((array - low) * scale, 0, 255).astype(np.uint8)


def read_photo(path: str | Path) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array (grey images are repeated into three channels, alpha dropped)."""
    path = Path(path)
    image = _open(path)
    if image.mode in ("I", "I;16", "I;16B", "F"):
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_mask(path: str | Path, n_classes: int = 2) -> np.ndarray:
    """An (H, W) uint8 array of class indices 0..n_classes-1."""
    path = Path(path)
    image = _open(path)
    if image.mode in ("RGB", "RGBA", "P", "LA", "1", "L"):
        array = np.asarray(image.convert("L"))
    else:
        array = _to_uint8(np.asarray(image))
    if n_classes == 2:
        # Binary masks come as 0/1, 0/255 or lossy JPEGs of either: threshold at half of their range.
        threshold = 0 if array.max() <= 1 else 127
        return (array > threshold).astype(np.uint8)
    values = np.unique(array)
    bad = values[values >= n_classes]
    if bad.size:
        raise InputError(f"{path}: pixel values {bad[:5].tolist()} are not class indices 0..{n_classes - 1} "
                         f"(data.labels has {n_classes} classes); store each pixel's class index")
    return array.astype(np.uint8)


def check_same_size(image: np.ndarray, other: np.ndarray, image_path: str | Path, other_path: str | Path,
                    what: str = "mask") -> None:
    if image.shape[:2] != other.shape[:2]:
        raise GeometryError(f"{other_path}: {what} is {other.shape[1]}x{other.shape[0]} (WxH) but its image "
                            f"{image_path} is {image.shape[1]}x{image.shape[0]}; they must have the same "
                            "size (resize the mask with nearest-neighbour interpolation)")


def read_probability_png(path: str | Path) -> np.ndarray:
    """A probability map written by ``liverseg predict`` (16-bit PNG, 0..65535) as float64 in [0, 1]."""
    path = Path(path)
    array = np.asarray(_open(path))
    scale = 65535.0 if array.dtype != np.uint8 else 255.0
    return array.astype(np.float64) / scale


def probability_filename(label_names, index: int) -> str:
    """Where ``liverseg predict`` puts a photo's probability map for label ``index`` (and evaluate
    looks for it): ``probability.png`` for two-class tasks, ``probability_<name>.png`` otherwise."""
    return "probability.png" if len(label_names) == 2 else f"probability_{label_names[index]}.png"


def read_fov(path: str | Path, image: np.ndarray, image_path: str | Path) -> np.ndarray:
    """A field-of-view mask (any binary encoding) as bool, checked to match ``image``'s size."""
    fov = read_mask(path, 2).astype(bool)
    check_same_size(image, fov, image_path, path, what="field-of-view mask")
    return fov


__all__ = ["PHOTO_SUFFIXES", "is_photo_file", "read_photo", "read_mask", "check_same_size", "read_probability_png",
           "probability_filename", "read_fov"]
