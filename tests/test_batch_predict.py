"""Batch prediction from the command line: folders of inputs and manifests, one line per failed case
(skipped, exit 2 at the end), no overwriting without --overwrite, no partial case folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.cli import main
from liverseg.modalities import ct_case
from liverseg.engine import loaded as loaded_module
from liverseg.io import write_volume

from conftest import make_volume


@pytest.fixture(scope="module")
def run_dir(untrained_run) -> Path:
    return untrained_run


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    for index, shape in enumerate([(20, 18, 9), (16, 22, 7), (18, 18, 8)]):
        rng = np.random.default_rng(index)
        write_volume(make_volume(shape, (4.0, 4.0, 5.0), array=rng.integers(-200, 300, shape).astype(np.int16)),
                     folder / f"case{index}.nii.gz")
    return folder


def _one_line_errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if "failed" in line or "error" in line]


def test_a_folder_of_inputs_gives_one_case_folder_each(run_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["batch_summary.csv", "case0", "case1", "case2"]
    for case in ("case0", "case1", "case2"):
        written = sitk.ReadImage(str(out / case / "segmentation.nii.gz"))
        assert written.GetSize() == sitk.ReadImage(str(inputs / f"{case}.nii.gz")).GetSize()
        assert {p.name for p in (out / case).iterdir()} == {
            "segmentation.nii.gz", "segmentation.seg.nrrd", "labels.ctbl", "report.json", "preview.png"}
    assert str(out / "case1" / "segmentation.nii.gz") in capsys.readouterr().out


def test_manifest_split_predicts_its_cases_into_case_id_folders(run_dir, inputs, tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"cases": [{"id": f"id{i}", "image": f"case{i}.nii.gz"} for i in range(3)],
                                    "splits": {"test": ["id2", "id0"], "train": ["id1"]}}))
    out = tmp_path / "out"
    assert main(["predict", "--manifest", str(manifest), "--root", str(inputs), "--split", "test", "-o", str(out),
                 "--model", str(run_dir), "--device", "cpu", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["batch_summary.csv", "id0", "id2"]


def test_a_failing_case_is_reported_and_skipped_and_the_run_exits_2(run_dir, inputs, tmp_path, capfd, monkeypatch):
    real = loaded_module.predict_volume

    def flaky(model, volume, *args, **kwargs):
        if "case1" in str(volume.meta.get("path", "")):
            raise RuntimeError("simulated out-of-memory in the network")
        return real(model, volume, *args, **kwargs)

    monkeypatch.setattr(loaded_module, "predict_volume", flaky)
    out = tmp_path / "out"
    code = main(["predict", str(inputs), "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q"])
    captured = capfd.readouterr()
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["batch_summary.csv", "case0", "case2"]  # no partial for case1
    lines = [line for line in captured.err.splitlines() if "case1" in line]
    assert any("simulated out-of-memory" in line for line in lines)
    assert "1 of 3 case(s) failed: case1" in captured.err


def test_existing_outputs_are_kept_unless_overwrite(run_dir, inputs, tmp_path, capfd):
    out = tmp_path / "out"
    image = str(inputs / "case0.nii.gz")
    assert main(["predict", image, "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q"]) == 0
    marker = out / "case0" / "segmentation.nii.gz"
    before = marker.stat().st_mtime_ns
    capfd.readouterr()
    code = main(["predict", image, "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q"])
    err = capfd.readouterr().err
    assert code == 2 and str(out / "case0") in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert marker.stat().st_mtime_ns == before
    assert main(["predict", image, "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q",
                 "--overwrite"]) == 0
    assert marker.stat().st_mtime_ns != before
    assert sorted(p.name for p in out.iterdir()) == ["batch_summary.csv", "case0"]  # nothing left from the swap


def test_an_interrupted_case_leaves_no_partial_folder(run_dir, inputs, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ct_case, "write_case_outputs", interrupted)
    out = tmp_path / "out"
    code = main(["predict", str(inputs / "case0.nii.gz"), "-o", str(out), "--model", str(run_dir), "--device", "cpu",
                 "-q"])
    assert code == 130
    assert list(out.iterdir()) == []  # segmentation.nii.gz was written inside the temporary folder only


def test_predict_only_accepts_infer_overrides(run_dir, inputs, tmp_path, capfd):
    code = main(["predict", str(inputs / "case0.nii.gz"), "-o", str(tmp_path / "o"), "--model", str(run_dir),
                 "--device", "cpu", "-q", "--set", "train.lr=0.1"])
    assert code == 2 and "only infer.* settings" in capfd.readouterr().err
    assert main(["predict", str(inputs / "case0.nii.gz"), "-o", str(tmp_path / "o"), "--model", str(run_dir),
                 "--device", "cpu", "-q", "--set", "infer.tta_flip_axes=[0]", "--set",
                 "infer.min_object_ml={liver: 1.0}"]) == 0


def test_series_option_reaches_the_dicom_reader(run_dir, tmp_path):
    from test_cli import _write_dicom_series

    folder = tmp_path / "two_series"
    folder.mkdir()
    for index, n_slices in enumerate((3, 6)):
        _write_dicom_series(folder, f"1.2.826.0.1.3680043.8.498.{index + 1}", n_slices, index)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-o", str(out), "--model", str(run_dir), "--device", "cpu", "-q",
                 "--no-preview", "--series", "1.2.826.0.1.3680043.8.498.1"]) == 0
    assert sitk.ReadImage(str(out / "two_series" / "segmentation.nii.gz")).GetSize() == (20, 24, 3)
