"""The demos: the built-in model on the packaged CT (``liverseg demo``), and the training road on a short
budget (``liverseg demo --train``: phantoms -> train -> predict -> evaluate)."""
from __future__ import annotations

import csv

import pytest

from liverseg.cli import main


@pytest.mark.slow
def test_demo_segments_the_packaged_ct_with_the_built_in_model(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--threads", "2", "-q"]) == 0
    printed = capsys.readouterr().out
    dice = float(printed.split("Dice ")[1].split(",")[0])
    assert dice > 0.9, printed  # against TotalSegmentator v1's (model-made) mask
    for name in ("segmentation.nii.gz", "segmentation.seg.nrrd", "labels.ctbl", "report.json", "preview.png"):
        assert (out / "totalseg_example" / name).is_file()
    assert "segmentation.seg.nrrd" in printed and "3D Slicer" in printed


@pytest.mark.slow
def test_training_demo_runs_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--train", "-o", str(out), "--minutes", "0.3", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "Mean liver Dice" in printed
    with (out / "evaluation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    # Even a 20-second model must find the liver somewhere near the right place.
    assert all(float(r["dice"]) > 0.3 for r in rows), rows
    for row in rows:
        assert (out / "predictions" / row["case"] / "segmentation.nii.gz").is_file()
    # A second run replaces the demo folder instead of failing on the existing run.
    assert main(["demo", "--train", "-o", str(out), "--minutes", "0.1", "-q"]) == 0


def test_demo_refuses_a_foreign_folder(tmp_path, capsys) -> None:
    (tmp_path / "precious.txt").write_text("not a demo")
    assert main(["demo", "-o", str(tmp_path), "--minutes", "0.1", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err
    assert (tmp_path / "precious.txt").exists()
