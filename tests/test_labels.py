"""Labels onto the image grid: NIfTI (same grid, flipped/permuted grid, wrong grid), IRCADb MASKS_DICOM
folders, CHAOS PNG slices and DICOM SEG."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from liverseg.phantoms.dicom import write_series
from PIL import Image

from liverseg.errors import GeometryError, InputError
from liverseg.io import read_volume, write_volume
from liverseg.io.labels import read_label
from liverseg.io.volume import Volume

OBLIQUE = (0.8660254, 0.5, 0.0, 0.0, 0.0, -1.0)


def _stored(n=4, rows=12, cols=10, seed=0):
    return np.random.default_rng(seed).integers(0, 2000, (n, rows, cols)).astype(np.uint16)


def test_nifti_label_same_grid_flipped_grid_and_wrong_grid(tmp_path):
    affine = np.array([[-0.7, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 2.0, -30], [0, 0, 0, 1]])
    image = Volume(np.zeros((10, 12, 4), np.int16), affine)
    label = np.zeros((10, 12, 4), np.uint8)
    label[2:5, 3:9, 1] = 1
    label[3, 4, 2] = 2
    same = write_volume(Volume(label, affine), tmp_path / "same.nii.gz")
    np.testing.assert_array_equal(read_label(same, image).array, label)
    # the same voxels stored with the first two axes swapped and the third flipped (as an LPS/RAS-agnostic
    # writer might store them): mapped back exactly, no interpolation
    permuted = np.flip(label.transpose(1, 0, 2), axis=2)
    perm_affine = affine[:, [1, 0, 2, 3]].copy()
    perm_affine[:, 2] *= -1
    perm_affine[:3, 3] = affine[:3, :3] @ [0, 0, 3] + affine[:3, 3]
    flipped = write_volume(Volume(np.ascontiguousarray(permuted), perm_affine), tmp_path / "flipped.nii.gz")
    np.testing.assert_array_equal(read_label(flipped, image).array, label)
    coarse = np.diag([1.4, 1.6, 2.0, 1.0])
    wrong = write_volume(Volume(label[::2, ::2], coarse), tmp_path / "wrong.nii.gz")
    with pytest.raises(GeometryError) as info:
        read_label(wrong, image)
    message = str(info.value)
    assert "label shape (5, 6, 4), spacing [1.4, 1.6, 2.0] mm" in message
    assert "image shape (10, 12, 4), spacing [0.7, 0.8, 2.0] mm, origin [10.0, 20.0, -30.0]" in message
    assert "nearest-neighbour" in message


def test_ircadb_masks_dicom_folders(tmp_path):
    stored = _stored()
    patient = tmp_path / "3Dircadb1.1"
    write_series(patient / "PATIENT_DICOM", stored, orientation=OBLIQUE, names=[f"image_{k}" for k in range(4)])
    liver = np.zeros_like(stored)
    liver[1:3, 2:9, 2:8] = 255
    tumour = np.zeros_like(stored)
    tumour[2, 4:6, 4:6] = 255
    vessel = np.zeros_like(stored)
    vessel[0, 0, 0] = 255
    for name, mask in (("liver", liver), ("livertumor01", tumour), ("portalvein", vessel)):
        # mask series carry their own UIDs and are stored in reverse file order
        write_series(patient / "MASKS_DICOM" / name, mask, orientation=OBLIQUE, intercept=0.0,
                     names=[f"image_{3 - k}" for k in range(4)])
    image = read_volume(patient / "PATIENT_DICOM")
    label = read_label(patient / "MASKS_DICOM", image, "masks_dicom", {"liver": 1, "livertumor*": 2})
    expected = np.where(tumour > 0, 2, np.where(liver > 0, 1, 0)).transpose(2, 1, 0)
    np.testing.assert_array_equal(label.array, expected)
    with pytest.raises(InputError, match="no structure folder matches"):
        read_label(patient / "MASKS_DICOM", image, "masks_dicom", {"spleen": 1})


def test_chaos_png_slices_pair_with_dicom_files_in_name_order(tmp_path):
    stored = _stored(n=5)
    case = tmp_path / "Train_Sets" / "CT" / "1"
    # file names ascend while positions descend (as in CHAOS): the n-th PNG belongs to the n-th file
    positions = [(0.0, 0.0, 40.0 - 2 * k) for k in range(5)]
    write_series(case / "DICOM_anon", stored, positions=positions, names=[f"i{k:04d},0000b.dcm" for k in range(5)])
    (case / "Ground").mkdir()
    for k in range(5):
        mask = np.zeros((12, 10), np.uint8)
        mask[k + 1, 2:4] = 255  # a different row per file
        Image.fromarray(mask).save(case / "Ground" / f"liver_GT_{k:03d}.png")
    image = read_volume(case / "DICOM_anon")
    label = read_label(case / "Ground", image, "png_slices", {"liver": 1})
    for k in range(5):
        z_index = 4 - k  # file k sits at z = 40 - 2k: index 4 - k after sorting along the normal
        assert np.argwhere(label.array[:, :, z_index]).tolist() == [[2, k + 1], [3, k + 1]]
    (case / "Ground" / "liver_GT_004.png").unlink()
    with pytest.raises(InputError, match="4 PNG masks for 5 DICOM slices"):
        read_label(case / "Ground", image, "png_slices", {"liver": 1})


def test_dicom_seg_maps_onto_the_image_grid(tmp_path):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    stored = _stored(n=4)
    paths = write_series(tmp_path / "img", stored, orientation=OBLIQUE)
    sources = [pydicom.dcmread(p) for p in paths]
    for ds in sources:
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "p1", "Doe^J", "", ""
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", "", "", ""
        ds.SeriesNumber, ds.Manufacturer = 1, "test"
    mask = np.zeros((4, 12, 10), np.uint8)
    mask[1:3, 2:5, 3:7] = 1          # segment 1: liver
    mask[2, 3, 4] = 2                # segment 2: tumour
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Organ,
        segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, (name, prop) in enumerate((("liver", codes.SCT.Liver), ("tumour", codes.SCT.Neoplasm)))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=2,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="m", manufacturer_model_name="m",
            software_versions="1", device_serial_number="1")
    seg.save_as(tmp_path / "seg.dcm")
    image = read_volume(tmp_path / "img")
    label = read_label(tmp_path / "seg.dcm", image, "dicom_seg")
    np.testing.assert_array_equal(label.array, mask.transpose(2, 1, 0))
    by_name = read_label(tmp_path / "seg.dcm", image, "dicom_seg", {"liver": 1, "tumo*": 5})
    assert sorted(np.unique(by_name.array).tolist()) == [0, 1, 5]
    # a SEG made for another series does not land on this image's grid
    other = read_volume(tmp_path / "img")
    other.affine_ras[:3, 3] += [0.3, 0, 0]
    with pytest.raises(GeometryError, match="not on the image grid"):
        read_label(tmp_path / "seg.dcm", other, "dicom_seg")
    # the image folder holds the SEG too: it is passed over, not read as a slice
    (tmp_path / "img" / "seg.dcm").write_bytes((tmp_path / "seg.dcm").read_bytes())
    np.testing.assert_array_equal(read_volume(tmp_path / "img").array, image.array)


def test_unknown_label_format(tmp_path):
    image = Volume(np.zeros((2, 2, 2), np.int16), np.eye(4))
    with pytest.raises(InputError, match="label format 'nifti' is unknown; known: volume, masks_dicom"):
        read_label(Path(tmp_path), image, "nifti")
