"""Geometry is the product: the network grid is placed right, and everything maps back exactly.

Every test runs on LPS, RAS, oblique (rotated + permuted axes) and strongly anisotropic inputs.
"""
from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from liverseg.errors import GeometryError
from liverseg.io import read_volume, write_label_map, write_volume
from liverseg.io.volume import LPS_TO_RAS, spacing_from_affine, voxel_to_world
from liverseg.config import PreprocessConfig
from liverseg.grid.record import original_affine_from_record, plan_grid, to_canonical
from liverseg.grid.resample import resize_linear
from liverseg.grid.road import labels_to_network_grid, probabilities_to_labels, to_network_grid

from conftest import dice_of, make_volume, permutation, rotation, world_centre, world_coords

TARGET_SPACING = (1.5, 1.5, 2.0)

# name -> (shape, spacing mm, RAS direction (columns = axis directions), origin mm)
GEOMETRIES = {
    "ras": ((20, 24, 16), (1.2, 1.0, 1.5), np.eye(3), (-10.0, 20.0, 30.0)),
    "lps": ((22, 18, 14), (0.8, 0.8, 2.5), np.diag([-1.0, -1.0, 1.0]), (100.5, -80.25, -400.0)),
    "oblique": ((18, 22, 20), (1.1, 1.3, 2.0),
                rotation(0, 17.0) @ rotation(2, -11.0) @ permutation((2, 0, 1), (1, -1, 1)), (5.0, 6.0, 7.0)),
    "anisotropic": ((40, 36, 8), (0.7, 0.9, 5.0), np.diag([-1.0, -1.0, 1.0]), (12.0, -7.5, 250.0)),
}
CASES = pytest.mark.parametrize("geometry", sorted(GEOMETRIES))


def _volume(geometry: str, array=None):
    shape, spacing, direction, origin = GEOMETRIES[geometry]
    return make_volume(shape, spacing, direction, origin, array=array)


def _blob(volume) -> np.ndarray:
    """Labels 0/1/2 on the volume's grid: a world-space ellipsoid, split by a plane into 1 and 2."""
    return _blob_on_grid(volume, volume.shape, volume.affine_ras)


def _blob_on_grid(volume, shape, affine) -> np.ndarray:
    """The world-space blob of ``volume``'s field of view, sampled on any grid."""
    world_extent = np.abs(volume.affine_ras[:3, :3]) @ np.asarray(volume.shape, dtype=np.float64)
    radii = 0.35 * world_extent
    xyz = world_coords(shape, affine) - world_centre(volume.shape, volume.affine_ras)
    outer = ((xyz / radii) ** 2).sum(-1) <= 1.0
    labels = outer.astype(np.uint8)
    labels[outer & (xyz[..., 0] > 0.2 * radii[0])] = 2  # asymmetric, so a flipped axis would show
    return labels


def _face_corners(shape, affine) -> np.ndarray:
    """World positions of the 8 outer corners of the grid's field of view (voxel faces), sorted."""
    corners = np.array([[-0.5 if c == 0 else n - 0.5 for c, n in zip(combo, shape)]
                        for combo in itertools.product((0, 1), repeat=3)])
    world = voxel_to_world(affine, corners)
    return world[np.lexsort(world.T[::-1])]


# ----------------------------------------------------------------------------- the grid record

@CASES
def test_plan_grid_gives_back_the_input_affine_and_shape(geometry):
    volume = _volume(geometry)
    record = plan_grid(volume, TARGET_SPACING)

    np.testing.assert_allclose(original_affine_from_record(record), volume.affine_ras, atol=1e-5, rtol=0)
    assert record.original_shape == volume.shape

    probabilities = torch.softmax(torch.randn((2, *record.target_shape)), dim=0).numpy()
    labels = probabilities_to_labels(probabilities, record)
    assert labels.shape == volume.shape
    assert labels.dtype == np.uint8


@CASES
def test_canonical_grid_runs_along_ras_and_target_grid_keeps_the_field_of_view(geometry):
    volume = _volume(geometry)
    record = plan_grid(volume, TARGET_SPACING)
    # Each canonical axis points closest to +R, +A, +S in turn.
    direction = record.canonical_affine[:3, :3] / spacing_from_affine(record.canonical_affine)
    assert [int(np.argmax(np.abs(direction[:, k]))) for k in range(3)] == [0, 1, 2]
    assert all(direction[k, k] > 0 for k in range(3))
    # The canonical grid is the same set of voxels, the target grid covers the same box in space.
    np.testing.assert_allclose(_face_corners(record.canonical_shape, record.canonical_affine),
                               _face_corners(volume.shape, volume.affine_ras), atol=1e-6)
    np.testing.assert_allclose(_face_corners(record.target_shape, record.target_affine),
                               _face_corners(volume.shape, volume.affine_ras), atol=1e-6)
    # Target spacing is the requested one up to the rounding of the voxel count (< half a voxel overall).
    canonical_extent = np.asarray(record.canonical_shape) * spacing_from_affine(record.canonical_affine)
    np.testing.assert_allclose(record.target_spacing_mm * record.target_shape, canonical_extent, rtol=1e-9)
    # n' = round(n * s / t) voxels, so the spacing is off by at most half a voxel over the extent.
    requested = np.asarray(TARGET_SPACING)
    assert np.all(np.abs(record.target_spacing_mm - requested)
                  <= 0.5 * requested / np.asarray(record.target_shape) + 1e-9)


