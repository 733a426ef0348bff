"""Per-case outputs: Slicer .seg.nrrd and colour table, DICOM SEG, on RAS, LPS and oblique grids."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA, make_volume, read_dicom_seg_frames, rotation, sop_instance_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from liverseg.errors import GeometryError, InputError
from liverseg.io import dicom_seg, read_volume, write_label_map
from liverseg.io.images import sitk_to_volume
from liverseg.io.dicom_seg import write_dicom_seg
from liverseg.io.anatomy import label_colors
from liverseg.io.outputs import write_color_table, write_seg_nrrd
from liverseg.io.volume import LPS_TO_RAS, Volume
from liverseg.phantoms.dicom import write_series

NAMES = ("background", "liver", "tumour", "spleen")

GRIDS = {
    "ras": ((9, 7, 5), (0.8, 1.1, 2.5), np.eye(3), (3.0, -2.0, 7.5)),
    "lps": ((9, 7, 5), (0.8, 1.1, 2.5), np.diag([-1.0, -1.0, 1.0]), (40.0, 21.0, -3.0)),
    "oblique": ((8, 9, 6), (0.7, 1.3, 3.0), rotation(0, 17.0) @ rotation(2, -25.0) @ np.diag([-1.0, 1.0, 1.0]),
                (-12.5, 30.25, 101.0)),
}


def _labels(grid: str) -> Volume:
    shape, spacing, direction, origin = GRIDS[grid]
    array = np.zeros(shape, dtype=np.uint8)
    array[1:6, 2:5, 1:4] = 1  # liver: an off-centre box, so a flipped axis would show
    array[2, 3, 2] = 2        # tumour: one voxel inside it; spleen (3) stays empty
    return make_volume(shape, spacing, direction, origin, array=array)


# ----------------------------------------------------------------------------- colours

def test_label_colors_standard_and_distinct():
    colors = label_colors(["background", "liver", "Liver Tumour", "spleen", "foo", "bar", "kidney_left",
                           "kidney_right", "portal vein"])
    assert colors["background"] == (0, 0, 0)
    assert colors["liver"] == (221, 130, 101)  # Slicer GenericAnatomyColors / TotalSegmentator liver
    assert colors["spleen"] == (157, 108, 162)
    foreground = [c for name, c in colors.items() if name != "background"]
    assert len(set(foreground)) == len(foreground)
    assert label_colors(["background", "foo", "bar"]) == label_colors(["background", "foo", "bar"])
    # a known colour already taken falls back to a distinct one
    two = label_colors(["background", "vessel", "vein"])
    assert two["vessel"] != two["vein"]


def test_color_table(tmp_path):
    path = write_color_table(NAMES, tmp_path / "labels.ctbl", colors={"tumour": (10, 20, 30)})
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#")
    rows = [line.split() for line in lines if not line.startswith("#")]
    assert rows == [["0", "background", "0", "0", "0", "0"], ["1", "liver", "221", "130", "101", "255"],
                    ["2", "tumour", "10", "20", "30", "255"], ["3", "spleen", "157", "108", "162", "255"]]
    with pytest.raises(InputError, match="kidney"):
        write_color_table(NAMES, tmp_path / "bad.ctbl", colors={"kidney": (1, 2, 3)})


# ----------------------------------------------------------------------------- .seg.nrrd

@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_seg_nrrd_header_geometry_and_segments(tmp_path, grid):
    labels = _labels(grid)
    path = write_seg_nrrd(labels.array, labels, tmp_path / "segmentation.seg.nrrd", NAMES)
    data, header = nrrd.read(str(path), index_order="F")
    assert [p.name for p in tmp_path.iterdir()] == ["segmentation.seg.nrrd"]  # no temporary left behind

    np.testing.assert_array_equal(data, labels.array)
    assert header["space"] == "left-posterior-superior"
    assert header["dimension"] == 3 and list(header["kinds"]) == ["domain"] * 3
    affine_lps = LPS_TO_RAS @ labels.affine_ras
    np.testing.assert_allclose(header["space directions"], affine_lps[:3, :3].T, atol=1e-9)
    np.testing.assert_allclose(header["space origin"], affine_lps[:3, 3], atol=1e-9)

    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ContainedRepresentationNames"].startswith("Binary labelmap|")
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    names = [header[f"Segment{n}_Name"] for n in range(3)]
    assert names == ["liver", "tumour", "spleen"] and "Segment3_ID" not in header
    assert [int(header[f"Segment{n}_LabelValue"]) for n in range(3)] == [1, 2, 3]
    assert {header[f"Segment{n}_Layer"] for n in range(3)} == {"0"}
    assert len({header[f"Segment{n}_ID"] for n in range(3)}) == 3
    liver_rgb = [float(v) for v in header["Segment0_Color"].split()]
    np.testing.assert_allclose(liver_rgb, np.array([221, 130, 101]) / 255.0, atol=1e-5)
    assert header["Segment0_Extent"] == "1 5 2 4 1 3"
    assert header["Segment1_Extent"] == "2 2 3 3 2 2"
    assert header["Segment2_Extent"] == "0 -1 0 -1 0 -1"  # empty segment, as Slicer writes it
    assert "SCT^10200004^Liver" in header["Segment0_Tags"] and header["Segment0_Tags"].endswith("|")
    assert "SCT^108369006" in header["Segment1_Tags"]


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_seg_nrrd_same_geometry_as_nifti_in_simpleitk(tmp_path, grid):
    labels = _labels(grid)
    seg = sitk.ReadImage(str(write_seg_nrrd(labels.array, labels, tmp_path / "s.seg.nrrd", NAMES)))
    nii = sitk.ReadImage(str(write_label_map(labels.array, labels, tmp_path / "s.nii.gz")))
    assert seg.GetSize() == nii.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), nii.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(seg.GetOrigin(), nii.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(seg.GetDirection(), nii.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(nii))
    assert read_volume(tmp_path / "s.seg.nrrd").same_grid(labels, atol_mm=1e-5)


def test_seg_nrrd_rejects_values_without_names_and_keeps_old_file(tmp_path):
    labels = _labels("ras")
    target = write_seg_nrrd(labels.array, labels, tmp_path / "s.seg.nrrd", NAMES)
    before = target.read_bytes()
    with pytest.raises(InputError, match="outside 0..1"):
        write_seg_nrrd(labels.array, labels, target, ("background", "liver"))
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["s.seg.nrrd"]


# ----------------------------------------------------------------------------- DICOM SEG

def write_ct_series(folder: Path, size_cr: tuple[int, int], n_slices: int, pixel_mm: tuple[float, float],
                    slice_mm: float, row_dir, col_dir, origin_lps, seed: int = 0) -> list[Path]:
    """A small single-frame CT series (LPS geometry as DICOM states it), files in shuffled name order."""
    folder.mkdir(parents=True, exist_ok=True)
    cols, rows = size_cr
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    paths = []
    for s in rng.permutation(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "P1", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", "CT", "test"
        ds.SeriesNumber, ds.InstanceNumber = 1, int(s) + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin_lps) + s * slice_mm * normal]
        ds.PixelSpacing = [pixel_mm[0], pixel_mm[1]]  # row spacing, column spacing
        ds.SliceThickness = slice_mm
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = rng.integers(-100, 200, (rows, cols)).astype(np.int16).tobytes()
        path = folder / f"IM{rng.integers(1e9):09d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_dicom_seg_round_trip_oblique_series(tmp_path):
    import highdicom as hd

    tilt = rotation(0, -10.0) @ rotation(2, 20.0)  # oblique axial, as a tilted gantry gives
    row_dir, col_dir = tilt[:, 0], tilt[:, 1]
    files = write_ct_series(tmp_path / "ct", (32, 28), 8, (0.9, 0.7), 2.5, row_dir, col_dir, (-20.0, 35.0, 100.0))
    image = read_volume(tmp_path / "ct")
    assert image.shape == (32, 28, 8)
    labels = np.zeros(image.shape, np.uint8)
    labels[4:20, 6:15, 1:6] = 1       # liver
    labels[5:8, 7:9, 4] = 2           # tumour on slice 4 only; spleen absent
    labels[30, 27, 7] = 1             # the far corner voxel
    path = write_dicom_seg(labels, image, tmp_path / "out" / "seg.dcm", NAMES)
    assert sorted(p.name for p in path.parent.iterdir()) == ["seg.dcm"]

    seg, by_uid = read_dicom_seg_frames(path, files)
    described = {d.segment_number: d for d in seg.SegmentSequence}
    assert sorted(described) == [1, 2]
    assert described[1].SegmentLabel == "liver" and described[2].SegmentLabel == "tumour"
    assert described[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert described[2].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image.dicom.series_uid
    number_to_value = {1: 1, 2: 2}
    # Independent of the writer's geometry code: SimpleITK orders slices along the normal
    # (file k = position k), i = column, j = row.
    for f in files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        k = int(ds.InstanceNumber) - 1
        got = np.vectorize(lambda s: number_to_value.get(int(s), 0))(by_uid[ds.SOPInstanceUID])
        np.testing.assert_array_equal(got, labels[:, :, k].T, err_msg=f"slice {k}")
    # highdicom's own volume reconstruction agrees too (segment 1 = liver)
    volume = seg.get_volume(combine_segments=True)
    assert int((volume.array == 1).sum()) == int((labels == 1).sum())
    assert isinstance(volume, hd.Volume)


def test_dicom_seg_empty_prediction_and_wrong_grid(tmp_path):
    files = write_ct_series(tmp_path / "ct", (16, 16), 4, (1.0, 1.0), 3.0, (1, 0, 0), (0, 1, 0), (0.0, 0.0, 0.0))
    image = read_volume(tmp_path / "ct")
    empty = image.with_array(np.zeros(image.shape, np.uint8))
    path = write_dicom_seg(empty.array, empty, tmp_path / "empty.dcm", ("background", "liver"), source=files)
    seg, by_uid = read_dicom_seg_frames(path, files)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver"]
    assert all(not frame.any() for frame in by_uid.values())

    shifted = Volume(empty.array, empty.affine_ras @ np.array([[1, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                [0, 0, 0, 1.0]]), dict(empty.meta), empty.dicom)
    with pytest.raises(GeometryError, match="voxel grid"):
        write_dicom_seg(shifted.array, shifted, tmp_path / "bad.dcm", ("background", "liver"), source=files)
    assert not (tmp_path / "bad.dcm").exists()

    # a volume not read from DICOM carries no source series: without ``source`` there is none to follow
    nifti = Volume(empty.array, empty.affine_ras, {"path": "ct.nii.gz"})
    with pytest.raises(InputError, match="ct.nii.gz: was not read from a DICOM series"):
        write_dicom_seg(nifti.array, nifti, tmp_path / "none.dcm", ("background", "liver"))
    assert not (tmp_path / "none.dcm").exists()


def test_dicom_seg_from_a_series_without_patient_and_study_attributes(tmp_path):
    """Anonymised or synthetic series may lack the type-2 attributes a SEG copies (PatientBirthDate, ...)."""
    files = write_ct_series(tmp_path / "ct", (16, 16), 4, (1.0, 1.0), 3.0, (1, 0, 0), (0, 1, 0), (0.0, 0.0, 0.0))
    for f in files:
        ds = pydicom.dcmread(str(f))
        for tag in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "StudyDate", "StudyTime"):
            delattr(ds, tag)
        ds.save_as(f)
    image = read_volume(tmp_path / "ct")
    labels = np.zeros(image.shape, np.uint8)
    labels[2:9, 3:12, 1:3] = 1
    path = write_dicom_seg(labels, image, tmp_path / "seg.dcm", ("background", "liver"), source=files)
    seg, by_uid = read_dicom_seg_frames(path, files)
    assert seg.PatientBirthDate == "" and seg.PatientID == "P1"
    assert sum(int(frame.sum()) for frame in by_uid.values()) == int(labels.sum())


def test_dicom_seg_of_a_series_read_without_series_instance_uid(tmp_path):
    """The SEG writer derives a UID for such a series and must not refuse it for not matching what the
    reader recorded (found on the real anonymised JPEG 2000 sample)."""
    files = write_ct_series(tmp_path / "ct", (16, 16), 4, (1.0, 1.0), 3.0, (1, 0, 0), (0, 1, 0), (0.0, 0.0, 0.0))
    for f in files:
        ds = pydicom.dcmread(str(f))
        del ds.SeriesInstanceUID
        ds.save_as(f)
    image = read_volume(tmp_path / "ct")
    assert image.dicom.series_uid is None  # no UID recorded, not a made-up one
    labels = np.zeros(image.shape, np.uint8)
    labels[2:9, 3:12, 1:3] = 1
    path = write_dicom_seg(labels, image, tmp_path / "seg.dcm", ("background", "liver"))
    _seg, by_uid = read_dicom_seg_frames(path, files)
    assert sum(int(frame.sum()) for frame in by_uid.values()) == int(labels.sum())


SERIES_ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "coronal": (1, 0, 0, 0, 0, -1),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "oblique": (0.8660254, 0.5, 0.0, 0.0, 0.0, -1.0),
}
# (axis order, flipped axes): the same voxels stored on a permuted and/or mirrored grid
REGRIDS = [((0, 1, 2), ()), ((0, 1, 2), (0, 1, 2)), ((1, 0, 2), (1,)), ((2, 0, 1), (0, 2)), ((2, 1, 0), (2,))]


def _regrid(volume: Volume, order: tuple[int, ...], flips: tuple[int, ...]) -> Volume:
    """``volume`` with its array axes reordered and mirrored, and the affine to match: same voxels."""
    array = np.flip(np.transpose(volume.array, order), axis=flips) if flips else np.transpose(volume.array, order)
    new_to_old = np.zeros((4, 4))
    new_to_old[3, 3] = 1.0
    for axis, old in enumerate(order):
        flipped = axis in flips
        new_to_old[old, axis] = -1.0 if flipped else 1.0
        new_to_old[old, 3] = array.shape[axis] - 1 if flipped else 0.0
    return Volume(array, volume.affine_ras @ new_to_old, dict(volume.meta), volume.dicom)


def _seg_content(path: Path) -> tuple:
    """What a SEG says, without its fresh UIDs and timestamps: segments, frames and their places."""
    seg = pydicom.dcmread(str(path))
    frames = [(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID,
               tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient),
               int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
               tuple(int(v) for v in f.FrameContentSequence[0].DimensionIndexValues))
              for f in seg.PerFrameFunctionalGroupsSequence]
    segments = [(d.SegmentNumber, d.SegmentLabel) for d in seg.SegmentSequence]
    return int(seg.NumberOfFrames), bytes(seg.PixelData), frames, segments


@pytest.mark.parametrize("orientation", sorted(SERIES_ORIENTATIONS))
def test_dicom_seg_frames_taken_as_views_equal_the_general_gather(tmp_path, monkeypatch, orientation):
    """A source slice that is a plane of the label grid is taken by slicing/flipping/transposing (no
    index arrays); it must give exactly what gathering voxel by voxel gives, on any layout of the grid."""
    stored = np.random.default_rng(1).integers(0, 2000, (5, 12, 10)).astype(np.uint16)
    write_series(tmp_path / "ct", stored, orientation=SERIES_ORIENTATIONS[orientation])
    image = read_volume(tmp_path / "ct")
    values = np.random.default_rng(2).integers(0, 3, image.shape).astype(np.uint8)
    values[values == 2] = np.random.default_rng(3).integers(0, 2, int((values == 2).sum())).astype(np.uint8) * 2
    values[:, :, 1] = 0  # an empty slice: omitted from the SEG
    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in image.dicom.slice_files]
    general_path = lambda *args: None  # noqa: E731 - forces the voxel-by-voxel gather
    for order, flips in REGRIDS:
        labels = _regrid(image.with_array(values), order, flips)
        gathered = np.stack([labels.array[dicom_seg._frame_indices(ds, labels)] for ds in datasets])
        for ds, expected in zip(datasets, gathered):
            fast = dicom_seg._frame(ds, labels)
            assert np.shares_memory(fast, labels.array), f"{order} {flips}: not taken as a view"
            np.testing.assert_array_equal(fast, expected)
        stack = dicom_seg._frames(datasets, labels)  # all slices at once: one view
        assert np.shares_memory(stack, labels.array) and not stack.flags.writeable
        np.testing.assert_array_equal(stack, gathered)
        np.testing.assert_array_equal(dicom_seg._frames(datasets[::-1], labels), gathered[::-1])
        fast_seg = write_dicom_seg(labels.array, labels, tmp_path / "fast.dcm", NAMES[:3])  # series: labels.dicom
        with monkeypatch.context() as patch:
            patch.setattr(dicom_seg, "_stack_view", general_path)
            patch.setattr(dicom_seg, "_plane_view", general_path)
            assert not np.shares_memory(dicom_seg._frames(datasets, labels), labels.array)
            general_seg = write_dicom_seg(labels.array, labels, tmp_path / "general.dcm", NAMES[:3])
        assert _seg_content(fast_seg) == _seg_content(general_seg), f"{order} {flips}"
        assert _seg_content(fast_seg)[0] == 2 * (len(datasets) - 1)  # liver and tumour on 4 of 5 slices


def test_dicom_seg_off_plane_grids_take_the_general_path(tmp_path):
    """A finer label grid (every other voxel under a pixel) is gathered voxel by voxel; a grid that
    misses part of a slice is refused naming the slice, as before."""
    write_series(tmp_path / "ct", np.zeros((4, 6, 5), np.uint16))
    image = read_volume(tmp_path / "ct")
    ds = pydicom.dcmread(str(image.dicom.slice_files[2]), stop_before_pixels=True)
    fine_values = np.random.default_rng(4).integers(0, 3, (9, 11, 4)).astype(np.uint8)
    fine = Volume(fine_values, image.affine_ras @ np.diag([0.5, 0.5, 1.0, 1.0]), dict(image.meta))
    frame = dicom_seg._frame(ds, fine)
    assert not np.shares_memory(frame, fine.array)
    np.testing.assert_array_equal(frame, fine_values[::2, ::2, 2].T)
    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in image.dicom.slice_files]
    np.testing.assert_array_equal(dicom_seg._frames(datasets, fine), fine_values[::2, ::2, :].transpose(2, 1, 0))
    values = np.arange(120, dtype=np.uint8).reshape(5, 6, 4)
    gappy = dicom_seg._frames([datasets[0], datasets[1], datasets[3]], image.with_array(values))
    assert not np.shares_memory(gappy, values)  # not equally spaced: one view per slice, stacked
    np.testing.assert_array_equal(gappy, values[:, :, [0, 1, 3]].transpose(2, 1, 0))
    cropped = Volume(np.zeros((4, 6, 4), np.uint8), image.affine_ras, dict(image.meta), image.dicom)  # one column short
    with pytest.raises(GeometryError, match=r"reaches outside the label map's grid \(4, 6, 4\)"):
        dicom_seg._frame(ds, cropped)
    with pytest.raises(GeometryError, match="reaches outside"):
        write_dicom_seg(cropped.array, cropped, tmp_path / "bad.dcm", ("background", "liver"), source=tmp_path / "ct")


@pytest.mark.slow
def test_dicom_seg_round_trip_real_jpeg2000_series(tmp_path):
    """Real, anonymised (no Series/Frame of Reference UID, blank SOP UIDs) JPEG 2000 series."""
    folder = SHARED_DATA / "totalseg_example" / "dicom_series_jpeg2000"
    if not folder.is_dir():
        pytest.skip(f"shared sample data not found at {folder}")
    # The grid SimpleITK/GDCM gives the series (liverseg's DICOM reader is held to the same grid).
    reader = sitk.ImageSeriesReader()
    files = list(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetFileNames(files)
    image = sitk_to_volume(reader.Execute(), folder)
    labels = np.zeros(image.shape, np.uint8)
    labels[image.array > 150] = 2                          # bone-ish: "tumour" stand-in
    labels[200:330, 150:300, 3:15] = 1
    path = write_dicom_seg(labels, image, tmp_path / "seg.dcm", NAMES, source=files)
    _seg, by_uid = read_dicom_seg_frames(path, files)
    for k, f in enumerate(files):  # GDCM's order is the volume's k order
        np.testing.assert_array_equal(by_uid[sop_instance_uid(f)], labels[:, :, k].T, err_msg=f"slice {k}")


# ----------------------------------------------------------------------------- scripts/slicer_load.py

SLICER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slicer_load.py"


def _slicer_script():
    """The script's namespace, executed the way Slicer's console does (exec), with Slicer absent."""
    namespace: dict = {"__name__": "__main__"}
    exec(compile(SLICER_SCRIPT.read_text(), str(SLICER_SCRIPT), "exec"), namespace)
    return namespace


def test_slicer_script_imports_neither_liverseg_nor_slicer_at_load():
    import ast

    tree = ast.parse(SLICER_SCRIPT.read_text())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                 for alias in node.names} | {
        node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert top_level == {"__future__", "argparse", "json", "sys", "pathlib"}  # standard library only
    everywhere = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(name.startswith("liverseg") for name in everywhere)
    ns = _slicer_script()          # exec in a console-like namespace: defines, runs nothing
    assert callable(ns["load_case"]) and ns["script_args"](["/opt/Slicer/bin/SlicerApp-real"]) is None
    assert ns["script_args"](["/x/scripts/slicer_load.py", "OUT/case", "--no-3d"]) == ["OUT/case", "--no-3d"]
    args = ns["parse_args"](["OUT/case", "--ct", "/data/ct", "--no-3d"])
    assert (args.case, args.ct, args.no_3d) == ("OUT/case", "/data/ct", True)
    with pytest.raises(SystemExit):
        ns["parse_args"](["OUT/case", "--typo"])


def test_slicer_script_resolves_a_case_folder(tmp_path):
    ns = _slicer_script()
    ct = tmp_path / "data" / "ct.nii.gz"
    ct.parent.mkdir()
    ct.write_bytes(b"x")
    case = tmp_path / "OUT" / "ct"
    labels = _labels("lps")
    write_label_map(labels.array, labels, case / "segmentation.nii.gz")
    write_color_table(NAMES, case / "labels.ctbl")
    with pytest.raises(FileNotFoundError, match="report.json"):
        ns["resolve_case"](case)
    (case / "report.json").write_text(json.dumps({"input": str(ct)}))
    got = ns["resolve_case"](case)
    assert got == {"ct": ct, "segmentation": case / "segmentation.nii.gz", "kind": "labelmap",
                   "color_table": case / "labels.ctbl"}
    write_seg_nrrd(labels.array, labels, case / "segmentation.seg.nrrd", NAMES)
    got = ns["resolve_case"](case, ct=str(ct))
    assert got["kind"] == "seg.nrrd" and got["segmentation"] == case / "segmentation.seg.nrrd"
    assert ns["resolve_case"](case / "segmentation.nii.gz")["kind"] == "labelmap"
    entries = ns["read_color_table"](case / "labels.ctbl")
    assert entries[1] == (1, "liver", (221, 130, 101, 255)) and [e[1] for e in entries] == list(NAMES)
    (case / "report.json").write_text(json.dumps({"input": str(tmp_path / "moved.nii.gz")}))
    with pytest.raises(FileNotFoundError, match="moved"):
        ns["resolve_case"](case)
    with pytest.raises(FileNotFoundError, match="no such case"):
        ns["resolve_case"](tmp_path / "nope")


def test_label_voxel_counts_equal_bincount_for_any_layout_and_dtype():
    from liverseg.io.outputs import label_voxel_counts

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (9, 8, 7)).astype(np.uint8)
    for array in (labels, np.asfortranarray(labels), labels.transpose(2, 0, 1), labels[::2]):
        np.testing.assert_array_equal(label_voxel_counts(array, 5), np.bincount(array.ravel(), minlength=5))
    np.testing.assert_array_equal(label_voxel_counts(labels > 2, 2), [int((labels <= 2).sum()), int((labels > 2).sum())])
    np.testing.assert_array_equal(label_voxel_counts(np.zeros((3, 3, 3), np.uint8), 3), [27, 0, 0])


def test_atomic_writes_leave_no_temporary_file_and_keep_normal_permissions(tmp_path):
    import os

    from liverseg.atomic import atomic_path, write_text_atomic

    old = os.umask(0o022)
    try:
        path = write_text_atomic("a,b\r\n1,2\r\n", tmp_path / "out" / "table.csv")
        with pytest.raises(RuntimeError), atomic_path(tmp_path / "out" / "broken.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"  # byte for byte, no newline translation
    assert (path.stat().st_mode & 0o777) == 0o644  # readable by colleagues, as open() would have made it
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]
