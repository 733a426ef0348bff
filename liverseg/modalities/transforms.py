"""MONAI dictionary transforms: loading a case onto the network grid, and training augmentation.

The geometry math lives in ``grid.road``; ``LoadCased`` is the thin keyed wrapper around it that
training and validation use, so a training volume and an inference volume go through the same functions.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai.networks.layers.simplelayers import gaussian_1d, separable_filtering
from monai.transforms import (FgBgToIndicesd, MapTransform, Rand2DElasticd, Rand3DElasticd, RandAdjustContrastd,
                              RandAffined, RandCropByPosNegLabeld, RandFlipd, RandGaussianNoised,
                              RandomizableTransform, RandScaleIntensityd, RandScaleIntensityFixedMeand,
                              RandShiftIntensityd, RandSimulateLowResolutiond, SpatialPadd)

from ..config import AugmentConfig, ExperimentConfig
from ..errors import GeometryError, InputError
from ..io import read_volume
from ..io.labels import read_label
from ..grid.road import labels_to_network_grid, remap_labels, to_network_grid


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
        image, record = to_network_grid(image_volume, cfg.preprocess)
        out: dict[str, Any] = {"id": data["id"], "image": torch.from_numpy(image)[None]}
        if data.get("label"):
            # NIfTI/NRRD/MHA maps, DICOM mask folders, PNG slices or DICOM SEG, placed on the image's grid
            # (exactly, or refused with both grids printed)
            try:
                label_volume = read_label(data["label"], image_volume, data.get("label_format", "volume"),
                                          data.get("structures"))
            except GeometryError as exc:
                raise GeometryError(f"case {data['id']}: {exc}") from None
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
            label = labels_to_network_grid(label_array, record)
            out["label"] = torch.from_numpy(label)[None].long()
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
        CompactCased(),
    ]


class CompactCased(MapTransform):
    """Smaller cached cases: label as uint8 and the foreground/background voxel indices as int32
    tensors (MONAI makes int64), plain tensors throughout (no MetaTensor)."""

    def __init__(self) -> None:
        super().__init__(keys=("image", "label", "label_fg", "label_bg"))

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = {"id": data["id"], "image": torch.as_tensor(data["image"]).as_subclass(torch.Tensor).float()}
        if "label" in data:
            out["label"] = torch.as_tensor(data["label"]).as_subclass(torch.Tensor).to(torch.uint8)
        for key in ("label_fg", "label_bg"):
            if key in data:
                out[key] = torch.as_tensor(np.asarray(data[key]).astype(np.int32))
        return out


class CopyPatchd(MapTransform):
    """Plain, contiguous copies of the cropped patch, so nothing later can write into a cached volume
    (crops are views of it) and no MetaTensor bookkeeping rides along."""

    def __init__(self, keys=("image", "label")) -> None:
        super().__init__(keys=keys)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(data):
            out[key] = torch.as_tensor(data[key]).clone()
        return out


class RandGaussianBlurd(RandomizableTransform, MapTransform):
    """Gaussian blur with sigma drawn from ``sigma`` (voxels), edges replicated: MONAI's
    ``RandGaussianSmoothd`` pads with zeros, which darkens a patch's border (-10% mean on a 24^3
    patch at sigma 1); nnU-Net's blur (scipy) does not."""

    def __init__(self, keys, sigma: tuple[float, float], prob: float) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.sigma_range = sigma
        self.sigma = sigma[0]

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.sigma = float(self.R.uniform(*self.sigma_range))

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.randomize()
        out = dict(data)
        if not self._do_transform:
            return out
        kernel = gaussian_1d(torch.tensor(self.sigma), truncated=3.0, normalize=True)
        for key in self.key_iterator(out):
            image = torch.as_tensor(out[key]).as_subclass(torch.Tensor).float()
            out[key] = separable_filtering(image[None], [kernel] * (image.ndim - 1), mode="replicate")[0]
        return out


