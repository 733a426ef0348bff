"""The fast, bounded-memory prediction path: the grid road (slab-wise resampling) computes the
whole-volume reference numbers whatever the slab size, in both intensity modes, the streaming sliding
window equals plain blending, coarse-to-fine finds the region (and falls back), flip TTA averages the
flips, and the memory plan picks float16 for large volumes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import make_volume, permutation, rotation
from liverseg.config import ExperimentConfig, InferConfig, ModelConfig, PreprocessConfig, TrainConfig
from liverseg.engine.tiling import sliding_window, softmax_predictor
from liverseg.engine.volume import coarse_region, plan_memory, predict_volume
from liverseg.grid.record import from_canonical, plan_grid, to_canonical
from liverseg.grid.resample import linear_source, nearest_source
from liverseg.grid.road import labels_to_network_grid, normalize_ct, probabilities_to_labels, to_network_grid

GRIDS = [
    ((37, 29, 23), (0.7, 0.9, 1.3), permutation((1, 0, 2), (-1, 1, -1))),  # down-sampled, LPS-like, permuted
    ((20, 22, 9), (2.0, 2.0, 5.0), None),                                    # up-sampled, anisotropic
    ((18, 16, 14), (1.1, 1.6, 2.4), rotation(2, 12.0)),                      # oblique
]
WINDOW = PreprocessConfig(spacing_mm=(1.5, 1.5, 2.0), hu_window=(-200.0, 300.0))
Z_SCORE = PreprocessConfig(spacing_mm=(1.5, 1.5, 2.0), hu_window=(-57.0, 164.0), intensity_mean_hu=99.4,
                           intensity_std_hu=37.2)


def _random_ct(shape, spacing, direction):
    rng = np.random.default_rng(0)
    return make_volume(shape, spacing, direction, array=rng.normal(0, 200, shape).astype(np.int16))


def _whole_volume_image(volume, preprocess: PreprocessConfig) -> np.ndarray:
    """The reference for the way in, one whole-volume step after the other: reorient, clip and scale the
    HU window, scipy's Gaussian pre-filter (sigma (f - 1) / 2 along shrunk axes), torch's trilinear
    interpolation, then the z-scoring."""
    record = plan_grid(volume, preprocess.spacing_mm)
    low, high = preprocess.hu_window
    canonical = np.ascontiguousarray(to_canonical(volume.array, record.ornt)).astype(np.float32)
    image = (np.clip(canonical, low, high) - low) / (high - low)
    sigma = [max(0.0, (n / t - 1.0) / 2.0) for n, t in zip(record.canonical_shape, record.target_shape)]
    image = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest")
    image = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=record.target_shape,
                                            mode="trilinear", align_corners=False)[0, 0].numpy()
    if preprocess.intensity_std_hu > 0:
        image = (image * (high - low) + low - preprocess.intensity_mean_hu) / preprocess.intensity_std_hu
    return image


def _whole_volume_labels(probabilities: torch.Tensor, record) -> np.ndarray:
    """The reference for the way back: torch's trilinear interpolation of the whole volume, argmax."""
    resampled = torch.nn.functional.interpolate(probabilities[None], size=record.canonical_shape, mode="trilinear",
                                                align_corners=False)[0]
    return np.ascontiguousarray(from_canonical(resampled.argmax(0).to(torch.uint8).numpy(), record.ornt))


@pytest.mark.parametrize("shape, spacing, direction", GRIDS)
@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("preprocess, atol", [(WINDOW, 2e-6), (Z_SCORE, 1e-5)], ids=["window", "z-score"])
def test_the_road_computes_whole_volume_resampling_slab_by_slab(shape, spacing, direction, chunk, preprocess, atol):
    """Every slab size gives the whole-volume result, intensities (window or z-score units) and labels."""
    volume = _random_ct(shape, spacing, direction)
    image, record = to_network_grid(volume, preprocess, chunk=chunk)
    assert isinstance(image, np.ndarray) and image.dtype == np.float32 and image.shape == record.target_shape
    np.testing.assert_allclose(image, _whole_volume_image(volume, preprocess), atol=atol, rtol=0)
    probabilities = torch.softmax(torch.randn((3, *image.shape), generator=torch.Generator().manual_seed(1)), 0)
    labels = probabilities_to_labels(probabilities.numpy(), record, chunk=chunk)
    np.testing.assert_array_equal(labels, _whole_volume_labels(probabilities, record))
    assert labels.shape == shape and labels.dtype == np.uint8


