"""DICOM series ingestion: each real-world oddity as a tiny synthetic pydicom series, checked against
SimpleITK's ImageSeriesReader where SimpleITK reads the case correctly, or against the exact error."""
from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from liverseg.phantoms.dicom import ct_dataset, multiframe_dataset, save, write_series
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid

from liverseg.cli import main
from liverseg.errors import InputError
from liverseg.io import check_input, read_volume
from liverseg.io.images import sitk_to_volume

SHARED_J2K = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example" / "dicom_series_jpeg2000"
OBLIQUE = (0.8660254, 0.5, 0.0, 0.0, 0.0, -1.0)  # rotated in the axial plane, slices stacked along -y


def _stored(n=6, rows=12, cols=10, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2000, (n, rows, cols)).astype(np.uint16)


def _sitk_volume(folder: Path, files=None):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files] if files else reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk_to_volume(reader.Execute(), folder)


def _expected_hu(stored: np.ndarray, intercept=-1024) -> np.ndarray:
    return (stored.astype(np.int32) + intercept).transpose(2, 1, 0)


def test_shuffled_names_and_instance_numbers_sort_along_the_normal(tmp_path):
    stored = _stored()
    names = [f"{generate_uid()[-12:]}" for _ in range(len(stored))]  # random names, no suffix
    paths = write_series(tmp_path, stored, orientation=OBLIQUE, names=names)
    # InstanceNumber reversed: a reader that trusts it (or the file names) gets the order wrong
    for k, p in enumerate(paths):
        ds = __import__("pydicom").dcmread(p)
        ds.InstanceNumber = len(paths) - k
        ds.save_as(p)
    volume = read_volume(tmp_path)
    reference = _sitk_volume(tmp_path)
    assert volume.shape == (10, 12, 6)
    np.testing.assert_array_equal(volume.array, _expected_hu(stored))
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine_ras, reference.affine_ras, atol=1e-5)
    assert volume.array.dtype == np.int16


def test_missing_slice_is_refused_naming_the_gap_or_interpolated_with_allow_gaps(tmp_path):
    stored = _stored(n=6)
    paths = write_series(tmp_path, stored, slice_mm=2.0, origin=(0, 0, 10))
    paths[3].unlink()  # slice at z = 16 mm
    with pytest.raises(InputError) as info:
        read_volume(tmp_path)
    message = str(info.value)
    assert "missing slices between 14 mm (slice002.dcm) and 18 mm (slice004.dcm)" in message
    assert "2.0x the median spacing 2 mm" in message and "--allow-gaps" in message
    with pytest.raises(InputError, match="missing slices between 14 mm"):
        check_input(tmp_path)  # the header-only check finds it before any decoding
    volume = read_volume(tmp_path, allow_gaps=True)
    assert volume.shape == (10, 12, 6)
    np.testing.assert_allclose(volume.spacing_mm, [0.7, 0.8, 2.0])
    hu = stored.astype(np.float32) - 1024
    np.testing.assert_allclose(volume.array[:, :, 3], ((hu[2] + hu[4]) / 2).T, atol=1e-3)
    np.testing.assert_allclose(volume.array[:, :, 4], hu[4].T)


def test_duplicate_slice_identical_is_merged_conflicting_is_refused(tmp_path):
    stored = _stored(n=5)
    write_series(tmp_path / "dup", stored)
    ds = ct_dataset(stored[2], (-20.0, 10.0, 34.0), series_uid=__import__("pydicom").dcmread(
        tmp_path / "dup" / "slice000.dcm").SeriesInstanceUID)
    save(ds, tmp_path / "dup" / "copy_of_2.dcm")
    volume = read_volume(tmp_path / "dup")
    np.testing.assert_array_equal(volume.array, _expected_hu(stored))
    ds.PixelData = (stored[2] + 1).astype("<u2").tobytes()
    save(ds, tmp_path / "dup" / "copy_of_2.dcm")
    with pytest.raises(InputError, match=r"(copy_of_2|slice002).dcm and (copy_of_2|slice002).dcm lie at the same "
                       r"position \(34 mm along the slice normal\) but hold different pixels"):
        read_volume(tmp_path / "dup")


