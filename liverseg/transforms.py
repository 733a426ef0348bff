"""MONAI dictionary transforms: loading a case onto the network grid, and training augmentation.

The geometry math lives in ``preprocess.py``; ``LoadCased`` is the thin keyed wrapper around it
that training uses, so a training volume and an inference volume go through the same functions.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from monai.transforms import (FgBgToIndicesd, MapTransform, RandAffined, RandCropByPosNegLabeld,
                              RandFlipd, RandGaussianNoised, RandScaleIntensityd, RandShiftIntensityd,
                              SpatialPadd)

from .config import ExperimentConfig
from .errors import GeometryError, InputError
from .io import read_volume
from .preprocess import preprocess_image, preprocess_label, remap_labels


class LoadCased(MapTransform):
    """Read a case's image (and label) file and put it on the network grid.

    Input dict: ``{"id", "image": path, "label": path or None}``. Output: ``image`` (1, X, Y, Z)
    float32 normalised, ``label`` (1, X, Y, Z) int64 class indices, ``id``.
    """

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(keys=("image", "label"), allow_missing_keys=True)
        self.cfg = cfg

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        image_volume = read_volume(data["image"])
        image, record = preprocess_image(image_volume, cfg.preprocess.spacing_mm, cfg.preprocess.hu_window)
        out: dict[str, Any] = {"id": data["id"], "image": image[None]}
        if data.get("label"):
            label_volume = read_volume(data["label"])
            if not image_volume.same_grid(label_volume, atol_mm=1e-3):
                raise GeometryError(
                    f"case {data['id']}: label {data['label']} (shape {label_volume.shape}, spacing "
                    f"{np.round(label_volume.spacing_mm, 4).tolist()}, origin "
                    f"{np.round(label_volume.affine_ras[:3, 3], 3).tolist()}) is not on the image grid "
                    f"(shape {image_volume.shape}, spacing {np.round(image_volume.spacing_mm, 4).tolist()}, "
                    f"origin {np.round(image_volume.affine_ras[:3, 3], 3).tolist()}); resample the label "
                    "onto the image grid with nearest-neighbour interpolation")
            try:
                label_array = remap_labels(label_volume.array, cfg.data.label_remap)
            except ValueError as exc:
                raise InputError(f"case {data['id']}: {data['label']}: {exc}") from None
            n_classes = len(cfg.data.labels)
            bad = sorted(int(v) for v in np.unique(label_array) if v < 0 or v >= n_classes)
            if bad:
                raise InputError(
                    f"case {data['id']}: {data['label']} holds label value(s) {bad} but data.labels has "
                    f"{n_classes} classes {list(cfg.data.labels)}; map them with data.label_remap, "
                    "e.g. --set 'data.label_remap={2: 1}'")
            label = preprocess_label(label_volume.with_array(label_array), record)
            out["label"] = label[None].long()
        return out


def crop_size(cfg: ExperimentConfig) -> tuple[int, int, int]:
    """The 3D block cut from a volume: the patch itself, or for 2D models an in-plane patch
    ``slices_2d`` axial slices deep (the slab becomes the 2D input's channels)."""
    if cfg.model.spatial_dims == 3:
        return tuple(cfg.train.patch_size)  # type: ignore[return-value]
    return (*cfg.train.patch_size, cfg.model.slices_2d)  # type: ignore[return-value]


class SlabTo2Dd(MapTransform):
    """(1, X, Y, k) image slab -> (k, X, Y) channels; label -> its centre slice (1, X, Y)."""

    def __init__(self) -> None:
        super().__init__(keys=("image", "label"))

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        image, label = data["image"], data["label"]
        out["image"] = image[0].permute(2, 0, 1).contiguous()
        out["label"] = label[..., label.shape[-1] // 2].contiguous()
        return out


def cached_transforms(cfg: ExperimentConfig) -> list:
    """Deterministic part, computed once per case (and cached by ``CacheDataset``)."""
    return [
        LoadCased(cfg),
        SpatialPadd(keys=("image", "label"), spatial_size=crop_size(cfg)),
        FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg"),
    ]


def augmentation(cfg: ExperimentConfig) -> list:
    """Random part: foreground/background patch sampling, then spatial and intensity augmentation."""
    t = cfg.train
    dims = cfg.model.spatial_dims
    rotate = math.radians(t.aug_rotate_deg)
    steps: list = [
        RandCropByPosNegLabeld(keys=("image", "label"), label_key="label", spatial_size=crop_size(cfg),
                               pos=t.pos_fraction, neg=1.0 - t.pos_fraction, num_samples=1,
                               fg_indices_key="label_fg", bg_indices_key="label_bg", allow_smaller=False),
    ]
    if dims == 2:
        steps.append(SlabTo2Dd())
    if t.aug_affine_prob > 0:
        # 3D: rotation about all three axes; 2D: in-plane rotation only.
        steps.append(RandAffined(keys=("image", "label"), prob=t.aug_affine_prob,
                                 rotate_range=(rotate,) * (3 if dims == 3 else 1), scale_range=(t.aug_scale,) * dims,
                                 mode=("bilinear", "nearest"), padding_mode="border"))
    if t.aug_flip_prob > 0:
        steps += [RandFlipd(keys=("image", "label"), prob=t.aug_flip_prob, spatial_axis=axis) for axis in range(dims)]
    if t.aug_intensity_prob > 0:
        steps += [RandScaleIntensityd(keys="image", factors=0.1, prob=t.aug_intensity_prob),
                  RandShiftIntensityd(keys="image", offsets=0.05, prob=t.aug_intensity_prob)]
    if t.aug_noise_std > 0:
        steps.append(RandGaussianNoised(keys="image", prob=0.2, std=t.aug_noise_std))
    return steps


__all__ = ["LoadCased", "cached_transforms", "augmentation", "remap_labels"]