def patch_sampling(cfg: ExperimentConfig) -> list:
    """Random part, first: foreground/background patch sampling (``train.pos_fraction``) of the training
    patch (for 2D models, a slab whose slices become the input channels)."""
    steps: list = [
        RandCropByPosNegLabeld(keys=("image", "label"), label_key="label", spatial_size=crop_size(cfg),
                               pos=cfg.train.pos_fraction, neg=1.0 - cfg.train.pos_fraction, num_samples=1,
                               fg_indices_key="label_fg", bg_indices_key="label_bg", allow_smaller=False),
        CopyPatchd(),
    ]
    if cfg.model.spatial_dims == 2:
        steps.append(SlabTo2Dd())
    return steps


def augmentation(augment: AugmentConfig, spatial_dims: int) -> list:
    """Random part, after ``patch_sampling``: nnU-Net's augmentation set for ``spatial_dims``-D patches,
    in its order: rotation and scaling, elastic deformation, Gaussian noise, Gaussian blur, brightness,
    contrast, low-resolution simulation, gamma, mirroring. Each step has its probability in
    ``train.augment`` and is left out when that is 0."""
    rotate = math.radians(augment.rotate_deg)
    steps: list = []
    if augment.affine_prob > 0:
        # 3D: rotation about all three axes; 2D: in-plane rotation only.
        steps.append(RandAffined(keys=("image", "label"), prob=augment.affine_prob,
                                 rotate_range=(rotate,) * (3 if spatial_dims == 3 else 1),
                                 scale_range=(augment.scale,) * spatial_dims,
                                 mode=("bilinear", "nearest"), padding_mode="border"))
    if augment.elastic_prob > 0:
        if spatial_dims == 3:
            steps.append(Rand3DElasticd(keys=("image", "label"), prob=augment.elastic_prob,
                                        sigma_range=tuple(augment.elastic_sigma),
                                        magnitude_range=tuple(augment.elastic_magnitude),
                                        mode=("bilinear", "nearest"), padding_mode="border"))
        else:  # 2D: a B-spline control grid 4 sigma apart; magnitude in control-grid units (/100)
            steps.append(Rand2DElasticd(keys=("image", "label"), prob=augment.elastic_prob,
                                        spacing=(4 * augment.elastic_sigma[1],) * 2,
                                        magnitude_range=tuple(m / 100 for m in augment.elastic_magnitude),
                                        mode=("bilinear", "nearest"), padding_mode="border"))
    if augment.noise_prob > 0 and augment.noise_std > 0:
        steps.append(RandGaussianNoised(keys="image", prob=augment.noise_prob, std=augment.noise_std))
    if augment.blur_prob > 0:
        sigma = tuple(augment.blur_sigma)
        steps.append(RandGaussianBlurd(keys="image", prob=augment.blur_prob, sigma=sigma))
    if augment.intensity_prob > 0:  # brightness: multiplicative and additive
        steps += [RandScaleIntensityd(keys="image", factors=augment.brightness, prob=augment.intensity_prob),
                  RandShiftIntensityd(keys="image", offsets=augment.shift, prob=augment.intensity_prob)]
    if augment.contrast_prob > 0:  # contrast about the mean, clipped back to the patch's range (nnU-Net)
        steps.append(RandScaleIntensityFixedMeand(keys="image", factors=augment.contrast, preserve_range=True,
                                                  prob=augment.contrast_prob))
    if augment.lowres_prob > 0:
        steps.append(RandSimulateLowResolutiond(keys="image", prob=augment.lowres_prob,
                                                zoom_range=tuple(augment.lowres_zoom),
                                                upsample_mode="trilinear" if spatial_dims == 3 else "bilinear"))
    if augment.gamma_prob > 0:
        steps.append(RandAdjustContrastd(keys="image", prob=augment.gamma_prob, gamma=tuple(augment.gamma),
                                         retain_stats=True))
    if augment.flip_prob > 0:
        steps += [RandFlipd(keys=("image", "label"), prob=augment.flip_prob, spatial_axis=axis)
                  for axis in range(spatial_dims)]
    return steps


__all__ = ["LoadCased", "cached_transforms", "patch_sampling", "augmentation", "CopyPatchd",
           "CompactCased"]