@pytest.mark.parametrize("shape, spacing, direction", GRIDS)
def test_the_slab_size_does_not_change_float16_probabilities_labels(shape, spacing, direction):
    volume = _random_ct(shape, spacing, direction)
    record = plan_grid(volume, Z_SCORE.spacing_mm)
    probabilities = np.random.default_rng(2).random((3, *record.target_shape), dtype=np.float32).astype(np.float16)
    labels = [probabilities_to_labels(probabilities, record, chunk=chunk) for chunk in (1, 5, 1000)]
    for other in labels[1:]:
        np.testing.assert_array_equal(other, labels[0])


@pytest.mark.parametrize("shape, spacing, direction", GRIDS)
def test_z_scoring_is_the_window_scaling_mapped_affinely(shape, spacing, direction):
    """intensity_std_hu > 0: z-scores of the clipped HU, (HU - mean) / std, on the same grid (the affine
    map commutes with the resampling); the plain window scaling lies in [0, 1]."""
    volume = _random_ct(shape, spacing, direction)
    scaled, record = to_network_grid(volume, WINDOW)
    assert 0.0 <= scaled.min() and scaled.max() <= 1.0
    window_only = PreprocessConfig(spacing_mm=Z_SCORE.spacing_mm, hu_window=Z_SCORE.hu_window)
    scaled, _ = to_network_grid(volume, window_only)
    z_scores, _ = to_network_grid(volume, Z_SCORE)
    low, high = Z_SCORE.hu_window
    np.testing.assert_allclose(z_scores, (scaled * (high - low) + low - 99.4) / 37.2, atol=1e-5, rtol=0)
    np.testing.assert_allclose(z_scores, _whole_volume_image(volume, Z_SCORE), atol=1e-5, rtol=0)


def test_normalize_ct_clips_then_scales_or_z_scores():
    hu = np.array([-1000.0, -57.0, 0.0, 99.4, 164.0, 3000.0])
    window = PreprocessConfig(hu_window=(-57.0, 164.0))
    np.testing.assert_allclose(normalize_ct(hu, window), (np.clip(hu, -57.0, 164.0) + 57.0) / 221.0, atol=1e-7)
    np.testing.assert_allclose(normalize_ct(hu, Z_SCORE), (np.clip(hu, -57.0, 164.0) - 99.4) / 37.2, atol=1e-6)
    assert normalize_ct(hu, Z_SCORE).dtype == np.float32 and hu[0] == -1000.0  # the input is left alone


@pytest.mark.parametrize("shape, spacing, direction", GRIDS)
def test_labels_go_to_the_network_grid_by_torchs_nearest_exact(shape, spacing, direction):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, shape).astype(np.uint8)
    volume = make_volume(shape, spacing, direction, array=labels)
    record = plan_grid(volume, WINDOW.spacing_mm)
    on_network = labels_to_network_grid(volume, record)
    canonical = torch.from_numpy(np.ascontiguousarray(to_canonical(labels, record.ornt)).astype(np.float32))
    expected = torch.nn.functional.interpolate(canonical[None, None], size=record.target_shape,
                                               mode="nearest-exact")[0, 0].to(torch.int16).numpy()
    assert on_network.dtype == np.int16
    np.testing.assert_array_equal(on_network, expected)


def test_nearest_source_matches_torch_nearest_exact_on_awkward_ratios():
    for n_in, n_out in ((7, 3), (3, 7), (6, 9), (128, 85), (512, 267), (48, 120), (2, 1), (10, 4), (5, 5)):
        signal = torch.arange(n_in, dtype=torch.float32)[None, None]
        expected = torch.nn.functional.interpolate(signal, size=n_out, mode="nearest-exact")[0, 0].long().numpy()
        np.testing.assert_array_equal(nearest_source(n_in, n_out), expected)


