"""liverseg evaluate with a lesion label: lesions.csv, the lesion_* summary rows, the table, the options."""
from __future__ import annotations

import csv
from dataclasses import fields

import numpy as np
import pytest

from liverseg.cli import main
from liverseg.errors import InputError
from liverseg.evaluation import CaseResult, evaluate, format_table, lesion_label_of
from liverseg.io import write_volume
from liverseg.reports.case_report import save_png

from conftest import make_volume
from test_lesion_metrics import SHAPE, _hand_case

SPACING = (0.8, 0.8, 2.5)  # 1.6 mm^3 per voxel
VOXEL_ML = 0.8 * 0.8 * 2.5 / 1000


def _label_map(tumour: np.ndarray) -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:19, 1:19, 1:19] = 1  # liver around the lesions
    labels[tumour] = 2
    return labels


@pytest.fixture
def lesion_cases(tmp_path):
    """c1: the hand-built case of test_lesion_metrics (TP 2, FP 2, FN 1); c2: liver only on both sides."""
    pred, ref = _hand_case()
    no_tumour = np.zeros(SHAPE, dtype=bool)
    for name, (p, r) in {"c1": (pred, ref), "c2": (no_tumour, no_tumour)}.items():
        write_volume(make_volume(SHAPE, SPACING, array=_label_map(p)), tmp_path / "pred" / name / "segmentation.nii.gz")
        write_volume(make_volume(SHAPE, SPACING, array=_label_map(r)), tmp_path / "ref" / f"{name}.nii.gz")
    return tmp_path


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_lesions_csv_and_pooled_summary_rows(lesion_cases, capsys):
    root = lesion_cases
    assert main(["evaluate", str(root / "pred"), str(root / "ref"), "--labels", "1=liver,2=tumour", "--no-qc"]) == 0
    out = capsys.readouterr().out
    evaluation = root / "pred" / "evaluation"
    lesions = {row["case"]: row for row in _rows(evaluation / "lesions.csv")}
    c1, c2 = lesions["c1"], lesions["c2"]
    assert (c1["name"], c1["label"]) == ("tumour", "2")
    assert [int(c1[k]) for k in ("ref_lesions", "pred_lesions", "tp", "fp", "fn")] == [3, 5, 2, 2, 1]
    assert float(c1["precision"]) == pytest.approx(0.5, abs=1e-6)
    assert float(c1["recall"]) == pytest.approx(2 / 3, abs=1e-6)
    assert float(c1["f1"]) == pytest.approx(4 / 7, abs=1e-6)
    assert float(c1["dice"]) == pytest.approx(2 * 144 / (164 + 219), abs=1e-6)
    assert float(c1["ref_volume_ml"]) == pytest.approx(219 * VOXEL_ML, abs=1e-6)
    assert (c1["connectivity"], float(c1["min_volume_ml"]), float(c1["min_iou"])) == ("26", 0.0, 0.0)
    # no lesion on either side: counts 0, detection scores undefined, Dice 1 (as in per_case.csv)
    assert [int(c2[k]) for k in ("ref_lesions", "pred_lesions", "tp", "fp", "fn")] == [0, 0, 0, 0, 0]
    assert [c2[k] for k in ("precision", "recall", "f1")] == ["nan", "nan", "nan"]
    assert float(c2["dice"]) == 1.0

    summary = {(row["label"], row["metric"]): row for row in _rows(evaluation / "summary.csv")}
    assert float(summary[("tumour", "lesion_dice_global")]["mean"]) == pytest.approx(288 / 383, abs=1e-6)
    assert float(summary[("tumour", "lesion_dice")]["mean"]) == pytest.approx((288 / 383 + 1) / 2, abs=1e-6)
    assert float(summary[("tumour", "lesion_precision_pooled")]["mean"]) == pytest.approx(0.5, abs=1e-6)
    assert float(summary[("tumour", "lesion_recall_pooled")]["mean"]) == pytest.approx(2 / 3, abs=1e-6)
    recall = summary[("tumour", "lesion_recall")]
    assert (recall["n"], recall["n_not_finite"]) == ("1", "1")  # c2's recall is NaN: counted, left out
    assert [summary[("tumour", m)]["mean"] for m in ("ref_lesions_total", "lesion_tp_total", "lesion_fp_total",
                                                     "lesion_fn_total")] == ["3", "2", "2", "1"]
    assert not any(label == "liver" and metric.startswith("lesion") for label, metric in summary)
    # per_case.csv keeps its columns
    with (evaluation / "per_case.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == [f.name for f in fields(CaseResult)]
    assert "Dice global (all 2 cases' voxels pooled): 0.7520" in out
    assert "TP 2, FP 2, FN 1; precision 0.5000, recall 0.6667, f1 0.5714" in out
    assert "26-connected components, detected by any overlap" in out


def test_cli_min_volume_iou_and_explicit_label(lesion_cases, tmp_path, capsys):
    root = lesion_cases
    # FP1 is 8 voxels = 0.0128 mL, every other component at least 12 voxels = 0.0192 mL
    assert main(["evaluate", str(root / "pred"), str(root / "ref"), "--lesion-label", "2", "--lesion-min-volume",
                 "0.015", "--no-qc", "-o", str(tmp_path / "small")]) == 0
    [c1] = [row for row in _rows(tmp_path / "small" / "lesions.csv") if row["case"] == "c1"]
    assert c1["name"] == "label_2" and [int(c1[k]) for k in ("pred_lesions", "tp", "fp", "fn")] == [4, 2, 1, 1]
    assert float(c1["precision"]) == pytest.approx(2 / 3, abs=1e-6)
    assert main(["evaluate", str(root / "pred"), str(root / "ref"), "--labels", "1=liver,2=Tumor", "--lesion-min-iou",
                 "0.5", "--lesion-connectivity", "6", "--no-qc", "-o", str(tmp_path / "iou")]) == 0
    [c1] = [row for row in _rows(tmp_path / "iou" / "lesions.csv") if row["case"] == "c1"]
    assert [int(c1[k]) for k in ("tp", "fp", "fn")] == [1, 4, 2] and c1["connectivity"] == "6"
    capsys.readouterr()


def test_no_lesion_label_leaves_the_outputs_as_they_were(lesion_cases, tmp_path, capsys):
    root = lesion_cases
    for extra, out in ((["--labels", "1=liver,2=vessel"], "named"), (["--labels", "1=liver,2=tumour",
                                                                     "--lesion-label", "none"], "none"), ([], "bare")):
        assert main(["evaluate", str(root / "pred"), str(root / "ref"), "--no-qc", "-o", str(tmp_path / out),
                     *extra]) == 0
        assert not (tmp_path / out / "lesions.csv").exists()
        assert not any(row["metric"].startswith("lesion") for row in _rows(tmp_path / out / "summary.csv"))
        assert "lesions:" not in capsys.readouterr().out
    lesions = []
    results = evaluate(root / "pred", root / "ref", {1: "liver", 2: "tumour"}, lesions=lesions)
    assert len(lesions) == 2 and format_table(results, lesions).startswith(format_table(results))


def test_lesion_label_rule_and_bad_options(lesion_cases, tmp_path, capfd):
    assert lesion_label_of({1: "liver", 2: " Lesions "}) == 2 and lesion_label_of({1: "liver", 3: "Liver_Tumor"}) == 3
    assert lesion_label_of({1: "liver", 2: "vessel"}) is None and lesion_label_of(None) is None
    with pytest.raises(InputError, match="--lesion-label"):
        lesion_label_of({1: "tumour", 2: "lesion"})
    root = lesion_cases
    for option in (["--lesion-label", "0"], ["--lesion-min-volume", "-1"], ["--lesion-min-iou", "2"]):
        assert main(["evaluate", str(root / "pred"), str(root / "ref"), "--no-qc", *option]) == 2
        assert "error" in capfd.readouterr().err
    # photographs: an explicit lesion label is refused, a lesion-named label is skipped
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    save_png(mask, tmp_path / "photo" / "pred.png")
    save_png(mask, tmp_path / "photo" / "ref.png")
    with pytest.raises(InputError, match="volumes"):
        evaluate(tmp_path / "photo" / "pred.png", tmp_path / "photo" / "ref.png", {1: "lesion"}, lesions=[],
                 lesion_label=1)
    lesions = []
    [result] = evaluate(tmp_path / "photo" / "pred.png", tmp_path / "photo" / "ref.png", {1: "lesion"}, lesions=lesions)
    assert result.dice == 1.0 and lesions == []
