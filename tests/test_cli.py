"""The command line, run in-process: train -> predict -> evaluate, resume, and bad input.

Training the smoke config on the tiny dataset takes ~10 s on 2 CPU cores; it is done once per module
(``trained_run``) and the tests that change a run work on a copy.
"""
from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from liverseg.cli import main
from liverseg.config import load_config, to_dict
from liverseg.models import build_model

from conftest import TINY_CASES, VAL_IDS

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke_3d.yaml"
CASE_IDS = [case[0] for case in TINY_CASES]


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout/stderr captured into strings (usable outside function fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _metrics_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    code, out, err = _run(["train", "--config", SMOKE, "--run-dir", run_dir, "--set",
                           f"data.manifest={tiny_dataset}", "--device", "cpu", "-q"])
    return {"dir": run_dir, "code": code, "out": out, "err": err}


@pytest.fixture
def run_dir(trained_run) -> Path:
    if trained_run["code"] != 0:
        pytest.fail(f"training the smoke config failed (exit {trained_run['code']}): {trained_run['err'][-2000:]}")
    return trained_run["dir"]


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory) -> Path:
    """A run folder holding the smoke config and an untrained model: enough for `predict` to start."""
    cfg = load_config(SMOKE)
    model = build_model(cfg.model, in_channels=1, out_channels=len(cfg.data.labels))
    folder = tmp_path_factory.mktemp("untrained_run")
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epoch": 0}, folder / "best.pt")
    return folder


def _images(tiny_dataset: Path) -> list[Path]:
    return [tiny_dataset.parent / "images" / f"{case}.nii.gz" for case in CASE_IDS]


def _assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the road

@pytest.mark.slow
def test_train_writes_a_self_describing_run_folder(trained_run, tiny_dataset):
    assert trained_run["code"] == 0, trained_run["err"]
    run_dir = trained_run["dir"]
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.csv"):
        assert (run_dir / name).is_file(), name
    assert "Traceback" not in trained_run["err"]
    assert str(run_dir / "best.pt") in trained_run["out"]
    rows = _metrics_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        assert np.isfinite(float(row["train_loss"]))
        assert 0.0 <= float(row["val_mean_dice"]) <= 1.0
    # The saved config is the resolved one, including the override.
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.data.manifest == str(tiny_dataset)
    assert cfg == load_config(SMOKE, [f"data.manifest={tiny_dataset}"])
    # No temporary files left by the atomic writes.
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_predict_writes_uint8_label_maps_on_the_input_grid(run_dir, tiny_dataset, tmp_path, capsys):
    out_dir = tmp_path / "pred"
    images = _images(tiny_dataset)
    code = main(["predict", *map(str, images), "-o", str(out_dir), "--model", str(run_dir), "--device", "cpu",
                 "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == sorted(CASE_IDS)
    assert (out_dir / "batch_summary.csv").is_file()
    for image_path, case in zip(images, CASE_IDS):
        seg_path = out_dir / case / "segmentation.nii.gz"
        assert seg_path.is_file()
        assert str(seg_path) in captured.out
        seg = sitk.ReadImage(str(seg_path))
        assert seg.GetPixelID() == sitk.sitkUInt8
        _assert_same_geometry(seg, sitk.ReadImage(str(image_path)))
        values = set(np.unique(sitk.GetArrayFromImage(seg)).tolist())
        assert values <= {0, 1}


@pytest.mark.slow
def test_evaluate_prints_dice_and_writes_csv(run_dir, tiny_dataset, tmp_path, capsys):
    out_dir = tmp_path / "pred"
    assert main(["predict", *map(str, _images(tiny_dataset)), "-o", str(out_dir), "--model", str(run_dir),
                 "--device", "cpu", "-q"]) == 0
    capsys.readouterr()
    reference = tiny_dataset.parent / "labels"
    csv_path = tmp_path / "report" / "dice.csv"

    code = main(["evaluate", str(out_dir), str(reference), "--csv", str(csv_path), "--labels", "1=liver"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Dice" in captured.out
    for case in CASE_IDS:
        assert case in captured.out
    assert csv_path.is_file()
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["case"] for r in rows) == sorted(CASE_IDS)
    for row in rows:
        assert row["name"] == "liver"
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / row["case"] / "segmentation.nii.gz"))) == 1
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(reference / f"{row['case']}.nii.gz"))) == 1
        expected = 2.0 * np.count_nonzero(pred & ref) / (np.count_nonzero(pred) + np.count_nonzero(ref))
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-6)
        assert int(row["pred_voxels"]) == np.count_nonzero(pred)
        assert int(row["ref_voxels"]) == np.count_nonzero(ref)