def test_localizer_is_excluded(tmp_path):
    stored = _stored(n=5)
    paths = write_series(tmp_path, stored)
    uid = __import__("pydicom").dcmread(paths[0]).SeriesInstanceUID
    scout = ct_dataset(np.full((12, 10), 7, np.uint16), (0, -50, 60), series_uid=uid, orientation=(1, 0, 0, 0, 0, -1),
                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    save(scout, tmp_path / "scout.dcm")
    volume = read_volume(tmp_path)
    reference = _sitk_volume(tmp_path, paths)
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine_ras, reference.affine_ras, atol=1e-6)


def test_two_series_default_most_slices_and_series_by_index_or_uid(tmp_path, caplog, capsys):
    short = write_series(tmp_path, _stored(n=3, seed=1), names=[f"a{k}" for k in range(3)], series_uid="1.2.3.111")
    write_series(tmp_path, _stored(n=5, seed=2), names=[f"b{k}" for k in range(5)], series_uid="1.2.3.222")
    with caplog.at_level(logging.WARNING, logger="liverseg"):
        assert read_volume(tmp_path).shape[2] == 5
    assert "2 DICOM series found; using 1.2.3.222 (5 slices" in caplog.text
    by_index = read_volume(tmp_path, series="1")
    by_uid = read_volume(tmp_path, series="1.2.3.111")
    np.testing.assert_array_equal(by_index.array, by_uid.array)
    np.testing.assert_array_equal(by_uid.array, _sitk_volume(tmp_path, short).array)
    with pytest.raises(InputError, match="--series 2 is out of range: 2 series found"):
        read_volume(tmp_path, series="2")
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith("0  1.2.3.222") and lines[2].startswith("1  1.2.3.111")
    assert "0.7, 0.8, 2" in lines[1] and "explicit LE" in lines[1] and "LPS" in lines[1]


def test_gantry_tilt_is_corrected_onto_an_orthogonal_grid(tmp_path, caplog):
    """Each slice origin drifts 1 pixel (0.8 mm between rows) along y per slice: a bright column that is vertical in
    the patient appears to wander in the stored slices; after correction it sits at one (i, j)."""
    n, rows, cols = 5, 12, 10
    stored = np.full((n, rows, cols), 100, np.uint16)
    positions = []
    for k in range(n):
        stored[k, 6 - k, 4] = 1500  # world row 6 is stored at row 6 - k because the slice origin moved by +k rows
        positions.append((-20.0, 10.0 + 0.8 * k, 30.0 + 2.0 * k))
    write_series(tmp_path, stored, positions=positions, tilt=21.8)
    with caplog.at_level(logging.WARNING, logger="liverseg"):
        volume = read_volume(tmp_path)
    assert "gantry tilt" in caplog.text
    assert volume.shape == (cols, rows, n)
    bright = np.argwhere(volume.array > 400)
    assert bright.tolist() == [[4, 6, k] for k in range(n)]
    np.testing.assert_allclose(volume.affine_ras[:3, :3], np.diag([-0.7, -0.8, 2.0]), atol=1e-9)
    np.testing.assert_allclose(volume.affine_ras[:3, 3], [20.0, -10.0, 30.0])


def test_per_slice_rescale_is_applied(tmp_path):
    stored = _stored(n=4)
    slopes, intercepts = [1.0, 0.5, 2.0, 1.0], [-1024.0, -1000.0, -2048.0, 0.0]
    series_uid = generate_uid()
    for k in range(4):
        save(ct_dataset(stored[k], (0, 0, 2.0 * k), series_uid=series_uid, slope=slopes[k],
                        intercept=intercepts[k]), tmp_path / f"s{k}")
    volume = read_volume(tmp_path)
    expected = np.stack([stored[k] * slopes[k] + intercepts[k] for k in range(4)]).transpose(2, 1, 0)
    np.testing.assert_allclose(volume.array, expected)
    # (SimpleITK is not the reference here: it picks one integer pixel type for the whole series and
    # loses the 0.5 steps of the slope-0.5 slice)


def test_nonuniform_spacing_is_resampled_to_uniform(tmp_path):
    stored = _stored(n=5)
    z = [0.0, 2.0, 4.0, 5.0, 8.0]  # steps 2, 2, 1, 3: no step above 1.5x the median (2)
    write_series(tmp_path, stored, positions=[(0, 0, v) for v in z])
    volume = read_volume(tmp_path)
    assert volume.shape[2] == 5 and volume.spacing_mm[2] == pytest.approx(2.0)
    hu = stored.astype(np.float32) - 1024
    np.testing.assert_allclose(volume.array[:, :, 3], (hu[3] * 2 / 3 + hu[4] / 3).T, atol=1e-3)  # z = 6
    np.testing.assert_allclose(volume.array[:, :, 4], hu[4].T)