def _linear(xyz: np.ndarray) -> np.ndarray:
    return 0.3 * xyz[..., 0] - 0.7 * xyz[..., 1] + 1.1 * xyz[..., 2] + 5.0


@CASES
def test_target_affine_places_resampled_values_where_they_belong(geometry):
    """A linear function of world position, resampled, equals the function at the target voxel centres."""
    volume = _volume(geometry)
    record = plan_grid(volume, TARGET_SPACING)
    values = _linear(world_coords(volume.shape, volume.affine_ras))

    canonical = np.ascontiguousarray(to_canonical(values, record.ornt))
    assert canonical.shape == record.canonical_shape
    np.testing.assert_allclose(canonical, _linear(world_coords(record.canonical_shape, record.canonical_affine)),
                               atol=1e-9)

    resampled = canonical.astype(np.float32)
    for axis, size in enumerate(record.target_shape):  # linear, without the anti-aliasing Gaussian
        resampled = resize_linear(resampled, axis, size)
    assert resampled.shape == record.target_shape
    expected = _linear(world_coords(record.target_shape, record.target_affine))

    # Interior: voxels whose sampling position lies inside the source grid (no edge clamping).
    inside = np.ones(record.target_shape, dtype=bool)
    for axis, (n_src, n_dst) in enumerate(zip(record.canonical_shape, record.target_shape)):
        src = (np.arange(n_dst) + 0.5) * (n_src / n_dst) - 0.5
        ok = (src >= 0) & (src <= n_src - 1)
        shape = [1, 1, 1]
        shape[axis] = n_dst
        inside &= ok.reshape(shape)
    assert inside.mean() > 0.5
    scale = float(np.ptp(values))
    np.testing.assert_allclose(resampled[inside], expected[inside], atol=1e-3 * scale, rtol=0)


# ----------------------------------------------------------------------------- labels there and back

def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return (np.arange(classes).reshape(-1, 1, 1, 1) == labels[None]).astype(np.float32)


@CASES
def test_label_round_trip_is_exact_at_the_input_spacing(geometry):
    volume = _volume(geometry)
    labels = _blob(volume)
    assert set(np.unique(labels)) == {0, 1, 2}
    canonical_spacing = spacing_from_affine(plan_grid(volume, TARGET_SPACING).canonical_affine)
    record = plan_grid(volume, tuple(canonical_spacing))
    assert record.target_shape == record.canonical_shape

    on_network = labels_to_network_grid(volume.with_array(labels), record)
    assert tuple(on_network.shape) == record.target_shape
    back = probabilities_to_labels(_one_hot(on_network, 3), record)  # prediction's way back
    assert back.shape == volume.shape
    np.testing.assert_array_equal(back, labels)


@CASES
def test_label_round_trip_is_close_after_resampling(geometry):
    volume = _volume(geometry)
    labels = _blob(volume)
    record = plan_grid(volume, TARGET_SPACING)
    assert record.target_shape != record.canonical_shape  # really resampled

    on_network = labels_to_network_grid(volume.with_array(labels), record)
    assert on_network.shape == record.target_shape
    # On the network grid the label sits where the same world-space blob is.
    expected_network = _blob_on_grid(volume, record.target_shape, record.target_affine)
    for value in (1, 2):
        assert dice_of(on_network == value, expected_network == value) > 0.85, value

    # Probabilities mapped back before the argmax (prediction's way back) land in the same place.
    from_probabilities = probabilities_to_labels(_one_hot(on_network, 3), record)
    assert from_probabilities.shape == volume.shape
    for value in (1, 2):
        assert dice_of(from_probabilities == value, labels == value) > 0.9, value


# ----------------------------------------------------------------------------- the image road there and back

HU_OF_LABEL = np.array([-100.0, 100.0, 200.0])  # background, 1, 2: window-scaled to 0.2, 0.6, 0.8
WINDOW = (-200.0, 300.0)