def test_linear_source_matches_torch_interpolate():
    for n_in, n_out in ((7, 3), (3, 7), (5, 5), (1, 4), (10, 1)):
        signal = torch.arange(n_in, dtype=torch.float64) ** 2
        expected = torch.nn.functional.interpolate(signal[None, None], size=n_out, mode="linear",
                                                   align_corners=False)[0, 0]
        lo, hi, w = linear_source(n_in, n_out)
        got = signal[lo] * (1 - torch.from_numpy(w).double()) + signal[hi] * torch.from_numpy(w).double()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)


def test_linear_resize_of_an_axis_matches_torch_bilinear():
    from liverseg.grid.resample import resize_linear

    array = torch.rand((2, 17, 9, 3), generator=torch.Generator().manual_seed(2))
    for size in ((7, 20), (17, 9), (40, 4)):
        expected = torch.nn.functional.interpolate(array.permute(3, 0, 1, 2), size=size, mode="bilinear",
                                                   align_corners=False).permute(1, 2, 3, 0)
        got = resize_linear(resize_linear(array.numpy(), 1, size[0]), 2, size[1])
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6, rtol=0)


def test_average_pool_matches_torch_avg_pool3d_with_ceil_mode():
    from liverseg.engine.volume import average_pool

    image = torch.rand((13, 8, 7), generator=torch.Generator().manual_seed(6))
    for factor in (2, 3):
        expected = torch.nn.functional.avg_pool3d(image[None, None], factor, factor, ceil_mode=True)[0, 0]
        np.testing.assert_allclose(average_pool(image.numpy(), factor), expected.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(np.float32, 1e-5), (np.float16, 4e-3)])
def test_streaming_window_stores_the_requested_precision(dtype, atol):
    image = np.random.default_rng(3).random((1, 30, 21, 40), dtype=np.float32)
    out = sliding_window(image, lambda x: np.concatenate([x, 1 - x], 1), (8, 8, 8), overlap=0.5, batch_size=3,
                         out_dtype=dtype)
    assert out.dtype == dtype and tuple(out.shape) == (2, 30, 21, 40)
    np.testing.assert_allclose(out[0].astype(np.float32), image[0], atol=atol, rtol=0)
    np.testing.assert_allclose(out[1].astype(np.float32), 1 - image[0], atol=atol, rtol=0)


class _BrightIsLiver(torch.nn.Module):
    """Logits (background, liver): liver where the image is above 0.5; counts its calls' voxels."""

    def __init__(self) -> None:
        super().__init__()
        self.voxels = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.voxels += x[:, 0].numel()
        return torch.cat([(0.5 - x) * 20, (x - 0.5) * 20], dim=1)


def _cfg(**infer) -> ExperimentConfig:
    return ExperimentConfig(preprocess=PreprocessConfig(spacing_mm=(2.0, 2.0, 2.0), hu_window=(0.0, 100.0)),
                            model=ModelConfig(channels=(4, 8), strides=(2,)), train=TrainConfig(patch_size=(16, 16, 16)),
                            infer=InferConfig(roi_size=(16, 16, 16), **infer)).validate()


def _blob_volume(centre, radius, shape=(48, 40, 44)) -> object:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    inside = (((ijk - np.asarray(centre)) / np.asarray(radius)) ** 2).sum(-1) <= 1
    return make_volume(shape, (2.0, 2.0, 2.0), array=np.where(inside, 100, 0).astype(np.int16)), inside


def test_coarse_to_fine_runs_the_network_only_around_the_organ_and_gives_the_same_labels():
    volume, inside = _blob_volume((20, 18, 22), (5, 6, 5))
    fast_model, full_model = _BrightIsLiver(), _BrightIsLiver()
    fast = predict_volume(fast_model, volume, _cfg(coarse_margin_mm=6.0), torch.device("cpu"))
    full = predict_volume(full_model, volume, _cfg(coarse_to_fine=False), torch.device("cpu"))
    np.testing.assert_array_equal(fast, full)
    assert np.array_equal(fast.astype(bool), inside)
    assert fast_model.voxels < 0.6 * full_model.voxels  # coarse pass + a box, not the whole volume


