"""Tumour burden: lesion volumes, RECIST-style axial diameters (edge to edge), LPS centroids, HU, totals,
lesions.csv and the on-screen line, on hand-built volumes with known answers."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage
from conftest import permutation, ras_affine, rotation, world_coords

from liverseg.io import write_volume
from liverseg.io.volume import Volume
from liverseg.datasets.manifest import Case
from liverseg.reports.tumour_burden import (CSV_COLUMNS, AxialGeometry, burden_summary, label_roles, lesions_csv,
                                            slice_diameters, tumour_burden)

NAMES = ("background", "liver", "tumour")


def _ellipsoid_case(spacing=(0.8, 1.1, 2.0), shape=(64, 36, 15), radii=(20.0, 12.0, 8.0), angle_deg=0.0,
                    direction=None):
    """Liver box with an ellipsoid lesion (semi-axes ``radii`` mm, long axis turned ``angle_deg`` in
    the axial plane) centred on a voxel centre; CT 60 HU in the liver, 20 in the lesion."""
    affine = ras_affine(spacing, direction, origin=(-10.0, 30.0, -200.0))
    xyz = world_coords(shape, affine)
    centre = xyz[tuple(s // 2 for s in shape)]
    local = (xyz - centre) @ rotation(2, angle_deg)   # world -> the lesion's own axes
    lesion = (((local / np.asarray(radii)) ** 2).sum(-1)) <= 1.0
    labels = np.ones(shape, np.uint8)
    labels[lesion] = 2
    labels[:2] = 0
    ct = np.where(labels == 2, 20.0, np.where(labels == 1, 60.0, -1000.0)).astype(np.float32)
    return labels, affine, ct, centre


def _reoriented(array, affine, order, flips):
    """The same voxels (same world positions) stored with the array axes permuted and flipped."""
    out = np.transpose(array, order)
    new = np.eye(4)
    new[:3, :3] = affine[:3, :3][:, list(order)]
    new[:3, 3] = affine[:3, 3]
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
            n = out.shape[axis]
            new[:3, 3] = new[:3, 3] + new[:3, axis] * (n - 1)
            new[:3, axis] = -new[:3, axis]
    return np.ascontiguousarray(out), new


def test_label_roles_by_name():
    assert label_roles(NAMES) == (1, (2,))
    assert label_roles(["background", "Liver", "Liver Lesion"]) == (1, (2,))
    assert label_roles(["bg", "liver", "hepatic_vessel", "Tumor", "lesions"]) == (1, (3, 4))
    assert label_roles(["background", "liver"]) is None
    assert label_roles(["background", "tumour"]) is None
    assert label_roles(["background", "liver_tumour", "spleen"]) is None   # no liver label


def test_box_lesion_exact_edge_to_edge_figures():
    spacing = (0.7, 0.9, 2.5)
    labels = np.zeros((20, 14, 9), np.uint8)
    labels[1:19, 1:13, 1:8] = 1
    labels[4:14, 3:9, 2:6] = 2                      # 10 x 6 pixels, 4 slices
    ct = np.zeros(labels.shape, np.float32)
    ct[labels == 2] = np.arange(240, dtype=np.float32)
    burden = tumour_burden(labels, ras_affine(spacing), NAMES, ct)
    voxel_ml = 0.7 * 0.9 * 2.5 / 1000
    a, b = 10 * 0.7, 6 * 0.9
    (lesion,) = burden["lesions"]
    assert lesion["id"] == 1 and lesion["voxel_count"] == 240
    assert lesion["volume_ml"] == pytest.approx(240 * voxel_ml, abs=1e-4)
    assert lesion["longest_diameter_mm"] == pytest.approx(math.hypot(a, b), abs=0.01)
    assert lesion["perpendicular_diameter_mm"] == pytest.approx(2 * a * b / math.hypot(a, b), abs=0.01)
    assert lesion["slices"] == [2, 5] and lesion["craniocaudal_extent_mm"] == pytest.approx(10.0)
    assert lesion["hu"] == {"mean": 119.5, "std": pytest.approx(np.arange(240).std(), abs=0.01), "min": 0.0, "max": 239.0}
    # mean voxel index (8.5, 5.5, 3.5) -> RAS (5.95, 4.95, 8.75) mm -> LPS
    assert lesion["centroid_lps_mm"] == pytest.approx([-5.95, -4.95, 8.75], abs=1e-6)
    ends = np.asarray(lesion["longest_diameter_ends_lps_mm"])
    assert np.linalg.norm(ends[0] - ends[1]) == pytest.approx(lesion["longest_diameter_mm"], abs=0.02)
    assert burden["liver_volume_ml"] == pytest.approx(18 * 12 * 7 * voxel_ml, abs=1e-3)
    assert burden["lesion_fraction_percent"] == pytest.approx(100 * 240 / (18 * 12 * 7), abs=1e-3)
    assert burden["axial_array_axis"] == 2 and burden["connectivity"] == 26


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0])
def test_ellipsoid_volume_and_diameters_on_an_anisotropic_grid(angle):
    labels, affine, ct, centre = _ellipsoid_case(angle_deg=angle, shape=(64, 48, 15))
    burden = tumour_burden(labels, affine, NAMES, ct)
    (lesion,) = burden["lesions"]
    assert lesion["volume_ml"] == pytest.approx(4 / 3 * math.pi * 20 * 12 * 8 / 1000, rel=0.05)
    # edge to edge: the true diameter plus up to about one pixel
    assert 40.0 - 0.5 <= lesion["longest_diameter_mm"] <= 40.0 + 1.6
    assert 24.0 - 0.5 <= lesion["perpendicular_diameter_mm"] <= 24.0 + 1.6
    assert lesion["diameter_slice"] == 7                      # the ellipsoid's equator
    np.testing.assert_allclose(lesion["centroid_lps_mm"], centre * [-1, -1, 1], atol=0.05)
    assert lesion["hu"]["mean"] == 20.0 and lesion["hu"]["std"] == 0.0
    assert lesion["craniocaudal_extent_mm"] == pytest.approx(16.0 + 2.0, abs=2.0)


def test_the_same_voxels_in_another_storage_order_give_the_same_figures():
    labels, affine, ct, _ = _ellipsoid_case(angle_deg=30.0, shape=(64, 48, 15))
    reference = tumour_burden(labels, affine, NAMES, ct)
    for order, flips, axial in [((0, 1, 2), (True, True, False), 2),    # LPS-stored (DICOM-like)
                                ((2, 0, 1), (False, True, True), 0),    # slices first, flipped
                                ((1, 2, 0), (True, False, False), 1)]:
        lab2, aff2 = _reoriented(labels, affine, order, flips)
        ct2, _ = _reoriented(ct, affine, order, flips)
        burden = tumour_burden(lab2, aff2, NAMES, ct2)
        assert burden["axial_array_axis"] == axial
        (a,), (b,) = reference["lesions"], burden["lesions"]
        for key in ("volume_ml", "voxel_count", "longest_diameter_mm", "perpendicular_diameter_mm",
                    "craniocaudal_extent_mm", "hu"):
            assert a[key] == b[key], key
        np.testing.assert_allclose(a["centroid_lps_mm"], b["centroid_lps_mm"], atol=0.011)
        assert burden["liver_volume_ml"] == reference["liver_volume_ml"]


def test_oblique_and_sheared_grids():
    # grid turned 30 degrees about the S-I axis: the axial planes are the same, diameters too
    labels, affine, ct, _ = _ellipsoid_case(shape=(70, 56, 15), direction=rotation(2, 30.0))
    (lesion,) = tumour_burden(labels, affine, NAMES, ct)["lesions"]
    assert 39.5 <= lesion["longest_diameter_mm"] <= 41.6 and 23.5 <= lesion["perpendicular_diameter_mm"] <= 25.6
    # gantry tilt: the third axis leans 20 degrees, the slice planes stay axial, closer together
    tilt = np.eye(3)
    tilt[:, 2] = (0.0, math.sin(math.radians(20)), math.cos(math.radians(20)))
    geo = AxialGeometry(ras_affine((0.8, 1.1, 2.0), tilt))
    assert geo.axis == 2 and geo.slice_distance_mm == pytest.approx(2.0 * math.cos(math.radians(20)))
    np.testing.assert_allclose(geo.to_mm, np.diag([0.8, 1.1]), atol=1e-12)
    # a sagittally stored grid: the axial slices run along array axis 0
    assert AxialGeometry(ras_affine((1, 1, 1), permutation((2, 0, 1)))).axis == 0


def test_slice_diameters_single_pixel_and_sheared_pixels():
    longest, perp, _ = slice_diameters(np.ones((1, 1), bool), np.diag([0.6, 0.8]))
    assert longest == pytest.approx(1.0) and perp == pytest.approx(2 * 0.6 * 0.8 / 1.0)
    # a 3 x 1 row of pixels on a sheared grid (second axis at 60 degrees): a parallelogram
    to_mm = np.array([[1.0, 0.5], [0.0, math.sqrt(3) / 2]])
    longest, _, _ = slice_diameters(np.ones((3, 1), bool), to_mm)
    corners = np.array([[-0.5, -0.5], [2.5, 0.5]]) @ to_mm.T
    assert longest == pytest.approx(np.linalg.norm(corners[1] - corners[0]))


def test_lesions_are_ordered_by_volume_and_26_connected():
    labels = np.ones((30, 30, 10), np.uint8)
    labels[2:6, 2:6, 2:6] = 2          # 64 voxels
    labels[10:20, 10:20, 2:6] = 2      # 400 voxels
    labels[20, 20, 6] = 2              # touches the big one at a corner only: same lesion
    burden = tumour_burden(labels, ras_affine((1.0, 1.0, 1.0)), NAMES, None, min_volume_ml=0.05)
    assert [le["id"] for le in burden["lesions"]] == [1, 2]
    assert [le["voxel_count"] for le in burden["lesions"]] == [401, 64]
    assert burden["lesion_volume_ml"] == pytest.approx(0.465) and burden["lesions"][0]["hu"] is None
    assert burden["lesions"][0]["slices"] == [2, 6]


def test_min_volume_filter_and_below_minimum():
    labels = np.ones((20, 20, 20), np.uint8)
    labels[1:8, 1:8, 1:8] = 2          # 343 mm3: listed
    labels[12, 12, 12] = 2             # one voxel each: below 0.1 mL
    labels[15:17, 15, 15] = 2
    burden = tumour_burden(labels, ras_affine((1.0, 1.0, 1.0)), NAMES, None)
    assert burden["lesion_count"] == 1 and burden["lesion_volume_ml"] == pytest.approx(0.343)
    assert burden["below_minimum"] == {"count": 2, "volume_ml": 0.003}
    assert burden["liver_volume_ml"] == pytest.approx(8.0)  # liver label plus every lesion voxel
    assert "(+2 smaller than 0.1 mL" in burden_summary(burden)
    assert tumour_burden(labels, ras_affine((1.0, 1.0, 1.0)), NAMES, None, min_volume_ml=0.0)["lesion_count"] == 3


def test_no_lesions_and_no_lesion_label():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:8, 2:8, 2:8] = 1
    burden = tumour_burden(labels, ras_affine((1.0, 1.0, 2.0)), NAMES, np.zeros(labels.shape))
    assert burden["lesion_count"] == 0 and burden["lesions"] == [] and burden["lesion_volume_ml"] == 0
    assert burden["lesion_fraction_percent"] == 0 and burden["liver_volume_ml"] == pytest.approx(0.432)
    assert lesions_csv(burden) == ",".join(CSV_COLUMNS) + "\n"
    assert burden_summary(burden) == "liver 0 mL; no lesions of 0.1 mL or more"
    empty = tumour_burden(np.zeros((4, 4, 4), np.uint8), np.eye(4), NAMES)
    assert empty["liver_volume_ml"] == 0 and empty["lesion_fraction_percent"] is None
    assert tumour_burden(labels, np.eye(4), ["background", "liver"]) is None


def test_csv_rows_and_summary_line():
    labels, affine, ct, _ = _ellipsoid_case()
    burden = tumour_burden(labels, affine, NAMES, ct)
    rows = list(csv.DictReader(io.StringIO(lesions_csv(burden))))
    assert len(rows) == 1 and tuple(rows[0]) == CSV_COLUMNS
    lesion = burden["lesions"][0]
    assert float(rows[0]["volume_ml"]) == lesion["volume_ml"]
    assert float(rows[0]["centroid_x_lps_mm"]) == lesion["centroid_lps_mm"][0]
    line = burden_summary(burden)
    assert line.startswith(f"liver {burden['liver_volume_ml']:,.0f} mL; 1 lesion, ")
    assert f"% of liver); largest {lesion['volume_ml']:.1f} mL, {lesion['longest_diameter_mm']:.0f} x" in line


def test_predict_case_writes_the_burden_into_report_json_lesions_csv_and_the_log(tmp_path, caplog):
    from liverseg.inference.batch import PredictOptions, predict_case
    from liverseg.modalities.ct import CT

    labels, affine, ct, _ = _ellipsoid_case()
    labels[3:6, 28:35, 1:5] = 2                     # a second, smaller lesion (CT 60 HU there)
    image = write_volume(Volume(ct.astype(np.int16), affine), tmp_path / "ct.nii.gz")
    names = ["background", "liver", "liver lesion"]
    model = SimpleNamespace(segment_volume=lambda volume, threads=None: (labels.copy(), [], {}))
    bundle = SimpleNamespace(cfg=SimpleNamespace(data=SimpleNamespace(labels=names, modality="ct")), model=model,
                             model_id="stand-in", backend="test")
    with caplog.at_level(logging.INFO, logger="liverseg"):
        case, options = Case("c1", image, None), PredictOptions(progress=False, preview=False)
        segmented = CT.segment(bundle, case, CT.read_input(bundle, case, options), options)
        case_dir = predict_case(bundle, case, tmp_path / "out", options, segmented)
    report = json.loads((case_dir / "report.json").read_text())
    burden = report["tumour_burden"]
    assert burden["lesion_count"] == 2 and burden["lesion_labels"] == ["liver lesion"]
    components, _ = ndimage.label(labels == 2)
    assert [le["voxel_count"] for le in burden["lesions"]] == sorted(np.bincount(components.ravel())[1:], reverse=True)
    assert burden["lesions"][0]["hu"]["mean"] == 20.0 and burden["lesions"][1]["hu"]["mean"] == 60.0
    rows = (case_dir / "lesions.csv").read_text().splitlines()
    assert rows[0] == ",".join(CSV_COLUMNS) and len(rows) == 3
    assert not [p for p in case_dir.iterdir() if p.name.startswith(".")]
    assert any(r.getMessage() == f"c1: {burden_summary(burden)}" for r in caplog.records)