def _labels_of_image(image: np.ndarray) -> np.ndarray:
    return np.digitize(image, [0.4, 0.7]).astype(np.uint8)


@CASES
def test_the_image_road_puts_the_ct_in_place_and_its_prediction_back_on_the_input_grid(geometry):
    volume = _volume(geometry)
    labels = _blob(volume)
    expected_network = None
    # One structure at a time (200 HU in -100 HU), label 2 being the asymmetric one a flip would move:
    # with three intensities, a blurred 0-2 boundary would pass through label 1's intensity.
    for value in (1, 2):
        ct = volume.with_array(np.where(labels == value, 200, -100).astype(np.int16))
        image, record = to_network_grid(ct, PreprocessConfig(spacing_mm=TARGET_SPACING, hu_window=WINDOW))
        assert image.dtype == np.float32 and image.shape == record.target_shape
        assert 0.2 - 1e-6 <= image.min() and image.max() <= 0.8 + 1e-6

        found = (image > 0.5).astype(np.uint8)  # what a perfect network would say
        if expected_network is None:
            expected_network = _blob_on_grid(volume, record.target_shape, record.target_affine)
        assert dice_of(found == 1, expected_network == value) > 0.85, value
        back = probabilities_to_labels(_one_hot(found, 2), record)
        assert back.shape == volume.shape
        assert dice_of(back == 1, labels == value) > 0.9, value


