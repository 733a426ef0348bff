"""Manifests: importers on tiny copies of the public layouts, the shipped manifests, `liverseg check`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from liverseg.phantoms.dicom import write_series

from liverseg.cli import main
from liverseg.errors import InputError
from liverseg.io import write_volume
from liverseg.io.volume import Volume
from liverseg.datasets.manifest import IMPORTERS, import_manifest, load_manifest, sha256_of

SHIPPED = Path(__file__).resolve().parents[1] / "data_manifests"
EXPECTED_CASES = {"msd_task03_liver.json": 131, "lits.json": 131, "ircadb01.json": 20, "chaos_ct.json": 20}


def _assert_folds(manifest, n_folds=5):
    all_ids = set(manifest.splits["all"])
    folds = [set(manifest.splits[f"fold{k}"]) for k in range(n_folds)]
    assert set().union(*folds) == all_ids and sum(len(f) for f in folds) == len(all_ids)
    for k in range(n_folds):
        assert set(manifest.splits[f"train_fold{k}"]) == all_ids - folds[k]
    assert manifest.splits["val"] == manifest.splits["fold0"]


@pytest.mark.parametrize("name", sorted(EXPECTED_CASES))
def test_shipped_manifests_describe_the_public_layouts(name):
    manifest = load_manifest(SHIPPED / name, root="/nonexistent/root")
    assert len(manifest.cases) == EXPECTED_CASES[name]
    _assert_folds(manifest)
    case = next(iter(manifest.cases.values()))
    assert str(case.image).startswith("/nonexistent/root/")
    assert manifest.labels["liver"] == 1


def test_shipped_msd_folds_match_the_msd_dataset_json_folds(tmp_path):
    """Training from Task03_Liver/dataset.json directly or from the shipped manifest: same folds."""
    shipped = load_manifest(SHIPPED / "msd_task03_liver.json")
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"name": "Liver", "labels": {"0": "background", "1": "liver", "2": "cancer"},
                                        "training": [{"image": f"./imagesTr/liver_{i}.nii.gz",
                                                      "label": f"./labelsTr/liver_{i}.nii.gz"} for i in range(131)]}))
    msd = load_manifest(dataset_json)
    for k in range(5):
        assert msd.splits[f"fold{k}"] == shipped.splits[f"fold{k}"]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_importers_on_tiny_layouts(tmp_path):
    msd = tmp_path / "Task03_Liver"
    for i in (0, 1, 10, 2):
        _touch(msd / "imagesTr" / f"liver_{i}.nii.gz")
        _touch(msd / "labelsTr" / f"liver_{i}.nii.gz")
    _touch(msd / "imagesTr" / "._liver_0.nii.gz")  # macOS resource fork shipped inside the tarball
    out = import_manifest("msd", msd, tmp_path / "m" / "msd.json", sha256=True)
    manifest = load_manifest(out, root=msd)
    assert list(manifest.splits["all"]) == ["liver_0", "liver_1", "liver_2", "liver_10"]
    assert manifest.cases["liver_2"].sha256["image"] == sha256_of(msd / "imagesTr" / "liver_2.nii.gz")
    lits = tmp_path / "lits"
    for i, batch in ((0, "Training Batch 1"), (28, "Training Batch 2")):
        _touch(lits / batch / f"volume-{i}.nii")
        _touch(lits / batch / f"segmentation-{i}.nii")
    data = IMPORTERS["lits"](lits)
    assert [(c["id"], c["image"]) for c in data["cases"]] == [("lits000", "Training Batch 1/volume-0.nii"),
                                                              ("lits028", "Training Batch 2/volume-28.nii")]
    ircadb = tmp_path / "3Dircadb1"
    for i in (1, 2, 10):
        (ircadb / f"3Dircadb1.{i}" / "PATIENT_DICOM").mkdir(parents=True)
        (ircadb / f"3Dircadb1.{i}" / "MASKS_DICOM" / "liver").mkdir(parents=True)
    data = IMPORTERS["ircadb"](ircadb)
    assert [c["id"] for c in data["cases"]] == ["ircadb01", "ircadb02", "ircadb10"]
    assert data["label_format"] == "masks_dicom"
    chaos = tmp_path / "CHAOS_Train_Sets" / "Train_Sets"
    for i in (2, 1):
        (chaos / "CT" / str(i) / "DICOM_anon").mkdir(parents=True)
        (chaos / "CT" / str(i) / "Ground").mkdir(parents=True)
    (chaos / "MR" / "3" / "DICOM_anon").mkdir(parents=True)  # MR cases are not CT cases
    (chaos / "MR" / "3" / "Ground").mkdir(parents=True)
    data = IMPORTERS["chaos"](tmp_path / "CHAOS_Train_Sets")
    assert [c["image"] for c in data["cases"]] == ["Train_Sets/CT/1/DICOM_anon", "Train_Sets/CT/2/DICOM_anon"]
    with pytest.raises(InputError, match="unknown dataset kind 'decathlon'; known: ") as info:
        import_manifest("decathlon", msd, tmp_path / "x.json")
    assert all(kind in str(info.value) for kind in ("chaos", "ircadb", "lits", "msd"))
    with pytest.raises(InputError, match="no imagesTr"):
        import_manifest("msd", tmp_path / "lits", tmp_path / "x.json")


def test_cli_manifest_import(tmp_path, capsys):
    root = tmp_path / "Task03_Liver"
    for i in range(3):
        _touch(root / "imagesTr" / f"liver_{i}.nii.gz")
        _touch(root / "labelsTr" / f"liver_{i}.nii.gz")
    out = tmp_path / "data_manifests" / "mine.json"
    assert main(["manifest", "import", "msd", str(root), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert len(load_manifest(out).cases) == 3


def _nifti_case(root: Path, name: str, label_values: list[int]) -> None:
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    image = np.random.default_rng(0).normal(0, 50, (8, 8, 4)).astype(np.int16)
    label = np.zeros((8, 8, 4), np.uint8)
    for i, v in enumerate(label_values):
        label[i, 0, 0] = v
    write_volume(Volume(image, affine), root / f"{name}_img.nii.gz")
    write_volume(Volume(label, affine), root / f"{name}_lab.nii.gz")


def test_check_reports_every_case_and_exits_2_on_failures(tmp_path, capsys):
    root = tmp_path / "data"
    _nifti_case(root, "good", [1, 2])
    _nifti_case(root, "badvalues", [1, 7])
    _nifti_case(root, "badsum", [1])
    stored = np.random.default_rng(1).integers(0, 1000, (3, 12, 10)).astype(np.uint16)
    write_series(root / "ircadb" / "PATIENT_DICOM", stored)
    liver = np.zeros_like(stored)
    liver[1, 2:5, 2:5] = 255
    write_series(root / "ircadb" / "MASKS_DICOM" / "liver", liver, intercept=0.0)
    cases = [{"id": n, "image": f"{n}_img.nii.gz", "label": f"{n}_lab.nii.gz"} for n in ("good", "badvalues", "badsum")]
    cases[0]["sha256"] = {"image": sha256_of(root / "good_img.nii.gz")}
    cases[2]["sha256"] = {"label": "0" * 64}
    cases.append({"id": "dicom", "image": "ircadb/PATIENT_DICOM", "label": "ircadb/MASKS_DICOM",
                  "label_format": "masks_dicom", "structures": {"liver": 1}})
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"name": "t", "labels": {"background": 0, "liver": 1, "tumour": 2},
                                    "cases": cases}))
    code = main(["check", str(manifest), "--root", str(root), "-q"])
    captured = capsys.readouterr()
    assert code == 2
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:-1]}
    assert "ok" in rows["good"].split()[1] and "8x8x4" in rows["good"] and "0, 1, 2" in rows["good"]
    assert "FAIL" in rows["badvalues"] and "label values [7] are not in the manifest's labels [0, 1, 2]" in rows["badvalues"]
    assert "FAIL" in rows["badsum"] and "sha256" in rows["badsum"]
    assert rows["dicom"].split()[1] == "ok" and "10x12x3" in rows["dicom"] and "0, 1" in rows["dicom"]
    assert captured.out.strip().splitlines()[-1] == "2 of 4 cases ok, 2 failed"
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("liverseg check: error:") and "badvalues, badsum" in err


def test_train_manifest_and_root_shortcuts(tmp_path, monkeypatch):
    import sys
    import types

    seen = {}

    def fake_train(cfg, run_dir, **kwargs):
        seen["cfg"] = cfg
        return Path(run_dir) / "best.pt"

    # a stand-in liverseg.training.loop module: the shortcut is CLI plumbing, no need to import torch here
    monkeypatch.setitem(sys.modules, "liverseg.training.loop", types.SimpleNamespace(train=fake_train))
    config = Path(__file__).resolve().parents[1] / "configs" / "smoke_3d.yaml"
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--manifest",
                 str(SHIPPED / "lits.json"), "--root", str(tmp_path), "-q"]) == 0
    assert seen["cfg"].data.manifest == str(SHIPPED / "lits.json") and seen["cfg"].data.root == str(tmp_path)
