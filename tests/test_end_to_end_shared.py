"""End to end on the real CT samples in ../shared/data: train on LiTS case 117, predict the
TotalSegmentator example (JPEG 2000 DICOM series and 3 mm NIfTI) and a pyradiomics NRRD with the
checkpoint (PyTorch) and with the exported model.onnx (ONNX Runtime), and check that every output of
every case has exactly the input's geometry as SimpleITK reads it and describes the same mask: the
NIfTI label map, the .seg.nrrd as pynrrd reads it (segment metadata), the DICOM SEG as highdicom
reads it back, and the report's volumes (voxel count x voxel volume)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import read_dicom_seg_frames
from liverseg.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LITS = SHARED_DATA / "lits117"
TOTALSEG = SHARED_DATA / "totalseg_example"
DICOM_SERIES = TOTALSEG / "dicom_series_jpeg2000"
CT_3MM = TOTALSEG / "ct_3mm.nii.gz"
LUNG_NRRD = SHARED_DATA / "pyradiomics_lung" / "lung1_image.nrrd"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (LITS / "ct.nii.gz").exists() or not DICOM_SERIES.is_dir() or not CT_3MM.exists(),
                       reason=f"real sample data not found under {SHARED_DATA} (the ../shared folder beside "
                              "the repository); these end-to-end tests need it"),
]


def read_sitk_reference(path: Path) -> sitk.Image:
    """The input as SimpleITK reads it: ImageSeriesReader for a DICOM folder, ReadImage for a file."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def assert_same_geometry(output: sitk.Image, reference: sitk.Image) -> None:
    assert output.GetSize() == reference.GetSize()
    np.testing.assert_allclose(output.GetSpacing(), reference.GetSpacing(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(output.GetOrigin(), reference.GetOrigin(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(output.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def lits_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("lits")
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps({
        "name": "lits117", "labels": {"background": 0, "liver": 1},
        "cases": [{"id": "lits117", "image": "ct.nii.gz", "label": "label.nii.gz"}],
        "splits": {"train": ["lits117"], "val": ["lits117"]}}))
    run_dir = work / "run"
    code = main(["train", "--config", str(REPO / "configs" / "smoke_3d.yaml"), "--run-dir", str(run_dir),
                 "--set", f"data.manifest={manifest}", "--set", f"data.root={LITS}",
                 "--set", "data.label_remap={2: 1}", "-q"])
    assert code == 0
    if importlib.util.find_spec("onnxruntime") is not None:  # what train writes unless export_onnx is off
        assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    return run_dir


BACKENDS = ["torch", pytest.param("onnx", marks=pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("input_path", [DICOM_SERIES, CT_3MM, LUNG_NRRD], ids=["dicom_jpeg2000", "nifti_3mm", "nrrd"])
def test_predict_keeps_input_geometry(lits_run: Path, tmp_path: Path, input_path: Path, backend: str) -> None:
    if not input_path.exists():
        pytest.skip(f"{input_path} not present")
    out = tmp_path / "out"
    assert main(["predict", str(input_path), "-o", str(out), "--model", str(lits_run), "--backend", backend,
                 "--device", "cpu", "-q"]) == 0
    case_dir = out / input_path.name.replace(".nii.gz", "").replace(".nrrd", "")
    reference = read_sitk_reference(input_path)
    written = sitk.ReadImage(str(case_dir / "segmentation.nii.gz"))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert_same_geometry(written, reference)
    labels = sitk.GetArrayFromImage(written)  # (z, y, x)
    assert set(np.unique(labels).tolist()) <= {0, 1}

    # .seg.nrrd: the same voxels on the same grid, with Slicer's segment metadata
    nrrd = pytest.importorskip("nrrd")
    data, header = nrrd.read(str(case_dir / "segmentation.seg.nrrd"))
    np.testing.assert_array_equal(data, labels.transpose(2, 1, 0))
    assert_same_geometry(sitk.ReadImage(str(case_dir / "segmentation.seg.nrrd")), reference)
    assert header["Segment0_Name"] == "liver" and header["Segment0_LabelValue"] == "1"
    assert "Segment0_Extent" in header and "Segment0_Color" in header

    # report.json: volume = voxel count x voxel volume, geometry and backend recorded
    report = json.loads((case_dir / "report.json").read_text())
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    assert report["extra"]["backend"] == backend
    assert report["geometry"]["shape"] == list(reference.GetSize())
    liver = report["labels"].get("liver", {"voxel_count": 0, "volume_ml": 0.0})
    assert liver["voxel_count"] == int((labels == 1).sum())
    assert liver["volume_ml"] == pytest.approx(liver["voxel_count"] * voxel_ml, rel=1e-6)

    # DICOM input: segmentation.dcm read back by highdicom gives the same mask, slice by slice
    if input_path.is_dir():
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(input_path)))
        _seg, by_uid = read_dicom_seg_frames(case_dir / "segmentation.dcm", files)
        assert len(by_uid) == len(files) == labels.shape[0]
        for k, frames in enumerate(by_uid.values()):  # GDCM's file order is the volume's slice order
            np.testing.assert_array_equal(frames, labels[k], err_msg=f"slice {k}")


def test_evaluate_against_totalsegmentator_liver(lits_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["predict", str(CT_3MM), "-o", str(out), "--model", str(lits_run), "-q"]) == 0
    capsys.readouterr()
    csv_path = tmp_path / "eval.csv"
    code = main(["evaluate", str(out / "ct_3mm" / "segmentation.nii.gz"), str(TOTALSEG / "liver_model_v1.nii.gz"),
                 "--labels", "1=liver", "--csv", str(csv_path)])
    assert code == 0
    assert "liver" in capsys.readouterr().out
    rows = csv_path.read_text().strip().splitlines()
    assert rows[0].startswith("case,label,name,dice,iou")
    assert len(rows) == 2, rows  # one case, one label (liver)
    # The reported Dice is the overlap of the two files, computed here independently.
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct_3mm" / "segmentation.nii.gz"))) == 1
    reference = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(TOTALSEG / "liver_model_v1.nii.gz")))) == 1
    overlap = np.count_nonzero(predicted & reference)
    expected = 2.0 * overlap / (np.count_nonzero(predicted) + np.count_nonzero(reference))
    assert float(rows[1].split(",")[3]) == pytest.approx(expected, abs=1e-6)