@CASES
def test_the_image_road_at_the_input_spacing_only_reorients_and_comes_back_exactly(geometry):
    volume = _volume(geometry)
    labels = _blob(volume)
    volume = volume.with_array(HU_OF_LABEL[labels].astype(np.int16))
    canonical_spacing = tuple(spacing_from_affine(plan_grid(volume, TARGET_SPACING).canonical_affine))
    image, record = to_network_grid(volume, PreprocessConfig(spacing_mm=canonical_spacing, hu_window=WINDOW))
    assert record.target_shape == record.canonical_shape
    expected = (to_canonical(HU_OF_LABEL[labels], record.ornt) + 200.0) / 500.0
    np.testing.assert_allclose(image, expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(probabilities_to_labels(_one_hot(_labels_of_image(image), 3), record), labels)


def test_labels_to_network_grid_refuses_a_label_map_of_another_shape():
    volume = _volume("ras")
    record = plan_grid(volume, TARGET_SPACING)
    with pytest.raises(GeometryError, match=r"\(19, 24, 16\)"):
        labels_to_network_grid(np.zeros((19, 24, 16), dtype=np.uint8), record)


# ----------------------------------------------------------------------------- files

@CASES
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_written_label_map_sits_on_the_input_grid(tmp_path, geometry, suffix):
    rng = np.random.default_rng(1)
    shape = GEOMETRIES[geometry][0]
    volume = _volume(geometry, array=rng.normal(0, 100, shape).astype(np.float32))
    image_path = write_volume(volume, tmp_path / f"image{suffix}")
    read = read_volume(image_path)
    assert read.shape == volume.shape
    np.testing.assert_allclose(read.affine_ras, volume.affine_ras, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(read.array, volume.array)

    labels = _blob(read)
    seg_path = write_label_map(labels, read, tmp_path / f"segmentation{suffix}")

    image_itk = sitk.ReadImage(str(image_path))
    seg_itk = sitk.ReadImage(str(seg_path))
    assert seg_itk.GetSize() == image_itk.GetSize()
    np.testing.assert_allclose(seg_itk.GetSpacing(), image_itk.GetSpacing(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(seg_itk.GetOrigin(), image_itk.GetOrigin(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(seg_itk.GetDirection(), image_itk.GetDirection(), atol=1e-5, rtol=0)
    assert seg_itk.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg_itk).transpose(2, 1, 0), labels)


def test_write_label_map_refuses_another_grid(tmp_path):
    volume = _volume("ras")
    with pytest.raises(GeometryError, match=r"\(19, 24, 16\)"):
        write_label_map(np.zeros((19, 24, 16), dtype=np.uint8), volume, tmp_path / "seg.nii.gz")
    assert not (tmp_path / "seg.nii.gz").exists()


@CASES
def test_nifti_written_by_liverseg_has_the_same_ras_affine_in_nibabel(tmp_path, geometry):
    rng = np.random.default_rng(2)
    shape = GEOMETRIES[geometry][0]
    volume = _volume(geometry, array=rng.normal(0, 100, shape).astype(np.float32))
    path = write_volume(volume, tmp_path / "image.nii.gz")
    image = nib.load(str(path))
    np.testing.assert_allclose(image.affine, volume.affine_ras, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.asarray(image.dataobj), volume.array)


@pytest.mark.parametrize("direction_lps", [
    np.eye(3),
    np.diag([1.0, -1.0, -1.0]),
    rotation(1, 14.0) @ permutation((1, 0, 2), (1, 1, -1)),
], ids=["identity", "flipped", "oblique"])
def test_lps_image_gives_ras_affine_with_first_two_rows_negated(tmp_path, direction_lps):
    spacing, origin = (0.75, 1.25, 3.0), (-120.5, 33.0, 410.25)
    array_zyx = np.arange(5 * 6 * 7, dtype=np.int16).reshape(7, 6, 5)  # sitk arrays are (z, y, x)
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(float(v) for v in direction_lps.ravel()))
    path = tmp_path / "lps.mha"
    sitk.WriteImage(image, str(path))

    volume = read_volume(path)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction_lps * np.asarray(spacing)[None, :]
    affine_lps[:3, 3] = origin
    np.testing.assert_allclose(volume.affine_ras[:2], -affine_lps[:2], atol=1e-9)
    np.testing.assert_allclose(volume.affine_ras[2:], affine_lps[2:], atol=1e-9)
    np.testing.assert_allclose(volume.affine_ras, LPS_TO_RAS @ affine_lps, atol=1e-9)

    # Array index [i, j, k] is SimpleITK index (i, j, k), and lands at the same physical point.
    assert volume.shape == image.GetSize()
    for ijk in [(0, 0, 0), (4, 0, 0), (0, 5, 0), (0, 0, 6), (3, 2, 5)]:
        assert volume.array[ijk] == image.GetPixel(ijk)
        point_lps = np.asarray(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(voxel_to_world(volume.affine_ras, ijk), point_lps * [-1, -1, 1], atol=1e-9)


def test_shared_ct_reads_with_nibabel_affine(shared_data):
    path = shared_data / "totalseg_example" / "ct_3mm.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not present in the shared sample data")
    volume = read_volume(path)
    image = nib.load(str(path))
    assert volume.shape == image.shape[:3]
    np.testing.assert_allclose(volume.affine_ras, image.affine, atol=1e-3, rtol=0)
    record = plan_grid(volume, (4.0, 4.0, 4.0))
    np.testing.assert_allclose(original_affine_from_record(record), volume.affine_ras, atol=1e-5, rtol=0)


def test_tiny_nifti_fixture_reads_back_with_its_lps_geometry(nifti_file):
    from liverseg.io import case_name

    volume = read_volume(nifti_file)
    assert case_name(nifti_file) == "tiny"
    assert volume.shape == (12, 10, 8)
    np.testing.assert_allclose(volume.spacing_mm, (2.0, 2.0, 3.0), atol=1e-6)
    # RAS affine of an LPS-oriented grid: first two axes point to -R and -A.
    np.testing.assert_allclose(volume.affine_ras[:3, :3], np.diag([-2.0, -2.0, 3.0]), atol=1e-6)
    np.testing.assert_allclose(volume.affine_ras[:3, 3], (10.0, -5.0, 3.0), atol=1e-5)
    itk = sitk.ReadImage(str(nifti_file))
    np.testing.assert_allclose(itk.GetDirection(), (1, 0, 0, 0, 1, 0, 0, 0, 1), atol=1e-6)  # identity in LPS
    np.testing.assert_allclose(itk.GetOrigin(), (-10.0, 5.0, 3.0), atol=1e-5)


def test_axis_orientation_agrees_with_nibabel_on_permuted_flipped_oblique_and_sheared_affines():
    """liverseg's own io_orientation (no nibabel import at prediction start-up) gives nibabel's answer."""
    from liverseg.io.volume import axis_codes, axis_orientation

    rng = np.random.default_rng(0)
    affines = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            affine = np.eye(4)
            affine[:3, :3] = np.eye(3)[:, perm] * np.asarray(signs) * rng.uniform(0.3, 5.0, 3)
            affines.append(affine)
    for _ in range(200):  # oblique, anisotropic and slightly sheared
        affine = np.eye(4)
        affine[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] @ np.diag(rng.uniform(0.3, 5.0, 3))
        affine[:3, :3] += rng.normal(0, 0.05, (3, 3))
        affine[:3, 3] = rng.normal(0, 100, 3)
        affines.append(affine)
    affines.append(np.diag([1.0, 1.0, 1.0, 1.0]) @ np.array(  # 45 degrees: a tie broken in axis order
        [[np.sqrt(0.5), -np.sqrt(0.5), 0, 0], [np.sqrt(0.5), np.sqrt(0.5), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    for affine in affines:
        np.testing.assert_array_equal(axis_orientation(affine), nib.orientations.io_orientation(affine).astype(int))
        assert axis_codes(affine) == "".join(nib.aff2axcodes(affine))
