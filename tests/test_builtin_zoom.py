"""The KU Leuven recipe's resampling (centre-aligned area shrink / linear enlarge with edge fade) and
its 3x3x3 median, against loop-by-loop statements of the rules."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from liverseg.builtin.zoom import median3, zoom3d, zoom_axis, zoomed_size


def shrink_1d(values: np.ndarray, zoom: float) -> np.ndarray:
    """Each new voxel (1 / zoom old voxels wide, grids centred) holds the overlap-weighted mean of the
    old voxels under it; the part beyond the old extent counts as 0."""
    n = len(values)
    size = math.ceil(n * zoom - 1e-9)
    width = 1.0 / zoom
    start = n / 2 - size * width / 2  # old coordinate of the new grid's left edge
    out = np.zeros(size)
    for j in range(size):
        left, right = start + j * width, start + (j + 1) * width
        for i in range(n):
            overlap = max(0.0, min(right, i + 1) - max(left, i))
            out[j] += values[i] * overlap / width
    return out


def enlarge_1d(values: np.ndarray, zoom: float) -> np.ndarray:
    """Linear interpolation between old voxel centres at the new centres; a missing neighbour is 0."""
    n = len(values)
    size = math.ceil(n * zoom - 1e-9)
    out = np.zeros(size)
    for j in range(size):
        centre = n / 2 + (j + 0.5 - size / 2) / zoom - 0.5  # in old voxel indices
        low = math.floor(centre)
        for index, weight in ((low, low + 1 - centre), (low + 1, centre - low)):
            if 0 <= index < n:
                out[j] += weight * values[index]
    return out


@pytest.mark.parametrize("n,zoom", [(23, 0.52), (20, 0.5), (11, 0.33), (7, 1.87), (9, 2.4), (13, 3.0)])
def test_one_axis_follows_the_rule(n, zoom):
    values = np.random.default_rng(n).normal(size=n)
    expected = shrink_1d(values, zoom) if zoom < 1 else enlarge_1d(values, zoom)
    assert zoomed_size(n, zoom) == len(expected)
    got = zoom_axis(values.astype(np.float32)[:, None, None], 0, zoom)[:, 0, 0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_three_axes_commute_with_flips_and_keep_a_constant_inside():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(17, 12, 9)).astype(np.float32)
    zoom = (0.52, 1.6, 0.5)
    out = zoom3d(volume, zoom)
    assert out.shape == (9, 20, 5)
    np.testing.assert_allclose(zoom3d(volume[::-1, :, ::-1], zoom), out[::-1, :, ::-1], atol=1e-5)
    constant = zoom3d(np.full((20, 20, 20), 7.0, np.float32), (0.5, 0.5, 0.5))
    np.testing.assert_allclose(constant, 7.0, atol=1e-5)  # 20 -> 10: every new voxel fully covered


def test_median_matches_scipy_including_edges():
    volume = np.random.default_rng(1).normal(size=(19, 14, 11)).astype(np.float32)
    np.testing.assert_array_equal(median3(volume, threads=2), ndimage.median_filter(volume, size=3))
