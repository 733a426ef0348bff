"""Tests for the synthetic CT phantoms (liverseg.phantoms)."""
from __future__ import annotations

import functools
import os

import nibabel as nib
import numpy as np
import pytest

from liverseg.io.volume import voxel_to_world
from liverseg.phantoms import MAX_VOXELS, make_phantom, phantom_dataset


@functools.lru_cache(maxsize=None)
def _phantom(seed, spacing_mm=None, orientation=None, oblique_deg=None):
    return make_phantom(seed, spacing_mm=spacing_mm, orientation=orientation, oblique_deg=oblique_deg)


def _liver_world(label):
    return voxel_to_world(label.affine_ras, np.argwhere(label.array > 0))


def test_deterministic_per_seed_and_seeds_differ():
    ct1, lab1 = make_phantom(11)
    ct2, lab2 = make_phantom(11)
    assert np.array_equal(ct1.array, ct2.array)
    assert np.array_equal(lab1.array, lab2.array)
    assert np.array_equal(ct1.affine_ras, ct2.affine_ras)
    assert ct1.meta == ct2.meta
    ct3, lab3 = make_phantom(12)
    assert ct3.shape != ct1.shape or not np.array_equal(ct3.array, ct1.array)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_grid_types_and_liver_fraction(seed):
    ct, label = _phantom(seed)
    assert ct.array.dtype == np.float32 and label.array.dtype == np.uint8
    assert ct.same_grid(label)
    assert int(np.prod(ct.shape)) <= MAX_VOXELS
    assert set(np.unique(label.array).tolist()) == {0, 1}
    assert ct.array.min() >= -1024 and ct.array.max() <= 3071
    assert 0.02 <= label.array.mean() <= 0.25
    sp = np.sort(ct.spacing_mm)
    assert 1.4 - 1e-6 <= sp[0] and sp[1] <= 2.4 + 1e-6 and 2.5 - 1e-6 <= sp[2] <= 5.0 + 1e-6
    for key in ("source", "seed", "orientation", "oblique_deg"):
        assert key in ct.meta and ct.meta == label.meta
    assert ct.meta["source"] == "phantom" and ct.meta["seed"] == seed


@pytest.mark.parametrize("orientation,oblique", [
    ("LPS", 0.0), ("RAS", 0.0), ("SLP", 0.0), ("PLS", 7.0), ("RPI", 10.0), (None, None)])
def test_liver_is_on_patients_right(orientation, oblique):
    # RAS+: +x is the patient's right (nibabel's "R"), so the liver sits at world x > 0.
    _, label = _phantom(3, (4.0, 4.0, 4.0), orientation, oblique)
    world = _liver_world(label)
    assert world[:, 0].mean() > 20.0
    # Cross-check against nibabel's own reading of the affine, independent of our sign convention.
    codes = nib.aff2axcodes(label.affine_ras)
    axis = codes.index("R") if "R" in codes else codes.index("L")
    centroid = np.argwhere(label.array > 0).mean(axis=0)[axis]
    towards_right = centroid > (label.shape[axis] - 1) / 2
    assert towards_right == (codes[axis] == "R")


def test_same_seed_is_same_patient_on_any_grid():
    # The label of one grid, looked up at the voxel centres of a permuted, flipped, oblique grid,
    # must agree with the label generated directly on that grid.
    _, a = _phantom(4, (3.0, 3.0, 3.0), "LPS", 0.0)
    _, b = _phantom(4, (3.5, 3.0, 3.0), "SLP", 8.0)
    ijk_b = np.stack(np.meshgrid(*[np.arange(n) for n in b.shape], indexing="ij"), -1).reshape(-1, 3)
    world = voxel_to_world(b.affine_ras, ijk_b)
    ijk_a = np.rint(voxel_to_world(np.linalg.inv(a.affine_ras), world)).astype(int)
    inside = np.all((ijk_a >= 0) & (ijk_a < np.array(a.shape)), axis=1)
    looked_up = np.zeros(len(world), dtype=bool)
    looked_up[inside] = a.array[tuple(ijk_a[inside].T)] > 0
    direct = b.array.reshape(-1) > 0
    dice = 2 * np.sum(looked_up & direct) / (looked_up.sum() + direct.sum())
    assert dice > 0.88


def test_liver_hu_and_liver_like_neighbours():
    ct, label = _phantom(5)
    liver = label.array > 0
    assert 40.0 <= float(ct.array[liver].mean()) <= 80.0
    # Non-liver soft tissue in the liver's HU range (spleen, muscle, pancreas...) must exist, and the
    # spleen-like part of it on the patient's left.
    similar = (~liver) & (ct.array > 45) & (ct.array < 65)
    assert similar.sum() > 0.2 * liver.sum()
    world_x = voxel_to_world(ct.affine_ras, np.argwhere(similar))[:, 0]
    assert np.sum(world_x < -40) > 0.05 * liver.sum()


def test_explicit_orientation_spacing_and_angle_are_honoured():
    ct, label = _phantom(6, (4.0, 4.0, 5.0), "LPS", 0.0)
    cols = ct.affine_ras[:3, :3]
    assert np.allclose(cols, np.diag([-4.0, -4.0, 5.0]))
    assert nib.aff2axcodes(ct.affine_ras) == ("L", "P", "S")
    assert ct.meta["orientation"] == "LPS" and ct.meta["oblique_deg"] == 0.0
    # Grid centred on the phantom.
    centre = voxel_to_world(ct.affine_ras, (np.array(ct.shape) - 1) / 2)
    assert np.all(np.abs(centre) < 15)

    ct2, _ = _phantom(6, (4.0, 4.0, 4.0), "SLP", 6.0)
    assert nib.aff2axcodes(ct2.affine_ras) == ("S", "L", "P")
    assert ct2.meta["oblique_deg"] == 6.0
    unit = ct2.affine_ras[:3, :3] / 4.0
    assert np.allclose(unit.T @ unit, np.eye(3), atol=1e-9)
    straight = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])   # S, L, P columns
    tilt = unit @ straight.T
    assert np.degrees(np.arccos((np.trace(tilt) - 1) / 2)) == pytest.approx(6.0, abs=1e-6)

    with pytest.raises(ValueError):
        make_phantom(6, orientation="LLS")


def test_phantom_dataset_writes_readable_nifti(tmp_path):
    entries = phantom_dataset(tmp_path, [7, 12])
    assert entries[0] == {"id": "phantom_007", "image": "images/phantom_007.nii.gz",
                          "label": "labels/phantom_007.nii.gz"}
    assert [e["id"] for e in entries] == ["phantom_007", "phantom_012"]
    for entry, seed in zip(entries, [7, 12]):
        ct, label = make_phantom(seed)
        img = nib.load(tmp_path / entry["image"])
        lab = nib.load(tmp_path / entry["label"])
        for loaded, ref in ((img, ct), (lab, label)):
            assert loaded.shape == ref.shape
            assert np.allclose(loaded.affine, ref.affine_ras, atol=1e-4)
            assert int(loaded.header["sform_code"]) == 1 and int(loaded.header["qform_code"]) == 1
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert np.array_equal(np.asanyarray(img.dataobj), np.rint(ct.array).astype(np.int16))
        assert np.array_equal(np.asanyarray(lab.dataobj), label.array)
    # No temporary files left behind.
    for sub in ("images", "labels"):
        assert sorted(os.listdir(tmp_path / sub)) == ["phantom_007.nii.gz", "phantom_012.nii.gz"]
