"""The built-in liver model's road around the network: orientation, body box, windows, the way back to
the input grid, warnings. The network is replaced by a stand-in that calls voxels liver by their
intensity, so the geometry is checked exactly and fast; the real network runs in the slow tests."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.builtin import kul_liver
from liverseg.builtin.engines import region_slices
from liverseg.builtin.kul_liver import segment
from liverseg.builtin.liver_grid import PATCH, Grid, body_box, windows
from liverseg.io.volume import Volume

from conftest import dice_of, ellipsoid_mask, permutation, ras_affine, rotation

LIVER_HU, BODY_HU, AIR_HU = 90.0, 0.0, -1000.0


class IntensityRun:
    """A stand-in network: liver probability from the scaled intensity (liver ~0.22, soft tissue 0)."""

    def __init__(self, image: np.ndarray, patch, margin: int = 13) -> None:
        self.probability = (1.0 / (1.0 + np.exp(-(image - 0.11) * 80.0))).astype(np.float32)
        self.shape = image.shape
        self.region = region_slices(patch[2], image.shape[2], margin)
        self.sampled_at: set[int] = set()

    def sample(self, zs) -> None:
        self.sampled_at |= {z for z in zs if 0 <= z < self.shape[2]}

    def sampled(self):
        z = np.array(sorted(self.sampled_at))
        return z, self.probability[..., z]

    def probabilities(self, box):
        return self.probability[box]


class IntensityEngine:
    name = "intensity stand-in"

    def __init__(self, scale: float = 1.0) -> None:
        self.runs: list[IntensityRun] = []
        self.scale = scale

    def run(self, image, patch):
        run = IntensityRun(image * self.scale, patch)
        self.runs.append(run)
        return run


def phantom(shape, spacing, direction=None, origin=(-150.0, -120.0, -200.0), liver=True, modality="CT",
            liver_centre=None) -> tuple[Volume, np.ndarray]:
    """Air, an elliptic body of 0 HU, and (optionally) an ellipsoidal liver of 90 HU; and the liver mask."""
    affine = ras_affine(spacing, direction, origin)
    centre = affine @ np.r_[(np.array(shape) - 1) / 2.0, 1.0]
    array = np.full(shape, AIR_HU, dtype=np.float32)
    array[ellipsoid_mask(shape, affine, centre[:3], (140.0, 100.0, 1e4))] = BODY_HU
    mask = np.zeros(shape, dtype=bool)
    if liver:
        where = centre[:3] + np.array([-40.0, 10.0, 0.0]) if liver_centre is None else np.asarray(liver_centre)
        mask = ellipsoid_mask(shape, affine, where, (70.0, 60.0, 55.0))
        array[mask] = LIVER_HU
    return Volume(array.astype(np.int16), affine, {"modality": modality}), mask


def test_body_box_and_windows():
    volume, _ = phantom((60, 50, 40), (6.0, 6.0, 6.0))
    box = body_box(volume.array, (6.0, 6.0, 6.0))
    assert box[2] == slice(0, 40)  # the body runs through every slice
    assert box[0].start > 0 and box[0].stop < 60  # air on both sides, plus 10 mm
    assert body_box(np.full((10, 10, 10), -1000, np.int16), (3.0, 3.0, 3.0)) is None
    assert windows(100, 136, 20) == [slice(0, 100)]
    spans = windows(300, 136, 20)
    assert spans[0].start == 0 and spans[-1].stop == 300 and all(s.stop - s.start == 136 for s in spans)
    assert all(a.stop - b.start >= 20 for a, b in zip(spans, spans[1:]))


def test_grid_is_centred_on_the_box():
    grid = Grid.of((slice(10, 110), slice(0, 51), slice(5, 25)), (0.7, 0.9, 5.0))
    assert grid.shape == (24, 16, 34)  # ceil(ceil(n * s / 1.5) / 2): 70 mm -> 47 -> 24, 45.9 -> 31 -> 16, 100 -> 67 -> 34
    for axis, box in enumerate(grid.box):
        centre = (box.start + box.stop - 1) / 2.0
        assert grid.position(axis, np.array([centre]))[0] == pytest.approx((grid.shape[axis] - 1) / 2.0)


@pytest.mark.parametrize("direction", [None, permutation((0, 1, 2), (-1, -1, 1)), permutation((1, 0, 2), (1, -1, 1)),
                                       rotation(2, 20.0)], ids=["RAS", "LPS", "permuted", "oblique"])
def test_labels_land_on_the_liver_on_the_input_grid(direction):
    volume, mask = phantom((150, 130, 50), (2.5, 2.5, 6.0), direction)
    result = segment(volume, IntensityEngine())
    assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    assert dice_of(result.labels > 0, mask) > 0.95
    assert result.details["liver_ml"] == pytest.approx(np.count_nonzero(result.labels) * volume.voxel_volume_ml, rel=1e-3)


def test_the_same_ct_in_eight_orientations_gives_the_same_liver():
    base, _ = phantom((70, 60, 40), (5.0, 5.0, 6.0))
    reference = segment(base, IntensityEngine()).labels
    for flips in [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]:
        array = np.flip(base.array, flips)
        affine = base.affine_ras.copy()
        for axis in flips:  # the same physical voxels, indexed backwards along this axis
            affine[:3, 3] += affine[:3, axis] * (base.shape[axis] - 1)
            affine[:3, axis] *= -1
        flipped = segment(Volume(np.ascontiguousarray(array), affine, {}), IntensityEngine()).labels
        np.testing.assert_array_equal(np.flip(flipped, flips), reference)
    permuted = segment(Volume(np.ascontiguousarray(base.array.transpose(2, 0, 1)),
                              base.affine_ras[:, [2, 0, 1, 3]], {}), IntensityEngine()).labels
    np.testing.assert_array_equal(permuted.transpose(1, 2, 0), reference)


def test_a_scan_longer_than_a_window_is_cut_and_then_centred_on_the_liver():
    volume, mask = phantom((50, 40, 160), (7.0, 7.0, 5.0), liver_centre=None)  # 800 mm along S
    engine = IntensityEngine()
    result = segment(volume, engine)
    passes = result.details["passes"]
    assert len(passes) >= 3 and passes[-1]["why"] == "liver-centred window"
    assert dice_of(result.labels > 0, mask) > 0.9


def test_a_liver_at_the_top_of_the_scan_gets_a_second_window_below_it():
    volume, mask = phantom((60, 50, 90), (6.0, 6.0, 5.0))
    top = volume.affine_ras @ np.r_[30, 25, 89, 1.0]
    volume, mask = phantom((60, 50, 90), (6.0, 6.0, 5.0), liver_centre=top[:3] - np.array([40.0, -10.0, 20.0]))
    result = segment(volume, IntensityEngine())
    assert result.details["passes"][-1]["why"] == "liver-centred window"
    assert any("edge of the field of view (superior)" in w for w in result.warnings)


def test_warnings_for_inputs_that_make_the_result_doubtful():
    volume, _ = phantom((60, 50, 12), (6.0, 6.0, 6.0), modality="MR")
    warnings = segment(volume, IntensityEngine()).warnings
    assert any("modality MR" in w for w in warnings)
    assert any("small field of view: 72 mm" in w for w in warnings)
    air = Volume(np.full((20, 20, 20), -1000, np.int16), ras_affine((5.0, 5.0, 5.0)), {})
    result = segment(air, IntensityEngine())
    assert not result.labels.any() and any("no body found" in w for w in result.warnings)
    positive = Volume(np.full((20, 20, 20), 300, np.int16), ras_affine((5.0, 5.0, 5.0)), {})
    assert any("do not look like CT" in w for w in segment(positive, IntensityEngine()).warnings)


def test_no_liver_and_too_small_a_structure_leave_the_label_map_empty():
    volume, _ = phantom((60, 50, 40), (6.0, 6.0, 6.0), liver=False)
    result = segment(volume, IntensityEngine())
    assert not result.labels.any() and "no liver found in this scan" in result.warnings
    volume, mask = phantom((60, 50, 40), (6.0, 6.0, 6.0))
    small = np.where(mask & (np.indices(mask.shape)[0] > mask.nonzero()[0].max() - 3), LIVER_HU, BODY_HU)
    array = np.where(volume.array < -500, volume.array, small).astype(np.int16)  # a 3-voxel cap of the liver
    result = segment(Volume(array, volume.affine_ras, {}), IntensityEngine())
    assert not result.labels.any()
    assert any(w.startswith("no liver found: the only liver-like structure") for w in result.warnings)


def test_sampling_lattices_cover_the_region_and_the_image():
    run = IntensityRun(np.zeros((5, 5, 100), np.float32), PATCH)
    coarse = kul_liver.lattice(run, kul_liver.COARSE_STRIDE)
    fine = kul_liver.lattice(run, kul_liver.FINE_STRIDE, inside_image=True)
    assert set(coarse) <= set(run.region) and len(coarse) == len(run.region) // kul_liver.COARSE_STRIDE + 1
    assert min(coarse) < 0 < 100 <= max(coarse)  # the region reaches into the padding
    assert all(0 <= z < 100 for z in fine) and max(b - a for a, b in zip(fine, fine[1:])) == kul_liver.FINE_STRIDE
    final = kul_liver.statistics_slices(run)
    assert set(fine) | {0, 99, -2, 101, -12, 111} <= set(final) and set(final) <= set(run.region)


def test_a_liver_below_the_top_of_the_scan_gets_one_pass():
    volume, mask = phantom((60, 50, 80), (6.0, 6.0, 5.0))  # 400 mm: one window
    top = volume.affine_ras @ np.r_[30, 25, 79, 1.0]
    volume, mask = phantom((60, 50, 80), (6.0, 6.0, 5.0), liver_centre=top[:3] - np.array([40.0, -10.0, 100.0]))
    result = segment(volume, IntensityEngine())  # the liver ends 45 mm below the top slice
    assert len(result.details["passes"]) == 1 and dice_of(result.labels > 0, mask) > 0.95
    assert not any("superior" in w for w in result.warnings)