def test_coarse_pass_falls_back_to_the_whole_volume_when_it_finds_nothing():
    volume = make_volume((48, 40, 44), (2, 2, 2), dtype=np.int16)
    image, _ = to_network_grid(volume, _cfg().preprocess)
    box, why = coarse_region(_BrightIsLiver(), image, _cfg(), torch.device("cpu"))
    assert box is None and "found nothing" in why


def test_an_organ_cut_by_the_field_of_view_is_cropped_up_to_the_border_and_segmented_whole():
    volume, inside = _blob_volume((2, 18, 22), (6, 6, 5))  # reaches past the first slice along x
    image, _ = to_network_grid(volume, _cfg().preprocess)
    box, _ = coarse_region(_BrightIsLiver(), image, _cfg(coarse_margin_mm=4.0), torch.device("cpu"))
    assert box is not None and box[0].start == 0 and box[0].stop < 48
    labels = predict_volume(_BrightIsLiver(), volume, _cfg(coarse_margin_mm=4.0), torch.device("cpu"))
    assert np.array_equal(labels.astype(bool), inside)


def test_flip_tta_averages_every_flip_combination():
    calls = []

    def model(x):  # not flip-equivariant: the output depends on the position along axis 0
        calls.append(x.shape)
        ramp = np.linspace(0, 1, x.shape[2], dtype=np.float32).reshape(1, 1, -1, 1, 1)
        return np.concatenate([x * 0, np.broadcast_to(ramp, x.shape) * 4], axis=1)

    batch = np.zeros((2, 1, 6, 5, 4), dtype=np.float32)
    plain = softmax_predictor(model, "cpu")(batch)
    tta = softmax_predictor(model, "cpu", flip_axes=(0, 1))(batch)
    assert len(calls) == 1 + 4
    # Averaging the flip along axis 0 makes the result symmetric along it.
    np.testing.assert_allclose(tta, np.flip(tta, 2), atol=1e-6)
    assert not np.allclose(plain, np.flip(plain, 2))


def test_memory_plan_uses_float16_for_a_large_volume_and_thin_slabs_for_a_small_budget():
    cfg = _cfg()
    small = make_volume((64, 64, 32), (2.0, 2.0, 2.0), dtype=np.int16)
    assert plan_memory(small, cfg, None).probability_dtype == np.float32
    # 512x512x1200 at 1 mm -> 39 M network voxels x 2 classes: 315 MB as float32, above the default 256 MB.
    large = make_volume((512, 512, 1200), (1.0, 1.0, 1.0), array=np.empty((512, 512, 1200), dtype=np.uint8))
    plan = plan_memory(large, cfg, None)
    assert plan.probability_dtype == np.float16 and 1 <= plan.chunk_slices <= 64
    assert plan_memory(large, cfg, 4.0).probability_dtype == np.float32  # 315 MB <= 4 GB / 8
    assert plan_memory(large, cfg, 0.05).chunk_slices < plan.chunk_slices


@pytest.mark.parametrize("extent, expected", [
    ((90, 128, 200), (96, 128, 128)),   # one tile shrunk; one exact; two tiles (200 needs two of >= 115)
    ((150, 20, 128), (96, 32, 128)),    # two tiles of 96 instead of 128; a thin axis; exactly one tile
])
def test_fit_tile_shrinks_tiles_without_adding_any(extent, expected):
    from liverseg.engine.tiling import fit_tile, tile_starts

    roi = (128, 128, 128)
    tile = fit_tile(extent, roi, 0.25, 16)
    assert tile == expected
    for n, t, r in zip(extent, tile, roi):
        assert t % 16 == 0 and t <= r
        assert len(tile_starts(max(n, t), t, 0.25)) <= len(tile_starts(max(n, r), r, 0.25))
    assert fit_tile(extent, roi, 0.25, None) == roi  # a network of unknown size rules keeps the roi
