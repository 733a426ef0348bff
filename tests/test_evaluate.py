"""liverseg.evaluate: per-case metrics on volumes and photographs, summaries, worst cases, QC pictures."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from liverseg import metrics
from liverseg.cli import main
from liverseg.evaluation import evaluate, format_table, summarise, worst_cases, write_outputs
from liverseg.io import write_volume
from liverseg.datasets.manifest import load_manifest, write_manifest
from liverseg.reports.case_report import FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE, save_png

from conftest import make_volume


def _box(shape, lo, hi) -> np.ndarray:
    array = np.zeros(shape, dtype=np.uint8)
    array[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return array


@pytest.fixture
def volume_pairs(tmp_path):
    """Three cases on an anisotropic LPS-like grid: perfect, shifted by 2 voxels along axis 0, empty prediction."""
    spacing = (1.5, 1.0, 3.0)
    direction = np.diag([-1.0, -1.0, 1.0])
    shape = (20, 16, 12)
    ref = _box(shape, (5, 4, 3), (15, 12, 9))
    cases = {"a_perfect": ref, "b_shifted": np.roll(ref, 2, axis=0), "c_empty": np.zeros(shape, np.uint8)}
    for name, pred in cases.items():
        write_volume(make_volume(shape, spacing, direction, array=pred), tmp_path / "pred" / name / "segmentation.nii.gz")
        write_volume(make_volume(shape, spacing, direction, array=ref), tmp_path / "ref" / f"{name}.nii.gz")
        image = make_volume(shape, spacing, direction, array=np.where(ref > 0, 60.0, -100.0).astype(np.float32))
        write_volume(image, tmp_path / "images" / f"{name}.nii.gz")
    return tmp_path, ref, spacing


def test_volume_metrics_match_the_metric_functions_in_mm(volume_pairs):
    root, ref, spacing = volume_pairs
    results = {r.case: r for r in evaluate(root / "pred", root / "ref", {1: "liver"})}
    shifted = np.roll(ref, 2, axis=0)
    r = results["b_shifted"]
    assert r.dice == pytest.approx(metrics.dice(shifted, ref))
    assert r.hd95 == pytest.approx(metrics.hd95(shifted, ref, spacing)) and r.hd95 == pytest.approx(3.0)  # 2 x 1.5 mm
    assert r.assd == pytest.approx(metrics.assd(shifted, ref, spacing))
    assert r.surface_dice == pytest.approx(metrics.surface_dice(shifted, ref, spacing, 1.0))
    assert r.unit == "mm" and np.isnan(r.auc)
    assert results["a_perfect"].dice == 1.0 and results["a_perfect"].hd95 == 0.0
    assert results["c_empty"].dice == 0.0 and results["c_empty"].hd95 == float("inf")


def test_summary_worst_cases_and_outputs(volume_pairs, tmp_path):
    root, _, _ = volume_pairs
    results = evaluate(root / "pred", root / "ref", {1: "liver"})
    rows = {(row["label"], row["metric"]): row for row in summarise(results)}
    dices = [r.dice for r in results]
    assert rows[("liver", "dice")]["mean"] == pytest.approx(np.mean(dices))
    assert rows[("liver", "dice")]["sd"] == pytest.approx(np.std(dices, ddof=1))
    assert rows[("liver", "dice")]["median"] == pytest.approx(np.median(dices))
    # the empty prediction's HD95 is inf: left out of the statistics and counted
    assert rows[("liver", "hd95")]["n"] == 2 and rows[("liver", "hd95")]["n_not_finite"] == 1
    assert [r.case for r in worst_cases(results)["liver"]] == ["c_empty", "b_shifted", "a_perfect"]
    table = format_table(results)
    assert "worst Dice: c_empty 0.0000" in table and "mean" in table
    written = write_outputs(results, tmp_path / "out")
    with written["per_case"].open() as handle:
        assert [row["case"] for row in csv.DictReader(handle)] == ["a_perfect", "b_shifted", "c_empty"]


def test_volume_qc_marks_false_negatives_blue_and_false_positives_red(volume_pairs, tmp_path):
    root, ref, spacing = volume_pairs
    cases = [{"id": name, "image": f"images/{name}.nii.gz", "label": f"ref/{name}.nii.gz"}
             for name in ("a_perfect", "b_shifted", "c_empty")]
    write_manifest(root / "m.json", "boxes", {"background": 0, "liver": 1}, cases, {"test": [c["id"] for c in cases]})
    assert main(["evaluate", str(root / "pred"), "--manifest", str(root / "m.json"), "--split", "test"]) == 0
    qc = root / "pred" / "evaluation" / "qc"
    shifted = np.asarray(Image.open(qc / "b_shifted.png").convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in shifted.tolist()}
    assert {FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE} <= colours
    # a 2-voxel shift along axis 0 over a 10 x 8 box face: 2 x 8 FN and 2 x 8 FP pixels on the chosen slice
    counts = {c: int(np.all(shifted == c, axis=1).sum()) for c in (FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE)}
    assert counts == {FALSE_NEGATIVE: 16, FALSE_POSITIVE: 16, TRUE_POSITIVE: 64}
    empty = np.asarray(Image.open(qc / "c_empty.png").convert("RGB")).reshape(-1, 3)
    assert int(np.all(empty == FALSE_NEGATIVE, axis=1).sum()) == 80 and not np.all(empty == FALSE_POSITIVE, axis=1).any()


def test_photo_metrics_are_restricted_to_the_field_of_view_and_auc_uses_the_probability_map(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.random((30, 40)) < 0.2
    fov = np.zeros((30, 40), dtype=bool)
    fov[3:27, 4:36] = True
    probability = np.clip(ref * 0.4 + rng.random((30, 40)) * 0.6, 0, 1)
    pred = probability > 0.5
    pred[0, 0] = True  # a false positive outside the field of view must not count
    Image.fromarray(ref.astype(np.uint8) * 255).save(tmp_path / "ref.png")
    Image.fromarray(fov.astype(np.uint8) * 255).save(tmp_path / "fov.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "img.png")
    save_png(pred.astype(np.uint8) * 255, tmp_path / "pred" / "c1" / "mask.png")
    save_png(np.rint(probability * 65535).astype(np.uint16), tmp_path / "pred" / "c1" / "probability.png")
    write_manifest(tmp_path / "m.json", "toy", {"background": 0, "vessel": 1},
                   [{"id": "c1", "image": "img.png", "label": "ref.png", "fov": "fov.png"}], {"test": ["c1"]})
    manifest = load_manifest(tmp_path / "m.json")
    pooled = {}
    [result] = evaluate(tmp_path / "pred", None, {1: "vessel"}, manifest=manifest, split="test",
                        qc_dir=tmp_path / "qc", pooled_auc=pooled)
    quantised = np.rint(probability * 65535) / 65535
    assert result.auc == pytest.approx(metrics.roc_auc(quantised, ref, fov), abs=1e-12)
    assert pooled == {"vessel": pytest.approx(result.auc, abs=1e-12)}  # one case: pooled = per case
    assert result.dice == pytest.approx(metrics.dice(pred[fov], ref[fov]))
    assert result.specificity == pytest.approx(metrics.specificity(pred[fov], ref[fov]))
    assert result.pred_voxels == int(pred[fov].sum()) and result.unit == "px"
    qc = np.asarray(Image.open(tmp_path / "qc" / "c1.png").convert("RGB"))
    assert tuple(qc[0, 0]) != FALSE_POSITIVE  # outside the field of view: not marked


def test_manifest_without_prediction_names_the_case(volume_pairs, capfd):
    root, _, _ = volume_pairs
    cases = [{"id": "zz_missing", "image": "images/a_perfect.nii.gz", "label": "ref/a_perfect.nii.gz"}]
    write_manifest(root / "m2.json", "boxes", {"background": 0, "liver": 1}, cases, {"test": ["zz_missing"]})
    assert main(["evaluate", str(root / "pred"), "--manifest", str(root / "m2.json")]) == 2
    err = capfd.readouterr().err
    assert "no prediction for case zz_missing" in err and len(err.strip().splitlines()) == 1


def test_pooled_auc_ranks_pixels_of_all_cases_together(tmp_path):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    cases, all_scores, all_truth = [], [], []
    for index, shift in enumerate((0.0, 0.3)):  # the second case's scores run higher: pooled != mean per case
        ref = rng.random((20, 20)) < 0.3
        probability = np.clip(ref * 0.3 + rng.random((20, 20)) * 0.6 + shift * 0.3, 0, 1)
        probability = np.rint(probability * 65535) / 65535
        Image.fromarray(ref.astype(np.uint8) * 255).save(tmp_path / f"ref{index}.png")
        save_png((probability > 0.5).astype(np.uint8) * 255, tmp_path / "pred" / f"c{index}" / "mask.png")
        save_png(np.rint(probability * 65535).astype(np.uint16), tmp_path / "pred" / f"c{index}" / "probability.png")
        cases.append({"id": f"c{index}", "image": f"ref{index}.png", "label": f"ref{index}.png"})
        all_scores.append(probability.ravel())
        all_truth.append(ref.ravel())
    write_manifest(tmp_path / "m.json", "toy", {"background": 0, "vessel": 1}, cases, {"test": ["c0", "c1"]})
    pooled = {}
    results = evaluate(tmp_path / "pred", None, {1: "vessel"}, manifest=load_manifest(tmp_path / "m.json"),
                       split="test", pooled_auc=pooled)
    expected = roc_auc_score(np.concatenate(all_truth), np.concatenate(all_scores))
    assert pooled["vessel"] == pytest.approx(expected, abs=1e-9)
    assert pooled["vessel"] != pytest.approx(np.mean([r.auc for r in results]), abs=1e-4)
    written = write_outputs(results, tmp_path / "out", pooled)
    with written["summary"].open() as handle:
        rows = {r["metric"]: r for r in csv.DictReader(handle)}
    assert float(rows["auc_pooled"]["mean"]) == pytest.approx(expected, abs=1e-6)


def test_manifest_references_in_png_slices_are_placed_on_the_image_grid(tmp_path):
    """A CHAOS-style reference (one PNG per DICOM file): evaluate reads it through io.labels, on the image grid."""
    from liverseg.phantoms.dicom import write_series

    from liverseg.io import read_volume

    stored = np.random.default_rng(0).integers(0, 2000, (4, 12, 10)).astype(np.uint16)
    case = tmp_path / "CT" / "1"
    write_series(case / "DICOM_anon", stored, names=[f"i{k:04d}.dcm" for k in range(4)])
    (case / "Ground").mkdir()
    for k in range(4):
        mask = np.zeros((12, 10), np.uint8)
        mask[2:6, 3:7] = 255 * (k % 2)
        Image.fromarray(mask).save(case / "Ground" / f"liver_GT_{k:03d}.png")
    image = read_volume(case / "DICOM_anon")
    from liverseg.io.labels import read_label

    # The prediction is built by hand on the image grid (i = column, j = row, k = file): the liver square
    # on the odd slices. A reference placed anywhere else would not give Dice 1.
    expected = np.zeros(image.shape, np.uint8)
    expected[3:7, 2:6, 1::2] = 1
    np.testing.assert_array_equal(read_label(case / "Ground", image, "png_slices", {"liver": 1}).array, expected)
    write_volume(image.with_array(expected), tmp_path / "pred" / "c1" / "segmentation.nii.gz")
    manifest = {"name": "chaos-like", "labels": {"background": 0, "liver": 1}, "label_format": "png_slices",
                "structures": {"liver": 1},
                "cases": [{"id": "c1", "image": "CT/1/DICOM_anon", "label": "CT/1/Ground"}], "splits": {"test": ["c1"]}}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    [result] = evaluate(tmp_path / "pred", None, {1: "liver"}, manifest=load_manifest(tmp_path / "m.json"),
                        split="test", qc_dir=tmp_path / "qc")
    assert result.dice == 1.0 and result.ref_voxels == 32 and (tmp_path / "qc" / "c1.png").is_file()
