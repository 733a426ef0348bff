"""Shared fixtures: tiny synthetic volumes with known geometry, and a tiny training dataset."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from liverseg.io import write_volume
from liverseg.io.volume import Volume, voxel_to_world
from liverseg.datasets.manifest import write_manifest

# The project sees the shared sample data at ../shared/data (never copied into the repository).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ----------------------------------------------------------------------------- geometry helpers

def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation by ``degrees`` about world axis 0, 1 or 2."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def permutation(order: tuple[int, int, int], signs: tuple[int, int, int] = (1, 1, 1)) -> np.ndarray:
    """3x3 direction whose column ``a`` is ``signs[a]`` times world unit vector ``order[a]``."""
    d = np.zeros((3, 3))
    for a, (w, s) in enumerate(zip(order, signs)):
        d[w, a] = s
    return d


def ras_affine(spacing, direction=None, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing, dtype=np.float64)[None, :]
    affine[:3, 3] = origin
    return affine


def make_volume(shape, spacing, direction=None, origin=(0.0, 0.0, 0.0), array=None,
                dtype=np.float32) -> Volume:
    """A Volume with a RAS affine built from spacing (mm), a 3x3 RAS direction (columns) and origin."""
    if array is None:
        array = np.zeros(shape, dtype=dtype)
    assert tuple(array.shape) == tuple(shape)
    return Volume(array, ras_affine(spacing, direction, origin))


def world_coords(shape, affine) -> np.ndarray:
    """(X, Y, Z, 3) RAS world coordinates of every voxel centre."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return voxel_to_world(affine, ijk)


def world_centre(shape, affine) -> np.ndarray:
    return voxel_to_world(affine, (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0)


def ellipsoid_mask(shape, affine, centre, radii_mm) -> np.ndarray:
    xyz = world_coords(shape, affine)
    q = (((xyz - np.asarray(centre)) / np.asarray(radii_mm)) ** 2).sum(-1)
    return q <= 1.0


def sop_instance_uid(path) -> str:
    """A DICOM file's SOPInstanceUID (from the file meta when the dataset's own is blank)."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    return str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID)


def read_dicom_seg_frames(seg_path: Path, files) -> tuple[object, dict[str, np.ndarray]]:
    """A DICOM SEG read back by highdicom: (the dataset, {source SOPInstanceUID: label frame})."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    uids = [sop_instance_uid(f) for f in files]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    return seg, dict(zip(uids, frames))


def dice_of(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


@pytest.fixture
def nifti_file(tmp_path) -> Path:
    """A tiny oblique-free LPS-oriented CT-like NIfTI file (12x10x8, 2 x 2 x 3 mm)."""
    rng = np.random.default_rng(0)
    volume = make_volume((12, 10, 8), (2.0, 2.0, 3.0), np.diag([-1.0, -1.0, 1.0]), (10.0, -5.0, 3.0),
                         array=rng.normal(0, 50, (12, 10, 8)).astype(np.float32))
    return write_volume(volume, tmp_path / "tiny.nii.gz")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED_DATA} (it lives beside the project, "
                    "never in the repository)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _cold_dicom_discovery_cache():
    """Each test starts as a fresh process does: ``find_series`` caches the discovery of an unchanged
    DICOM folder for the rest of the process, and one test's discoveries must not answer another's."""
    from liverseg.io.dicom import clear_series_cache

    clear_series_cache()
    yield
    clear_series_cache()


# ----------------------------------------------------------------------------- tiny training set

# (case id, shape, spacing mm, RAS direction): axis-aligned RAS, DICOM-style LPS, a permuted and
# flipped grid (P, I, R) rotated by 12 degrees, and a permuted grid (S, R, A) without rotation.
TINY_CASES = (
    ("case_ras", (40, 36, 24), (3.5, 3.5, 4.0), np.eye(3)),
    ("case_lps", (40, 36, 24), (3.5, 3.5, 4.0), np.diag([-1.0, -1.0, 1.0])),
    ("case_obl", (36, 24, 40), (3.5, 4.0, 3.5), rotation(2, 12.0) @ permutation((1, 2, 0), (-1, -1, 1))),
    ("case_perm", (24, 40, 36), (4.0, 3.5, 3.5), permutation((2, 0, 1))),
)
TRAIN_IDS = ("case_ras", "case_lps", "case_obl")
VAL_IDS = ("case_perm",)


def _tiny_case(shape, spacing, direction, seed: int) -> tuple[Volume, Volume]:
    # Put the volume centre near the world origin, whatever the orientation.
    affine = ras_affine(spacing, direction)
    affine[:3, 3] = -world_centre(shape, affine) + np.array([2.0, -3.0, 5.0])
    centre = world_centre(shape, affine)
    xyz = world_coords(shape, affine) - centre
    body = (((xyz / np.array([62.0, 55.0, 70.0])) ** 2).sum(-1)) <= 1.0
    liver_centre = np.array([-15.0, 5.0, 4.0])  # off-centre so a flipped axis would show
    liver = ((((xyz - liver_centre) / np.array([38.0, 30.0, 24.0])) ** 2).sum(-1)) <= 1.0
    liver &= body
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0)
    hu[body] = 0.0
    hu[liver] = 60.0
    hu += rng.normal(0.0, 8.0, shape)
    image = Volume(hu.astype(np.int16), affine)
    label = Volume(liver.astype(np.uint8), affine)
    return image, label


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Four small synthetic CTs (RAS, LPS, oblique, permuted) + labels + a liverseg manifest (train 3 / val 1)."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    cases = []
    for seed, (case_id, shape, spacing, direction) in enumerate(TINY_CASES):
        image, label = _tiny_case(shape, spacing, direction, seed)
        write_volume(image, root / "images" / f"{case_id}.nii.gz")
        write_volume(label, root / "labels" / f"{case_id}.nii.gz")
        cases.append({"id": case_id, "image": f"images/{case_id}.nii.gz", "label": f"labels/{case_id}.nii.gz"})
    return write_manifest(root / "manifest.json", "tiny", {"background": 0, "liver": 1}, cases,
                          {"train": list(TRAIN_IDS), "val": list(VAL_IDS)})


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory) -> Path:
    """A run folder with the smoke config's model, untrained (seed 0): enough for `predict` to run end to
    end in well under a second (batch, cohort, robustness and fuzz tests)."""
    import torch

    from liverseg.config import load_config, to_dict
    from liverseg.models import build_model

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke_3d.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, in_channels=1, out_channels=len(cfg.data.labels))
    folder = tmp_path_factory.mktemp("untrained_run")
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 0}, folder / "best.pt")
    return folder
