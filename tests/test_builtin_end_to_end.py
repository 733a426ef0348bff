"""The built-in liver model end to end, as a user meets it: ``liverseg predict CT -o OUT`` with no
--model, the packaged demo CT, the Python API, and the real samples in ../shared/data when present
(the same CT in eight axis orientations; the 20-slice JPEG 2000 DICOM series with its DICOM SEG)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import liverseg
from conftest import SHARED_DATA, dice_of
from liverseg.cli import main
from liverseg.demo import SAMPLE_CT, SAMPLE_REFERENCE, sample_path

DICOM_SERIES = SHARED_DATA / "totalseg_example" / "dicom_series_jpeg2000"
OUTPUTS = ("segmentation.nii.gz", "segmentation.seg.nrrd", "labels.ctbl", "report.json", "preview.png")


def test_models_lists_source_licence_citation_and_figures(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for needle in ("liver:", "pyliverlesionseg 0.3", "Apache-2.0", "Eur J Nucl Med Mol Imaging", "3 x 3 x 3 mm",
                   "sha256", "measured", "default for `liverseg predict`: liver"):
        assert needle in out, needle


def test_an_unknown_model_name_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["predict", str(sample_path(SAMPLE_CT)), "-o", str(tmp_path / "out"), "--model", "spleen"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "spleen" in err and "built-in" in err
    assert not (tmp_path / "out").exists()


def test_bad_input_with_the_built_in_model_is_one_line_and_nothing_half_written(tmp_path, capsys):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file at all")
    out = tmp_path / "out"
    assert main(["predict", str(broken), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(broken) in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
    assert main(["predict", str(sample_path(SAMPLE_CT)), "-o", str(out), "--set", "infer.overlap=0.5"]) == 2
    assert "built-in model" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_without_model_segments_the_packaged_ct(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(sample_path(SAMPLE_CT)), "-o", str(out), "--threads", "2", "-q",
                 "--save-probabilities"]) == 0
    case = out / "totalseg_example_ct_3mm"
    assert all((case / name).is_file() for name in OUTPUTS)
    labels = np.asanyarray(nib.load(case / "segmentation.nii.gz").dataobj)
    # the liver probability on the input grid: > 0.5 (128 of 255) exactly where the label map has the liver
    # before its largest-component step, so the labels are within the probability's > 0.5 region
    probabilities = nib.load(case / "probabilities.nii.gz").dataobj.get_unscaled()  # uint8 v; p = v / 255
    assert probabilities.shape == (*labels.shape, 2) and probabilities.dtype == np.uint8
    assert np.abs(probabilities.astype(int).sum(-1) - 255).max() <= 1
    assert np.all(probabilities[..., 1][labels == 1] >= 127)
    reference = np.asanyarray(nib.load(sample_path(SAMPLE_REFERENCE)).dataobj) > 0
    assert dice_of(labels == 1, reference) > 0.9  # against TotalSegmentator v1's (model-made) mask
    report = json.loads((case / "report.json").read_text())
    assert report["extra"]["backend"].startswith("builtin") and "built-in" in report["model_id"]
    assert any("superior" in w for w in report["extra"]["warnings"])  # the scan starts inside the liver
    assert report["labels"]["liver"]["volume_ml"] == pytest.approx(labels.sum() * 0.027, rel=1e-6)


@pytest.mark.slow
def test_python_api_takes_paths_and_images_and_gives_the_input_grid():
    path = sample_path(SAMPLE_CT)
    labels, volume = liverseg.segment(path, threads=2)
    assert labels.shape == volume.shape == (122, 101, 112) and labels.dtype == np.uint8
    image = sitk.ReadImage(str(path))
    from_sitk = liverseg.segment(image, threads=2)
    np.testing.assert_array_equal(from_sitk.labels, labels)
    assert from_sitk.label_names == ("background", "liver") and from_sitk.warnings
    nifti = nib.load(path)
    np.testing.assert_array_equal(liverseg.segment((np.asanyarray(nifti.dataobj), nifti.affine)).labels, labels)


def _orientations(volume: nib.Nifti1Image) -> list[nib.Nifti1Image]:
    """The same CT stored in eight axis orderings/directions (flips and permutations of the voxel axes)."""
    array, affine = np.asanyarray(volume.dataobj), volume.affine
    out = []
    for flips, order in [((), (0, 1, 2)), ((0,), (0, 1, 2)), ((1,), (0, 1, 2)), ((0, 1), (0, 1, 2)),
                         ((0, 1), (1, 0, 2)), ((0, 2), (2, 0, 1)), ((1, 2), (1, 2, 0)), ((0, 1, 2), (2, 1, 0))]:
        a, m = array, affine.copy()
        for axis in flips:
            m[:3, 3] += m[:3, axis] * (a.shape[axis] - 1)
            m[:3, axis] *= -1
            a = np.flip(a, axis)
        out.append(nib.Nifti1Image(np.ascontiguousarray(a.transpose(order)), m[:, list(order) + [3]]))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "totalseg_example" / "ct_3mm.nii.gz").exists(),
                    reason=f"shared sample data not found under {SHARED_DATA}")
def test_eight_orientations_of_one_ct_give_the_same_liver(tmp_path):
    """RAS, LAS, RPS, LPS, PLS, ILA, PIR, IPL, and an oblique one (RAS turned by 10 degrees in-plane)."""
    source = nib.load(SHARED_DATA / "totalseg_example" / "ct_3mm.nii.gz")
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(0.1745), -np.sin(0.1745)], [np.sin(0.1745), np.cos(0.1745)]]
    oblique = nib.Nifti1Image(np.asanyarray(source.dataobj), turn @ source.affine)
    volumes_ml, codes = [], []
    for k, image in enumerate(_orientations(source) + [oblique]):
        path = tmp_path / f"ct_{k}.nii.gz"
        nib.save(image, path)
        codes.append("".join(nib.aff2axcodes(image.affine)))
        labels, volume = liverseg.segment(path, threads=2)
        volumes_ml.append(labels.sum() * volume.voxel_volume_ml)
    assert {"RAS", "LAS", "LPS", "PLS"} <= set(codes) and len(set(codes)) == 8, codes
    assert max(volumes_ml) - min(volumes_ml) <= 0.005 * min(volumes_ml), dict(zip(codes, volumes_ml))


@pytest.mark.slow
@pytest.mark.skipif(not DICOM_SERIES.is_dir(), reason=f"shared sample data not found under {SHARED_DATA}")
def test_the_20_slice_dicom_series_gets_every_output_and_the_small_field_warning(tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(DICOM_SERIES), "-o", str(out), "--threads", "2", "-q"]) == 0
    case = out / DICOM_SERIES.name
    assert all((case / name).is_file() for name in (*OUTPUTS, "segmentation.dcm"))
    report = json.loads((case / "report.json").read_text())
    assert any(w.startswith("small field of view: 40 mm") for w in report["extra"]["warnings"])
    import highdicom as hd

    seg = hd.seg.segread(str(case / "segmentation.dcm"))
    assert seg.number_of_segments == 1 and seg.get_segment_description(1).segment_label == "liver"
    written = sitk.ReadImage(str(case / "segmentation.nii.gz"))
    assert written.GetSize() == (512, 512, 20)
    assert sitk.GetArrayFromImage(written).sum() == report["labels"]["liver"]["voxel_count"] > 0
