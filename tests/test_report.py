"""report.json figures, preview.png orientation/aspect, and the 2D contour / error-overlay helpers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ellipsoid_mask, make_volume, permutation, rotation, world_centre
from PIL import Image

from liverseg.errors import GeometryError
from liverseg.io.volume import Volume
from liverseg.reports.case_report import (FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE, case_report, contour_mask,
                                          draw_contours, error_overlay, save_png, write_preview_png, write_report)

NAMES = ("background", "liver", "tumour", "spleen")


def _case(direction, spacing=(1.5, 2.0, 3.0), shape=(20, 16, 10)):
    rng = np.random.default_rng(1)
    image = make_volume(shape, spacing, direction, (5.0, -7.0, 11.0),
                        array=rng.normal(0, 30, shape).astype(np.float32))
    labels = np.zeros(shape, np.uint8)
    labels[2:12, 3:10, 2:7] = 1
    labels[4:6, 4:6, 3:5] = 2
    image.array[labels == 1] += 60.0
    image.array[labels == 2] = 25.0
    return image, image.with_array(labels)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), rotation(1, 30.0) @ permutation((1, 2, 0))])
def test_report_volumes_and_hu(tmp_path, direction):
    image, labels = _case(direction)
    report = case_report(image, labels, NAMES, runtime_s=1.25, model_id="run-7", input_path=tmp_path / "ct.nii.gz",
                         extra={"tta": False})
    voxel_ml = 1.5 * 2.0 * 3.0 / 1000.0
    counts = np.bincount(labels.array.ravel(), minlength=4)
    for value, name in enumerate(NAMES[1:], start=1):
        entry = report["labels"][name]
        assert entry["voxel_count"] == counts[value]
        assert entry["volume_ml"] == counts[value] * image.voxel_volume_ml
        assert entry["volume_ml"] == pytest.approx(counts[value] * voxel_ml, rel=1e-12)
    liver_hu = image.array[labels.array == 1].astype(np.float64)
    hu = report["labels"]["liver"]["hu"]
    assert hu["mean"] == pytest.approx(liver_hu.mean(), abs=1e-3)
    assert hu["std"] == pytest.approx(liver_hu.std(), abs=1e-3)
    assert (hu["min"], hu["max"]) == (pytest.approx(liver_hu.min(), abs=1e-3), pytest.approx(liver_hu.max(), abs=1e-3))
    assert hu["p50"] == pytest.approx(np.median(liver_hu), abs=1e-3)
    assert hu["p5"] <= hu["p25"] <= hu["p50"] <= hu["p75"] <= hu["p95"]
    assert report["labels"]["tumour"]["hu"]["std"] == 0.0 and report["labels"]["tumour"]["hu"]["mean"] == 25.0
    assert report["labels"]["spleen"] == {"label_value": 3, "voxel_count": 0, "volume_ml": 0.0, "hu": None}
    geo = report["geometry"]
    assert geo["shape"] == [20, 16, 10]
    np.testing.assert_allclose(geo["spacing_mm"], [1.5, 2.0, 3.0])
    np.testing.assert_allclose(geo["affine_ras"], image.affine_ras)
    assert report["runtime_s"] == 1.25 and report["model_id"] == "run-7" and report["extra"] == {"tta": False}
    assert report["liverseg_version"] and report["timestamp"].endswith("+00:00")

    path = write_report(report, tmp_path / "out" / "report.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_report_orientation_codes_and_grid_check():
    image, labels = _case(np.diag([-1.0, -1.0, 1.0]))
    assert case_report(image, labels, NAMES, runtime_s=0, model_id="m", input_path="x")["geometry"]["orientation"] == "LPS"
    image_ras, _ = _case(np.eye(3))
    assert case_report(image_ras, image_ras.with_array(labels.array), NAMES, runtime_s=0, model_id="m",
                       input_path="x")["geometry"]["orientation"] == "RAS"
    with pytest.raises(GeometryError, match="not on the image grid"):
        case_report(image, image_ras.with_array(labels.array), NAMES, runtime_s=0, model_id="m", input_path="x")


# ----------------------------------------------------------------------------- preview

def _phantom(shape, spacing, direction):
    """Body + 'liver' sphere (25 mm radius) in the patient's right-anterior-superior part, world-placed."""
    affine = make_volume(shape, spacing, direction).affine_ras
    affine[:3, 3] -= world_centre(shape, affine)
    body = ellipsoid_mask(shape, affine, (0, 0, 0), (90, 70, 80))
    liver = ellipsoid_mask(shape, affine, (35.0, 25.0, 21.0), (25, 25, 25))
    hu = np.where(body, 0.0, -1000.0) + np.where(liver, 60.0, 0.0)
    return Volume(hu.astype(np.float32), affine), Volume(liver.astype(np.uint8), affine)


