"""Acceptance: a synthetic 512x512x119 CT series written with pydicom is segmented onto exactly the
grid SimpleITK reads from it (NIfTI and .seg.nrrd), with every per-case output present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from liverseg.cli import main
from liverseg.config import load_config, to_dict
from liverseg.models import build_model

REPO = Path(__file__).resolve().parents[1]
pydicom = pytest.importorskip("pydicom")


def write_ct_series(folder: Path, shape=(512, 512, 119), spacing=(0.74, 0.74, 2.5)) -> None:
    """One file per slice, tilted 8 degrees about the LR axis (a gantry-free oblique orientation)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    cols, rows, n = shape
    angle = np.deg2rad(8.0)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-190.0, -170.0, 40.0])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    body = ((ii - rows / 2) / (rows * 0.42)) ** 2 + ((jj - cols / 2) / (cols * 0.45)) ** 2 <= 1
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Synthetic^Phantom", "LS0001"
        ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20260101", "120000", 1, k + 1
        ds.PatientBirthDate, ds.PatientSex, ds.StudyID, ds.AccessionNumber = "", "O", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "liverseg tests"
        ds.ImagePositionPatient = [float(v) for v in origin + k * spacing[2] * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        hu = np.where(body, 40, -1000) + rng.normal(0, 10, (rows, cols))
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{k:04d}", enforce_file_format=True)


@pytest.mark.slow
def test_512x512x119_dicom_series_keeps_its_geometry_exactly(tmp_path):
    cfg = load_config(REPO / "configs" / "smoke_3d.yaml", ["preprocess.spacing_mm=[6.0, 6.0, 6.0]"])
    run = tmp_path / "run"
    run.mkdir()
    model = build_model(cfg.model, in_channels=1, out_channels=len(cfg.data.labels))
    with torch.no_grad():  # all-zero weights: logits tie everywhere, the argmax is background
        for parameter in model.parameters():
            parameter.zero_()
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 0}, run / "best.pt")
    series = tmp_path / "ct_series"
    write_ct_series(series)
    out = tmp_path / "out"
    assert main(["predict", str(series), "-o", str(out), "--model", str(run), "--device", "cpu", "-q",
                 "--no-preview"]) == 0
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    reference = reader.Execute()
    assert reference.GetSize() == (512, 512, 119)
    for name in ("segmentation.nii.gz", "segmentation.seg.nrrd"):
        written = sitk.ReadImage(str(out / "ct_series" / name))
        assert written.GetSize() == reference.GetSize(), name
        np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-6)
    assert {p.name for p in (out / "ct_series").iterdir()} >= {
        "segmentation.nii.gz", "segmentation.seg.nrrd", "labels.ctbl", "segmentation.dcm", "report.json"}


@pytest.mark.slow
def test_512x512x119_dicom_outputs_agree_seg_nrrd_dicom_seg_and_report(tmp_path, monkeypatch):
    """The per-case outputs of a DICOM input describe one and the same mask: the .seg.nrrd read by pynrrd
    (segment metadata, extent), the DICOM SEG read back by highdicom (frame by source slice), and
    report.json (volume = voxel count x voxel volume). The network is replaced by a fixed ellipsoid
    mask so the outputs are checked on a mask with a shape, not an empty one."""
    nrrd = pytest.importorskip("nrrd")
    hd = pytest.importorskip("highdicom")
    import json

    cfg = load_config(REPO / "configs" / "smoke_3d.yaml")
    run = tmp_path / "run"
    run.mkdir()
    model = build_model(cfg.model, in_channels=1, out_channels=len(cfg.data.labels))
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 0}, run / "best.pt")
    series = tmp_path / "ct_series"
    write_ct_series(series)
    ii, jj, kk = np.ogrid[:512, :512, :119]
    mask = (((ii - 300) / 90.0) ** 2 + ((jj - 240) / 70.0) ** 2 + ((kk - 60) / 30.0) ** 2 <= 1).astype(np.uint8)
    seen_shapes = []

    def ellipsoid(model, volume, cfg, device, progress=False, memory_gb=None):
        seen_shapes.append(volume.shape)
        return mask.copy()

    monkeypatch.setattr("liverseg.engine.loaded.predict_volume", ellipsoid)
    out = tmp_path / "out"
    assert main(["predict", str(series), "-o", str(out), "--model", str(run), "--device", "cpu", "-q",
                 "--no-preview"]) == 0
    assert seen_shapes == [(512, 512, 119)]
    case = out / "ct_series"
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "segmentation.nii.gz"))).transpose(2, 1, 0)
    np.testing.assert_array_equal(nifti, mask)

    data, header = nrrd.read(str(case / "segmentation.seg.nrrd"))
    np.testing.assert_array_equal(data, mask)
    assert header["Segment0_Name"] == "liver" and header["Segment0_LabelValue"] == "1"
    box = [(int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))).min()),
            int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))).max())) for axis in range(3)]
    assert [int(v) for v in header["Segment0_Extent"].split()] == [v for pair in box for v in pair]
    assert len(header["Segment0_Color"].split()) == 3

    seg = hd.seg.segread(str(case / "segmentation.dcm"))
    files = sorted(series.iterdir())
    uids = [str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in files]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    for k, frame in enumerate(frames):  # file k holds slice k (written along the normal, IM0000 first)
        np.testing.assert_array_equal(frame, mask[:, :, k].T, err_msg=f"slice {k}")

    report = json.loads((case / "report.json").read_text())
    liver = report["labels"]["liver"]
    assert liver["voxel_count"] == int(mask.sum())
    assert liver["volume_ml"] == pytest.approx(mask.sum() * 0.74 * 0.74 * 2.5 / 1000.0, rel=1e-6)
    assert report["geometry"]["shape"] == [512, 512, 119]