def test_evaluate_reference_against_itself_is_perfect(tiny_dataset, capsys):
    reference = tiny_dataset.parent / "labels"
    assert main(["evaluate", str(reference), str(reference)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(tuple(CASE_IDS))]
    assert len(lines) == len(CASE_IDS)
    for line in lines:  # case, label, Dice, IoU, sensitivity, specificity, HD95
        assert line.split()[2:] == ["1.0000", "1.0000", "1.0000", "1.0000", "0.00"]


# ----------------------------------------------------------------------------- resume

@pytest.mark.slow
def test_existing_run_is_refused_without_resume_and_continued_with_it(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = {name: (copy / name).read_bytes() for name in ("metrics.csv", "last.pt", "best.pt", "config.yaml")}

    code = main(["train", "--config", str(copy / "config.yaml"), "--run-dir", str(copy), "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    _assert_one_error_line(err, str(copy))
    assert "--resume" in err
    for name, content in before.items():
        assert (copy / name).read_bytes() == content, f"{name} changed by a refused run"

    code = main(["train", "--run-dir", str(copy), "--resume", "--set", "train.epochs=3", "--device", "cpu", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = _metrics_rows(copy)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # Epochs 1-2 are the original rows, untouched; epoch 3 continues the step count.
    with (run_dir / "metrics.csv").open(newline="") as handle:
        original = list(csv.DictReader(handle))
    assert rows[:2] == original
    assert int(rows[2]["step"]) == int(rows[1]["step"]) + load_config(SMOKE).train.iters_per_epoch
    checkpoint = torch.load(copy / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 3
    assert load_config(copy / "config.yaml").train.epochs == 3


def test_resume_without_a_run_is_refused(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "fresh"
    code = main(["train", "--config", str(SMOKE), "--run-dir", str(run), "--resume", "--set",
                 f"data.manifest={tiny_dataset}", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    _assert_one_error_line(err, str(run))
    assert not run.exists()


@pytest.mark.parametrize("damage", ["empty", "weights only"])
def test_resume_from_a_damaged_last_pt_is_refused_in_one_line(run_dir, tmp_path, capsys, damage):
    # --resume reads last.pt through the reader prediction uses: one line naming the file, not a traceback
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    if damage == "empty":
        (copy / "last.pt").write_bytes(b"")
    else:  # a checkpoint that predicts but holds no optimizer state to continue from
        checkpoint = torch.load(copy / "last.pt", map_location="cpu", weights_only=True)
        torch.save({"model": checkpoint["model"], "config": checkpoint["config"]}, copy / "last.pt")
    before = (copy / "metrics.csv").read_bytes()
    code = main(["train", "--run-dir", str(copy), "--resume", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the start-up log lines: the data is read before the weights
    assert code == 2 and "Traceback" not in err, err
    assert last.startswith("liverseg train: error: ") and str(copy / "last.pt") in last, last
    assert ("cannot be loaded" if damage == "empty" else "no training state") in last
    assert (copy / "metrics.csv").read_bytes() == before


# ----------------------------------------------------------------------------- bad input

def _assert_one_error_line(err: str, must_name: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert must_name in lines[0], (must_name, lines[0])


def _write_2d_nifti(folder: Path) -> Path:
    image = sitk.GetImageFromArray(np.zeros((16, 16), dtype=np.int16))
    path = folder / "slice.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def _write_corrupt(folder: Path) -> Path:
    path = folder / "corrupt.nii.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _not_dicom_folder(folder: Path) -> Path:
    path = folder / "not_dicom"
    path.mkdir()
    (path / "notes.txt").write_text("these are not DICOM slices\n")
    return path


@pytest.mark.parametrize("make_input", [
    pytest.param(lambda folder: folder / "missing.nii.gz", id="missing"),
    pytest.param(_not_dicom_folder, id="no-dicom-folder"),
    pytest.param(_write_2d_nifti, id="2d-image"),
    pytest.param(_write_corrupt, id="corrupt"),
])
def test_predict_bad_input_is_one_line_exit_2_and_writes_nothing(untrained_run, tmp_path, capfd, make_input):
    bad = make_input(tmp_path)
    out_dir = tmp_path / "out"
    code = main(["predict", str(bad), "-o", str(out_dir), "--model", str(untrained_run), "--device", "cpu", "-q"])
    captured = capfd.readouterr()
    assert code == 2
    _assert_one_error_line(captured.err, str(bad))
    assert not out_dir.exists()


def test_a_bad_input_among_good_ones_is_one_failed_case(untrained_run, tiny_dataset, tmp_path, capfd):
    """In a batch each input is checked when its turn comes: the good case is written, the bad one is
    reported in one line and the run exits 2 (tests/test_predict_robust.py has more)."""
    bad = _write_corrupt(tmp_path)
    out_dir = tmp_path / "out"
    code = main(["predict", str(_images(tiny_dataset)[0]), str(bad), "-o", str(out_dir), "--model",
                 str(untrained_run), "--device", "cpu", "-q", "--no-preview"])
    captured = capfd.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    assert len([line for line in captured.err.splitlines() if str(bad) in line]) == 1
    assert (out_dir / CASE_IDS[0] / "segmentation.nii.gz").is_file()
    assert not (out_dir / "corrupt").exists()


def test_predict_picks_the_series_with_most_slices_and_says_so(untrained_run, tmp_path, capfd):
    """Two DICOM series in one folder: the longer one is segmented and a message names it."""
    folder = tmp_path / "two_series"
    folder.mkdir()
    for series_index, n_slices in enumerate((3, 6)):
        _write_dicom_series(folder, f"1.2.826.0.1.3680043.8.498.{series_index + 1}", n_slices, series_index)
    out_dir = tmp_path / "out"
    code = main(["predict", str(folder), "-o", str(out_dir), "--model", str(untrained_run), "--device", "cpu", "-q"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "2 DICOM series found" in captured.err and "1.2.826.0.1.3680043.8.498.2 (6 slices" in captured.err
    written = sitk.ReadImage(str(out_dir / "two_series" / "segmentation.nii.gz"))
    assert written.GetSize() == (20, 24, 6)


def _write_dicom_series(folder: Path, series_uid: str, n_slices: int, tag: int) -> None:
    """A minimal CT series written with SimpleITK's GDCM writer (one file per slice)."""
    array = np.random.default_rng(tag).integers(-100, 100, (n_slices, 24, 20)).astype(np.int16)
    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing((1.5, 1.5, 3.0))
    volume.SetOrigin((-10.0, 20.0, 30.0 + 100 * tag))
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # files without a .dcm suffix, as PACS exports often are
    writer.KeepOriginalImageUIDOn()
    for k in range(n_slices):
        image_slice = volume[:, :, k]
        for key, value in (("0008|0060", "CT"), ("0020|000e", series_uid), ("0020|000d", "1.2.3.4"),
                           ("0020|0013", str(k + 1)), ("0028|0030", "1.5\\1.5"), ("0018|0050", "3.0"),
                           ("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0020|0037", "1\\0\\0\\0\\1\\0")):
            image_slice.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"s{tag}_{k:03d}"))
        writer.Execute(image_slice)


def test_predict_with_a_model_folder_without_checkpoint(tiny_dataset, tmp_path, capfd):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    out_dir = tmp_path / "out"
    code = main(["predict", str(_images(tiny_dataset)[0]), "-o", str(out_dir), "--model", str(empty),
                 "--device", "cpu", "-q"])
    captured = capfd.readouterr()
    assert code == 2
    _assert_one_error_line(captured.err, str(empty))
    assert not out_dir.exists()


def test_train_with_unknown_config_key(tiny_dataset, tmp_path, capfd):
    config = tmp_path / "typo.yaml"
    config.write_text(SMOKE.read_text() + "  overlapp: 0.5\n")  # appended to the infer section
    run = tmp_path / "run"
    code = main(["train", "--config", str(config), "--run-dir", str(run), "--set",
                 f"data.manifest={tiny_dataset}", "--device", "cpu", "-q"])
    captured = capfd.readouterr()
    assert code == 2
    _assert_one_error_line(captured.err, "infer.overlapp")
    assert str(config) in captured.err
    assert "overlap" in captured.err.replace("overlapp", "")  # the valid key is listed
    assert not run.exists()


def test_train_with_a_label_off_its_image_grid_names_the_case(tmp_path, capfd):
    """The error raised inside a MONAI transform reaches the user as liverseg's one-line message."""
    from liverseg.io import read_volume, write_volume
    from liverseg.datasets.manifest import write_manifest
    from conftest import make_volume

    image = make_volume((12, 10, 8), (2.0, 2.0, 3.0), np.eye(3), (0.0, 0.0, 0.0))
    image.array[:] = np.random.default_rng(0).normal(0, 50, image.shape)
    label = make_volume((12, 10, 9), (2.0, 2.0, 2.5), np.eye(3), (0.0, 0.0, 0.0))  # slices do not line up
    write_volume(image, tmp_path / "img.nii.gz", dtype=np.int16)
    write_volume(label, tmp_path / "lab.nii.gz", dtype=np.uint8)
    assert read_volume(tmp_path / "lab.nii.gz").shape == (12, 10, 9)
    cases = [{"id": "c1", "image": "img.nii.gz", "label": "lab.nii.gz"}]
    manifest = write_manifest(tmp_path / "m.json", "t", {"background": 0, "liver": 1}, cases,
                              {"train": ["c1"], "val": ["c1"]})
    run = tmp_path / "run"
    code = main(["train", "--config", str(SMOKE), "--run-dir", str(run), "--set", f"data.manifest={manifest}", "-q"])
    err = capfd.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("liverseg train: error: case c1: ") and "lab.nii.gz" in last
    assert "not on the image grid" in last and "spacing" in last
    assert not run.exists(), "a run that failed before its first checkpoint must not leave its folder"


def test_train_with_unknown_set_key(tiny_dataset, tmp_path, capfd):
    run = tmp_path / "run"
    code = main(["train", "--config", str(SMOKE), "--run-dir", str(run), "--set", "train.epoch=3",
                 "--device", "cpu", "-q"])
    captured = capfd.readouterr()
    assert code == 2
    _assert_one_error_line(captured.err, "train.epoch")
    assert not run.exists()


def test_train_without_manifest_names_the_key(tmp_path, capfd):
    run = tmp_path / "run"
    code = main(["train", "--config", str(SMOKE), "--run-dir", str(run), "--device", "cpu", "-q"])
    captured = capfd.readouterr()
    assert code == 2
    _assert_one_error_line(captured.err, "data.manifest")
    assert not run.exists()


def test_evaluate_ref_remap_maps_from_the_original_values(tmp_path, capsys):
    reference = np.zeros((8, 8, 8), dtype=np.uint8)
    reference[:3] = 1
    reference[4:6] = 2
    swapped = np.where(reference == 1, 2, np.where(reference == 2, 1, 0)).astype(np.uint8)
    from liverseg.io import write_volume
    from liverseg.io.volume import Volume
    ref_path = write_volume(Volume(reference, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "ref" / "c1.nii.gz")
    pred_path = write_volume(Volume(swapped, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "pred" / "c1.nii.gz")
    csv_path = tmp_path / "scores.csv"
    code = main(["evaluate", str(pred_path.parent), str(ref_path.parent), "--ref-remap", "1=2,2=1",
                 "--csv", str(csv_path)])
    assert code == 0, capsys.readouterr().err
    with csv_path.open(newline="") as handle:
        rows = {int(r["label"]): r for r in csv.DictReader(handle)}
    assert sorted(rows) == [1, 2]
    for row in rows.values():
        assert float(row["dice"]) == pytest.approx(1.0)
        assert int(row["pred_voxels"]) == int(row["ref_voxels"])


def test_evaluate_with_a_missing_case_names_it(tiny_dataset, tmp_path, capfd):
    reference = tiny_dataset.parent / "labels"
    partial = tmp_path / "partial"
    partial.mkdir()
    for case in CASE_IDS:
        if case not in VAL_IDS:
            shutil.copy(reference / f"{case}.nii.gz", partial / f"{case}.nii.gz")
    code = main(["evaluate", str(partial), str(reference)])
    captured = capfd.readouterr()
    assert code == 2
    _assert_one_error_line(captured.err, VAL_IDS[0])