@pytest.mark.parametrize("direction,spacing", [
    (np.eye(3), (4.0, 4.0, 4.0)),
    (np.diag([-1.0, -1.0, 1.0]), (4.0, 4.0, 4.0)),
    (permutation((2, 0, 1), (-1, 1, -1)), (4.0, 4.0, 4.0)),
])
def test_preview_same_picture_whatever_the_voxel_order(tmp_path, direction, spacing):
    shape_world = (50, 44, 42)  # extent along R, A, S in voxels
    shape = tuple(shape_world[int(np.argmax(np.abs(direction[:, a])))] for a in range(3))
    image, labels = _phantom(shape, spacing, direction)
    names = ("background", "liver")
    path = write_preview_png(image, labels, tmp_path / "preview.png", names, panel_px=400)
    reference_image, reference_labels = _phantom(shape_world, spacing, np.eye(3))
    reference = write_preview_png(reference_image, reference_labels, tmp_path / "ref.png", names, panel_px=400)
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    b = np.asarray(Image.open(reference).convert("RGB")).astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1
    liver_a, liver_b = (a == (221, 130, 101)).all(-1), (b == (221, 130, 101)).all(-1)
    assert liver_a.sum() > 100
    np.testing.assert_array_equal(liver_a, liver_b)


def test_preview_radiological_orientation_and_aspect(tmp_path):
    # anisotropic voxels: 2 x 2 x 6 mm; the liver is a sphere in mm, so its outline must be round
    image, labels = _phantom((60, 52, 20), (2.0, 2.0, 6.0), np.diag([-1.0, -1.0, 1.0]))
    path = write_preview_png(image, labels, tmp_path / "p.png", ("background", "liver"), panel_px=240)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    liver = (rgb == (221, 130, 101)).all(-1)
    # field of view: R-L 120 mm, A-P 104 mm, S-I 120 mm -> 0.5 mm per pixel; panels 4 px apart
    axial, coronal, sagittal = liver[4:212, 4:244], liver[4:244, 248:488], liver[4:244, 492:700]
    rows, cols = np.nonzero(axial)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert abs(height - width) <= 2 and 90 <= width <= 102       # 25 mm radius: a circle stays a circle
    # liver centre at R 35, A 25, S 21 mm. Axial: patient right on the image's LEFT, anterior at the TOP
    assert cols.mean() == pytest.approx(120 - 70, abs=3) and rows.mean() == pytest.approx(104 - 50, abs=3)
    rows, cols = np.nonzero(coronal)                              # right on the left, superior at the top
    assert cols.mean() == pytest.approx(120 - 70, abs=3) and rows.mean() == pytest.approx(120 - 42, abs=7)
    rows, cols = np.nonzero(sagittal)                             # anterior on the left, superior at the top
    assert cols.mean() == pytest.approx(104 - 50, abs=3) and rows.mean() == pytest.approx(120 - 42, abs=7)
    assert np.ptp(rows) + 1 == pytest.approx(np.ptp(cols) + 1, abs=12)  # 6 mm slices: round up to one slice
    legend = rgb[-20:]
    assert (legend == (221, 130, 101)).all(-1).any()               # legend swatch in the liver colour


