"""Sliding-window stitching, checked exactly with arithmetic predictors (as MONAI's own test does)."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.engine.tiling import gaussian_importance, sliding_window, tile_starts

SHAPES = [
    (10, 12, 7),   # smaller than the tile along every axis
    (16, 16, 16),  # exactly one tile
    (40, 33, 21),  # larger, odd sizes
    (9, 40, 16),   # smaller, larger and equal mixed
]
ROIS = [(16, 16, 16), (8, 12, 5)]
OVERLAPS = [0.0, 0.25, 0.5]
BLENDS = ["gaussian", "constant"]
BATCH_SIZES = [1, 3]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("roi", ROIS, ids=lambda s: "roi" + "x".join(map(str, s)))
@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_plus_one_predictor_is_stitched_exactly(shape, roi, overlap, blend, batch_size):
    image = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    calls = []

    def predictor(batch):
        assert tuple(batch.shape[2:]) == roi  # every tile has the requested size, padded if needed
        calls.append(batch.shape[0])
        return batch + 1

    out = sliding_window(image, predictor, roi, overlap=overlap, batch_size=batch_size, blend=blend)
    assert tuple(out.shape) == (1, *shape)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, image + 1, atol=1e-5, rtol=0)
    assert max(calls) <= batch_size
    n_tiles = 1
    for n, r in zip(shape, roi):
        n_tiles *= len(tile_starts(max(n, r), r, overlap))
    assert sum(calls) == n_tiles


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("batch_size", [1, 4])
def test_channels_of_the_predictor_output_are_kept_apart(blend, batch_size):
    image = np.random.default_rng(1).random((1, 21, 18, 13), dtype=np.float32) * 10 - 5
    out = sliding_window(image, lambda x: np.concatenate([x + 1, x * 2], axis=1), (8, 8, 8), overlap=0.25,
                         batch_size=batch_size, blend=blend)
    assert tuple(out.shape) == (2, 21, 18, 13)
    np.testing.assert_allclose(out[0], image[0] + 1, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[1], image[0] * 2, atol=1e-5, rtol=0)


def test_torch_tensors_and_torch_predictors_still_work():
    """Training validation hands tensors in; a torch module as a model is wrapped by as_network."""
    torch = pytest.importorskip("torch")
    from liverseg.engine.tiling import softmax_predictor

    image = torch.rand((1, 12, 10, 9), generator=torch.Generator().manual_seed(4))
    model = torch.nn.Conv3d(1, 2, 1)
    out = sliding_window(image, softmax_predictor(model, "cpu"), (8, 8, 8), overlap=0.25)
    with torch.no_grad():
        expected = torch.softmax(model(image[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_multichannel_input_is_passed_whole_to_the_predictor():
    image = np.random.default_rng(2).random((2, 20, 11, 9), dtype=np.float32)
    out = sliding_window(image, lambda x: (x[:, :1] - x[:, 1:]) * 3, (8, 8, 8), overlap=0.5)
    assert tuple(out.shape) == (1, 20, 11, 9)
    np.testing.assert_allclose(out[0], (image[0] - image[1]) * 3, atol=1e-5, rtol=0)


def test_position_dependent_predictor_sees_the_right_tile():
    """Each output voxel comes from the tile that holds that voxel's own input value."""
    shape = (23, 17, 12)
    index = np.arange(23 * 17 * 12, dtype=np.float32).reshape(1, *shape)
    out = sliding_window(index, lambda x: x * 1.0, (8, 8, 8), overlap=0.25, batch_size=2, blend="gaussian")
    np.testing.assert_allclose(out, index, atol=1e-2, rtol=1e-6)


def test_sliding_window_rejects_wrong_dimensions():
    with pytest.raises(ValueError, match=r"\(C, \*spatial\) with 3 spatial axes, got shape \(8, 8, 8\)"):
        sliding_window(np.zeros((8, 8, 8), dtype=np.float32), lambda x: x, (4, 4, 4))


@pytest.mark.parametrize("shape", [(3, 5), (16, 16), (37, 29), (64, 9)])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_sliding_window_in_2d_is_exact_with_x_plus_one(shape, blend):
    image = np.random.default_rng(5).standard_normal((2, *shape), dtype=np.float32)
    out = sliding_window(image, lambda x: x + 1, (16, 16), overlap=0.5, batch_size=3, blend=blend)
    np.testing.assert_allclose(out, image + 1, atol=1e-5, rtol=0)


@pytest.mark.parametrize("length", [1, 5, 16, 17, 31, 64, 100, 129])
@pytest.mark.parametrize("roi", [4, 16, 32])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_tile_starts_cover_the_axis_with_the_requested_overlap(length, roi, overlap):
    starts = tile_starts(length, roi, overlap)
    assert starts == sorted(set(starts))
    assert starts[0] == 0
    if length <= roi:
        assert starts == [0]
        return
    assert starts[-1] + roi == length  # the last tile ends at the edge, none runs past it
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        assert 0 <= start <= length - roi
        covered[start: start + roi] = True
    assert bool(covered.all())
    for first, second in zip(starts, starts[1:]):
        assert first + roi - second >= overlap * roi - 1e-9, (first, second)


@pytest.mark.parametrize("roi", [(16, 16, 16), (7, 10, 5), (1, 4, 9), (96, 96, 64)])
def test_gaussian_importance_is_symmetric_positive_and_peaks_at_one(roi):
    weight = gaussian_importance(roi)
    assert tuple(weight.shape) == roi
    assert weight.dtype == np.float32
    assert float(weight.max()) == pytest.approx(1.0, abs=1e-6)
    assert float(weight.min()) > 0.0
    for axis in range(3):
        np.testing.assert_array_equal(weight, np.flip(weight, axis=axis))
    centre = tuple((n - 1) // 2 for n in roi)
    assert float(weight[centre]) == pytest.approx(1.0, abs=1e-6)  # the centre (either middle voxel if even)
    # Falls off from the centre to the corner.
    if all(n > 2 for n in roi):
        assert float(weight[0, 0, 0]) < float(weight[centre])