def test_enhanced_multiframe_ct(tmp_path):
    stored = _stored(n=5)
    slopes, intercepts = [1, 1, 2, 1, 1], [-1024, -1000, -1024, -1024, 0]
    ds = multiframe_dataset(stored, orientation=OBLIQUE, slopes=slopes, intercepts=intercepts, order=[3, 0, 4, 1, 2])
    path = save(ds, tmp_path / "mf" / "enhanced.dcm")
    single = tmp_path / "single"
    write_series(single, stored, orientation=OBLIQUE)
    volume = read_volume(path)
    reference = _sitk_volume(single)
    expected = np.stack([stored[k].astype(np.int32) * slopes[k] + intercepts[k] for k in range(5)]).transpose(2, 1, 0)
    np.testing.assert_array_equal(volume.array, expected)
    np.testing.assert_allclose(volume.affine_ras, reference.affine_ras, atol=1e-5)
    np.testing.assert_array_equal(read_volume(tmp_path / "mf").array, volume.array)  # found in a folder too


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, "gdcm-jpeg"], ids=["rle", "jpeg-ls", "jpeg-lossless"])
def test_compressed_transfer_syntaxes(tmp_path, syntax):
    stored = _stored(n=3)
    paths = write_series(tmp_path / "plain", stored)
    packed = tmp_path / "packed"
    packed.mkdir()
    if syntax == "gdcm-jpeg":  # JPEG lossless (process 14), written by GDCM (pydicom has no encoder for it)
        for k, p in enumerate(paths):
            image = sitk.GetImageFromArray(stored[k][None].astype(np.int16) - 1024)
            for key, value in (("0008|0060", "CT"), ("0020|000e", "1.2.3.77"), ("0028|0030", "0.8\\0.7"),
                               ("0020|0032", f"-20\\10\\{30 + 2 * k}"), ("0020|0037", "1\\0\\0\\0\\1\\0")):
                image.SetMetaData(key, value)
            writer = sitk.ImageFileWriter()
            writer.SetImageIO("GDCMImageIO")
            writer.KeepOriginalImageUIDOn()
            writer.SetUseCompression(True)
            writer.SetCompressor("JPEG")
            writer.SetFileName(str(packed / p.name))
            writer.Execute(image)
        assert "4.70" in str(__import__("pydicom").dcmread(packed / paths[0].name).file_meta.TransferSyntaxUID)
    else:
        pydicom = __import__("pydicom")
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.compress(syntax)
            ds.save_as(packed / p.name)
    volume = read_volume(packed)
    np.testing.assert_array_equal(volume.array, _expected_hu(stored))
    np.testing.assert_array_equal(volume.array, _sitk_volume(packed).array)


@pytest.mark.skipif(not SHARED_J2K.is_dir(), reason="../shared/data/totalseg_example/dicom_series_jpeg2000 not present")
def test_real_jpeg2000_series_equals_simpleitk():
    volume = read_volume(SHARED_J2K)
    reference = _sitk_volume(SHARED_J2K)
    assert volume.shape == (512, 512, 20)
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine_ras, reference.affine_ras, atol=1e-6)


def test_not_dicom_folder_and_single_slice_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "junk").write_bytes(b"\x00" * 300)
    with pytest.raises(InputError, match="no readable DICOM image series"):
        read_volume(tmp_path)
    write_series(tmp_path / "one", _stored(n=1))
    with pytest.raises(InputError, match="has a single slice"):
        read_volume(tmp_path / "one")


def test_cli_inspect_bad_folder_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("liverseg inspect: error:") and str(tmp_path) in err[-1]


def test_random_file_order_does_not_change_the_result(tmp_path):
    stored = _stored(n=7, seed=3)
    order = list(range(7))
    random.Random(0).shuffle(order)
    names = [f"x{order[k]:02d}" for k in range(7)]
    write_series(tmp_path, stored, names=names, orientation=(0, 1, 0, 0, 0, -1))  # sagittal
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, _sitk_volume(tmp_path).array)
    np.testing.assert_allclose(volume.affine_ras, _sitk_volume(tmp_path).affine_ras, atol=1e-6)