def test_preview_empty_labels_uses_the_middle(tmp_path):
    image, labels = _phantom((20, 18, 16), (5.0, 5.0, 5.0), np.eye(3))
    empty = labels.with_array(np.zeros(labels.shape, np.uint8))
    path = write_preview_png(image, empty, tmp_path / "empty.png", ("background", "liver"))
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert not (rgb[:-20] == (221, 130, 101)).all(-1).any()
    assert rgb.shape[0] > 20 and rgb.shape[1] > 60
    from liverseg.reports.case_report import _centre_voxel

    assert _centre_voxel(empty.array) == tuple(s // 2 for s in empty.shape)  # the slices the mosaic shows


# ----------------------------------------------------------------------------- 2D helpers

def test_contour_is_the_erosion_difference():
    mask = np.zeros((7, 8), bool)
    mask[1:6, 2:7] = True
    ring = contour_mask(mask)
    expected = mask.copy()
    expected[2:5, 3:6] = False
    np.testing.assert_array_equal(ring, expected)
    thick = contour_mask(mask, width=2)
    expected2 = mask.copy()
    expected2[3, 4] = False
    np.testing.assert_array_equal(thick, expected2)
    edge = np.ones((3, 3), bool)                       # touching the border: border pixels are boundary
    assert contour_mask(edge).sum() == 8


def test_draw_contours_on_grey_and_rgb():
    grey = np.full((6, 6), 40, np.uint8)
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    out = draw_contours(grey, mask, (255, 0, 0))
    assert out.shape == (6, 6, 3) and out.dtype == np.uint8
    assert (out[1, 1] == (255, 0, 0)).all() and (out[2, 2] == (40, 40, 40)).all() and (out[0, 0] == 40).all()
    rgb = np.zeros((6, 6, 3), np.uint8)
    out2 = draw_contours(rgb, mask, (0, 255, 0), width=2)
    assert (out2[2, 2] == (0, 255, 0)).all() and rgb.max() == 0       # input untouched
    with pytest.raises(ValueError, match="mask shape"):
        draw_contours(rgb, mask[:5], (1, 2, 3))


def test_error_overlay_colours():
    background = np.full((2, 3), 100, np.uint8)
    pred = np.array([[1, 1, 0], [0, 0, 0]], bool)
    ref = np.array([[1, 0, 1], [0, 0, 0]], bool)
    out = error_overlay(background, pred, ref)
    assert tuple(out[0, 0]) == TRUE_POSITIVE and TRUE_POSITIVE == (0, 255, 0)
    assert tuple(out[0, 1]) == FALSE_POSITIVE and FALSE_POSITIVE == (255, 0, 0)
    assert tuple(out[0, 2]) == FALSE_NEGATIVE and FALSE_NEGATIVE == (0, 0, 255)
    assert (out[1] == 100).all()
    half = error_overlay(background, pred, ref, alpha=0.5)
    assert tuple(half[0, 1]) == (178, 50, 50)


def test_save_png_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3)).astype(np.uint8)
    path = save_png(rgb, tmp_path / "a" / "x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
    mask = save_png(np.eye(4, dtype=bool), tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(Image.open(mask)), np.eye(4, dtype=np.uint8) * 255)
    with pytest.raises(ValueError, match="uint8"):
        save_png(np.zeros((3, 3), np.float32), tmp_path / "f.png")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "m.png", "x.png"]


def test_preview_centre_on_a_strided_view_and_tiny_labels(monkeypatch):
    from liverseg.reports import case_report as report

    labels = np.zeros((30, 20, 12), np.uint8)
    labels[3:9, 10:16, 2:6] = 1                      # centroid (5.5, 12.5, 3.5) -> within a voxel
    labels[20, 4, 9] = 2                             # a single voxel: smaller than the stride
    assert report._centre_voxel(labels) == (6, 12, 4)                # Python rounds halves to even
    monkeypatch.setattr(report, "_CENTRE_SAMPLE_VOXELS", 300)    # stride 4
    centre = report._centre_voxel(labels)
    assert all(abs(c - e) <= 2 for c, e in zip(centre, (5.5, 12.5, 3.5)))
    only_tiny = np.zeros_like(labels)
    only_tiny[21, 5, 10] = 3                         # missed by the strided view: full-resolution fallback
    assert report._centre_voxel(only_tiny) == (21, 5, 10)
    assert report._centre_voxel(np.zeros_like(labels)) == (15, 10, 6)
