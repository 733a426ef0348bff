"""Each augmentation, switched on alone at probability 1, changes the patch the way it says; at
probability 0 it is not in the pipeline at all."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from liverseg.config import load_config
from liverseg.modalities.transforms import augmentation, patch_sampling

OFF = {"affine_prob": 0, "flip_prob": 0, "intensity_prob": 0, "noise_prob": 0, "elastic_prob": 0, "blur_prob": 0,
       "contrast_prob": 0, "lowres_prob": 0, "gamma_prob": 0}
N = 24


def _cfg(**augment):
    values = {**OFF, **augment}
    return load_config(None, [f"train.augment.{k}={v}" for k, v in values.items()]
                       + ["train.patch_size=[24, 24, 24]", "model.channels=[4, 8, 16]", "model.strides=[2, 2]"])


def _patch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(N, dtype=np.float32)] * 3, indexing="ij")
    label = ((x - 9) ** 2 / 36 + (y - 12) ** 2 / 49 + (z - 13) ** 2 / 25) <= 1.0
    image = 0.2 + 0.5 * label + 0.1 * np.sin(x / 3.0) + rng.normal(0, 0.02, label.shape)
    return {"image": torch.from_numpy(image.astype(np.float32))[None],
            "label": torch.from_numpy(label.astype(np.uint8))[None]}


def _apply(cfg, patch: dict, expect: str, seed: int = 0) -> dict:
    steps = augmentation(cfg.train.augment, cfg.model.spatial_dims)
    names = [type(s).__name__ for s in steps]
    assert names == ([expect] if isinstance(expect, str) else list(expect)) or set(names) == {expect}
    pipeline = Compose(steps)
    pipeline.set_random_state(seed)
    out = pipeline({k: v.clone() for k, v in patch.items()})
    return {k: torch.as_tensor(v).as_subclass(torch.Tensor) for k, v in out.items()}


def _gradient_energy(image: torch.Tensor) -> float:
    a = image[0].double()
    return float(sum((torch.diff(a, dim=d) ** 2).mean() for d in range(3)))


def test_all_off_leaves_only_the_patch_crop():
    cfg = _cfg()
    assert augmentation(cfg.train.augment, cfg.model.spatial_dims) == []
    assert [type(s).__name__ for s in patch_sampling(cfg)] == ["RandCropByPosNegLabeld", "CopyPatchd"]


def test_rotation_turns_image_and_label_together_and_keeps_labels_integer():
    patch = _patch()
    out = _apply(_cfg(affine_prob=1, rotate_deg=40, scale=0.0), patch, "RandAffined")
    assert not torch.equal(out["label"].float(), patch["label"].float())
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1}
    # a rotation keeps the volume of the (interior) ellipsoid
    assert float(out["label"].float().sum()) == pytest.approx(float(patch["label"].float().sum()), rel=0.15)
    # the image's bright region moved with the label
    inside = out["image"][out["label"].bool()].mean()
    outside = out["image"][~out["label"].bool()].mean()
    assert inside - outside > 0.4


def test_scaling_changes_the_object_size():
    patch = _patch()
    before = float(patch["label"].float().sum())
    sizes = [float(_apply(_cfg(affine_prob=1, rotate_deg=0, scale=0.4), patch, "RandAffined",
                          seed=s)["label"].float().sum()) for s in range(4)]
    assert max(abs(v / before - 1.0) for v in sizes) > 0.1  # zoomed in or out, not just resampled


def test_elastic_deforms_and_keeps_labels_integer():
    patch = _patch()
    out = _apply(_cfg(elastic_prob=1, elastic_sigma=[3, 4], elastic_magnitude=[100, 200]), patch,
                 "Rand3DElasticd")
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1}
    assert int((out["label"] != patch["label"]).sum()) > 50
    assert float((out["image"] - patch["image"]).abs().mean()) > 0.01


def test_mirroring_flips_image_and_label_along_each_axis():
    patch = _patch()
    out = _apply(_cfg(flip_prob=1), patch, "RandFlipd")
    assert torch.equal(out["image"], torch.flip(patch["image"], dims=(1, 2, 3)))
    assert torch.equal(out["label"], torch.flip(patch["label"], dims=(1, 2, 3)))


def test_gamma_is_nonlinear_and_keeps_mean_and_std():
    patch = _patch()
    out = _apply(_cfg(gamma_prob=1, gamma=[2.0, 2.5]), patch, "RandAdjustContrastd")
    a, b = patch["image"].double().flatten(), out["image"].double().flatten()
    assert float(b.mean()) == pytest.approx(float(a.mean()), abs=1e-4)
    assert float(b.std()) == pytest.approx(float(a.std()), rel=1e-3)
    fit = np.polyfit(a.numpy(), b.numpy(), 1)  # not an affine map of the input
    assert np.abs(np.polyval(fit, a.numpy()) - b.numpy()).max() > 0.02
    assert torch.equal(out["label"], patch["label"])


def test_noise_adds_gaussian_noise_of_the_configured_std():
    patch = _patch()
    out = _apply(_cfg(noise_prob=1, noise_std=0.1), patch, "RandGaussianNoised")
    residual = (out["image"] - patch["image"]).double()
    assert float(residual.mean()) == pytest.approx(0.0, abs=0.01)
    assert 0.0 < float(residual.std()) <= 0.1 + 0.01  # MONAI draws the std from [0, std]


def test_blur_removes_high_frequencies_and_keeps_the_mean():
    patch = _patch()
    out = _apply(_cfg(blur_prob=1, blur_sigma=[1.0, 1.5]), patch, "RandGaussianBlurd")
    assert _gradient_energy(out["image"]) < 0.7 * _gradient_energy(patch["image"])
    assert float(out["image"].mean()) == pytest.approx(float(patch["image"].mean()), abs=0.01)


def test_brightness_scales_and_shifts_intensities():
    patch = _patch()
    out = _apply(_cfg(intensity_prob=1, brightness=0.3, shift=0.2), patch, ("RandScaleIntensityd", "RandShiftIntensityd"))
    a, b = patch["image"].double().flatten().numpy(), out["image"].double().flatten().numpy()
    slope, offset = np.polyfit(a, b, 1)
    assert np.abs(slope * a + offset - b).max() < 1e-4  # an affine map of the input ...
    assert abs(slope - 1) > 1e-3 or abs(offset) > 1e-3  # ... that is not the identity
    assert 0.7 - 1e-6 <= slope <= 1.3 + 1e-6


def test_contrast_scales_about_the_mean_within_the_range():
    patch = _patch()
    out = _apply(_cfg(contrast_prob=1, contrast=0.5), patch, "RandScaleIntensityFixedMeand")
    a, b = patch["image"], out["image"]
    assert float(b.min()) >= float(a.min()) - 1e-6 and float(b.max()) <= float(a.max()) + 1e-6
    assert abs(float(b.std()) / float(a.std()) - 1.0) > 0.02
    unclipped = (b > a.min() + 1e-4) & (b < a.max() - 1e-4)
    assert float(((b - a.mean()) / (a - a.mean()))[unclipped & ((a - a.mean()).abs() > 0.05)].std()) < 1e-3


def test_low_resolution_simulation_smooths_and_keeps_the_shape():
    patch = _patch()
    out = _apply(_cfg(lowres_prob=1, lowres_zoom=[0.4, 0.5]), patch, "RandSimulateLowResolutiond")
    assert out["image"].shape == patch["image"].shape
    assert _gradient_energy(out["image"]) < 0.8 * _gradient_energy(patch["image"])
    assert torch.equal(out["label"], patch["label"])


def test_probabilities_and_ranges_are_validated():
    from liverseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.augment\.gamma_prob"):
        _cfg(gamma_prob=1.5)
    with pytest.raises(ConfigError, match=r"train\.augment\.lowres_zoom"):
        _cfg(lowres_zoom=[0.9, 0.5])