# ----------------------------------------------------------------------------- discovery cache

def _count_header_reads(monkeypatch) -> list:
    """Every header-only pydicom read from now on (discovery's; decoding reads whole files)."""
    import pydicom

    reads: list = []
    real = pydicom.dcmread

    def counting(path, *args, **kwargs):
        if kwargs.get("stop_before_pixels"):
            reads.append(path)  # a path, or the file discovery opened
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    return reads


def test_unchanged_folder_is_discovered_once_and_a_changed_file_invalidates(tmp_path, monkeypatch, caplog):
    import pydicom

    from liverseg.io import dicom
    from liverseg.io.dicom import discovery

    monkeypatch.setattr(discovery, "SETTLE_S", 0.0)  # the files were just written; see the next test
    stored = _stored(n=5)
    paths = write_series(tmp_path, stored)
    (tmp_path / "junk.bin").write_bytes(b"not dicom at all")
    reads = _count_header_reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="liverseg.io.dicom"):
        check_input(tmp_path)
        assert len(reads) == 6
        volume = read_volume(tmp_path)
        assert len(reads) == 6  # read_volume's discovery parsed nothing
        assert dicom.find_series(tmp_path)[0].n_slices == 5 and len(reads) == 6
    np.testing.assert_array_equal(volume.array, _expected_hu(stored))
    assert sum("junk.bin" in r.getMessage() for r in caplog.records) == 1  # said once, not per discovery
    # a cached result handed out is the caller's own: changing it does not change the next one
    found = dicom.find_series(tmp_path)
    found[0].frames.clear()
    assert dicom.find_series(tmp_path)[0].n_slices == 5

    # Same size, modification time put back (as `cp -p` leaves it): the change time still tells.
    time.sleep(0.05)  # past the file-time tick of the first write
    before = paths[2].stat()
    ds = pydicom.dcmread(paths[2])
    ds.ImagePositionPatient = [-20.0, 10.0, 50.0]  # same length: one slice moves, leaving a gap
    ds.save_as(paths[2])
    os.utime(paths[2], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert paths[2].stat().st_size == before.st_size
    with pytest.raises(InputError, match="missing slices"):
        check_input(tmp_path)
    assert len(reads) == 12  # the whole folder parsed again
    paths[2].unlink()
    assert dicom.find_series(tmp_path)[0].n_slices == 4 and len(reads) == 17


def test_files_written_moments_ago_are_not_cached(tmp_path, monkeypatch):
    """File times tick coarsely: a file rewritten within the same tick, at the same size, would look
    unchanged. A folder with a file changed less than SETTLE_S ago is therefore parsed every time."""
    from liverseg.io import dicom

    write_series(tmp_path, _stored(n=3))
    reads = _count_header_reads(monkeypatch)
    dicom.find_series(tmp_path)
    dicom.find_series(tmp_path)
    assert len(reads) == 6


def test_file_listing_follows_os_walk_order_and_opens_nothing(tmp_path):
    """One scandir pass lists what os.walk listed before (sorted files, then sorted subfolders depth
    first, links to folders not entered) and only stats each file: a FIFO would block an open, so it
    is not listed but passed over as a special file."""
    from liverseg.io.dicom.files import all_files, list_files

    for name in ("b/z.dcm", "b/a/y", "a.dcm", "c/x", "B.dcm", "b/a/deeper/w"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * len(name))
    (tmp_path / "link").symlink_to(tmp_path / "c", target_is_directory=True)
    os.mkfifo(tmp_path / "b" / "pipe")
    walked = []
    for directory, subdirs, names in os.walk(tmp_path):
        subdirs.sort()
        walked.extend(Path(directory) / n for n in sorted(names))
    walked.remove(tmp_path / "b" / "pipe")
    files, stamps, others = list_files(tmp_path)
    assert files == walked == all_files(tmp_path)
    assert all(stamps) and [(o.path, o.kind, o.reason) for o in others] == [
        (tmp_path / "link", "link", "link to a folder"), (tmp_path / "b" / "pipe", "special", "FIFO")]
    assert list_files(tmp_path / "a.dcm") == ([tmp_path / "a.dcm"], [stamps[files.index(tmp_path / "a.dcm")]], [])
