"""nnU-Net v2 raw datasets: dataset.json read as a manifest, `manifest import nnunet`, the msd `_0000`
fix, and the refusals (several channels, region labels, missing label, wrong file_ending)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from liverseg.cli import main
from liverseg.errors import InputError
from liverseg.io import read_volume, write_volume
from liverseg.io.volume import Volume
from liverseg.datasets.manifest import import_manifest, load_manifest
from liverseg.datasets.nnunet import default_folds

TRAINING = ["liver_0", "liver_1", "liver_2", "liver_10"]
LABELS = {"background": 0, "liver": 1, "tumour": 2}
FOLDS = [{"train": ["liver_1", "liver_2", "liver_10"], "val": ["liver_0"]},
         {"train": ["liver_0", "liver_2", "liver_10"], "val": ["liver_1"]}]


def _case(seed: int) -> tuple[Volume, Volume]:
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    rng = np.random.default_rng(seed)
    hu = rng.normal(0.0, 8.0, (16, 16, 8)) - 100.0
    label = np.zeros((16, 16, 8), np.uint8)
    label[4:12, 4:12, 2:6] = 1
    label[6:9, 6:9, 3:5] = 2
    hu[label > 0] += 160.0
    return Volume(hu.astype(np.int16), affine), Volume(label, affine)


def make_dataset(root: Path, ending: str = ".nii.gz", splits: list | None = FOLDS, **overrides) -> Path:
    """A tiny nnU-Net v2 raw dataset: 4 training cases, 1 test case, dataset.json, splits_final.json."""
    for seed, case_id in enumerate(TRAINING + ["liver_99"]):
        image, label = _case(seed)
        folder = "imagesTs" if case_id == "liver_99" else "imagesTr"
        write_volume(image, root / folder / f"{case_id}_0000{ending}")
        if folder == "imagesTr":
            write_volume(label, root / "labelsTr" / f"{case_id}{ending}")
    dataset = {"channel_names": {"0": "CT"}, "labels": dict(LABELS), "numTraining": len(TRAINING),
               "file_ending": ending, "name": "Dataset003_TinyLiver", **overrides}
    (root / "dataset.json").write_text(json.dumps(dataset))
    if splits is not None:
        (root / "splits_final.json").write_text(json.dumps(splits))
    return root / "dataset.json"


def test_dataset_json_is_a_manifest(tmp_path):
    dataset_json = make_dataset(tmp_path / "Dataset003_TinyLiver")
    manifest = load_manifest(dataset_json)
    assert manifest.name == "Dataset003_TinyLiver"
    assert manifest.labels == LABELS
    assert list(manifest.splits["all"]) == TRAINING  # natural order: liver_2 before liver_10
    assert manifest.splits["test"] == ("liver_99",)
    root = dataset_json.parent
    case = manifest.cases["liver_10"]
    assert case.image == root / "imagesTr" / "liver_10_0000.nii.gz"
    assert case.label == root / "labelsTr" / "liver_10.nii.gz"
    assert manifest.cases["liver_99"].label is None
    assert manifest.cases["liver_99"].image == root / "imagesTs" / "liver_99_0000.nii.gz"
    # folds from splits_final.json: fold{k} = nnU-Net fold k's val, train_fold{k} its train; train/val = fold 0
    assert manifest.splits["fold1"] == ("liver_1",)
    assert manifest.splits["train_fold1"] == ("liver_0", "liver_2", "liver_10")
    assert manifest.splits["train"] == manifest.splits["train_fold0"] and manifest.splits["val"] == ("liver_0",)
    assert "fold2" not in manifest.splits
    assert read_volume(case.label).array.max() == 2


def test_check_reads_every_case_of_the_dataset_json(tmp_path, capsys):
    dataset_json = make_dataset(tmp_path / "d")
    assert main(["check", str(dataset_json), "-q"]) == 0  # split 'all': the training cases
    assert capsys.readouterr().out.strip().splitlines()[-1] == "4 of 4 cases ok"
    assert main(["check", str(dataset_json), "--split", "test", "-q"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 of 1 cases ok"


def test_without_splits_final_the_folds_are_nnunets_default(tmp_path):
    dataset_json = make_dataset(tmp_path / "d", splits=None)
    manifest = load_manifest(dataset_json)
    folds = [set(manifest.splits[f"fold{k}"]) for k in range(4)]  # 4 cases: one fold per case
    assert set().union(*folds) == set(TRAINING) and all(len(f) == 1 for f in folds)
    for k in range(4):
        assert set(manifest.splits[f"train_fold{k}"]) == set(TRAINING) - folds[k]


def test_default_folds_match_nnunets_kfold():
    sklearn = pytest.importorskip("sklearn.model_selection")
    ids = [f"case_{i:03d}" for i in range(23)] + ["zeta", "alpha"]
    keys = sorted(ids)
    expected = [{"train": [keys[i] for i in tr], "val": [keys[i] for i in va]}
                for tr, va in sklearn.KFold(n_splits=5, shuffle=True, random_state=12345).split(keys)]
    assert default_folds(ids) == expected


def test_manifest_import_nnunet_cli(tmp_path, capsys):
    root = tmp_path / "nnUNet_raw" / "Dataset003_TinyLiver"
    make_dataset(root)
    out = tmp_path / "manifests" / "tiny.json"
    assert main(["manifest", "import", "nnunet", str(root), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    written = json.loads(out.read_text())
    assert written["labels"] == LABELS and written["root"] == str(root.resolve())
    assert written["cases"][0] == {"id": "liver_0", "image": "imagesTr/liver_0_0000.nii.gz",
                                   "label": "labelsTr/liver_0.nii.gz"}
    assert written["cases"][-1] == {"id": "liver_99", "image": "imagesTs/liver_99_0000.nii.gz"}
    assert "splits_final.json" in written["description"]
    imported, direct = load_manifest(out), load_manifest(root / "dataset.json")
    assert imported.cases == direct.cases and imported.splits == direct.splits


def test_msd_importer_and_msd_dataset_json_accept_the_0000_channel_suffix(tmp_path):
    root = tmp_path / "Task03_Liver"
    make_dataset(root)
    data = import_manifest("msd", root, tmp_path / "msd.json")
    manifest = load_manifest(data)
    assert list(manifest.splits["all"]) == TRAINING
    assert manifest.cases["liver_2"].image == root / "imagesTr" / "liver_2_0000.nii.gz"
    assert manifest.cases["liver_2"].label == root / "labelsTr" / "liver_2.nii.gz"
    # an nnU-Net v1 / MSD dataset.json lists imagesTr/liver_2.nii.gz for the file liver_2_0000.nii.gz
    (root / "dataset.json").write_text(json.dumps({
        "name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in TRAINING]}))
    v1 = load_manifest(root / "dataset.json")
    assert v1.cases["liver_2"].image == root / "imagesTr" / "liver_2_0000.nii.gz"
    assert v1.cases["liver_2"].image.is_file()
    (root / "imagesTr" / "liver_2_0001.nii.gz").write_bytes(b"x")
    with pytest.raises(InputError, match="liver_2_0001.nii.gz is channel 0001; liverseg segments single-channel"):
        import_manifest("msd", root, tmp_path / "msd.json")


def _refusal(tmp_path, capsys, expected: str, names: str, **overrides) -> None:
    root = tmp_path / "d"
    dataset_json = make_dataset(root, **overrides) if not (root / "dataset.json").exists() else root / "dataset.json"
    with pytest.raises(InputError, match=expected) as info:
        load_manifest(dataset_json)
    assert names in str(info.value) and "\n" not in str(info.value)
    assert main(["check", str(dataset_json), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("liverseg check: error: ") and names in err[0]


def test_refuses_several_channels(tmp_path, capsys):
    _refusal(tmp_path, capsys, r"2 input channels .* needs exactly one channel", "dataset.json",
             channel_names={"0": "CT", "1": "CT_late"})


def test_refuses_a_second_channel_file(tmp_path, capsys):
    root = tmp_path / "d"
    make_dataset(root)
    (root / "imagesTr" / "liver_1_0001.nii.gz").write_bytes(b"x")
    _refusal(tmp_path, capsys, "channel 0001; liverseg segments single-channel CT", "liver_1_0001.nii.gz")


def test_refuses_region_labels(tmp_path, capsys):
    _refusal(tmp_path, capsys, r"label 'liver' is a region \[1, 2\]", "dataset.json",
             labels={"background": 0, "liver": [1, 2], "tumour": 2}, regions_class_order=None)
    root = tmp_path / "e"
    dataset_json = make_dataset(root, labels={"background": 0, "liver": 1, "tumour": 2}, regions_class_order=[1, 2])
    with pytest.raises(InputError, match="regions_class_order"):
        load_manifest(dataset_json)


def test_refuses_a_missing_label_file(tmp_path, capsys):
    root = tmp_path / "d"
    make_dataset(root)
    (root / "labelsTr" / "liver_2.nii.gz").unlink()
    _refusal(tmp_path, capsys, "case liver_2 has no label file", "labelsTr/liver_2.nii.gz")


def test_refuses_a_file_ending_that_matches_no_file(tmp_path, capsys):
    root = tmp_path / "d"
    make_dataset(root, file_ending=".nrrd")  # the images are .nii.gz
    _refusal(tmp_path, capsys, r"file_ending is '.nrrd' but imagesTr/ holds no such file \(e.g. liver_0_0000.nii.gz\)",
             "dataset.json")


def test_refuses_numtraining_and_splits_that_do_not_match(tmp_path, capsys):
    _refusal(tmp_path, capsys, "numTraining is 5 but 4 training cases were found", "dataset.json", numTraining=5)
    root = tmp_path / "e"
    make_dataset(root, splits=[{"train": ["liver_0"], "val": ["liver_7"]}])
    with pytest.raises(InputError, match="fold 0 names case.s. not in imagesTr/: liver_7") as info:
        load_manifest(root / "dataset.json")
    assert "splits_final.json" in str(info.value)


def test_other_file_endings(tmp_path):
    manifest = load_manifest(make_dataset(tmp_path / "d", ending=".nrrd"))
    assert manifest.cases["liver_1"].image.name == "liver_1_0000.nrrd"
    assert read_volume(manifest.cases["liver_1"].label).shape == (16, 16, 8)


@pytest.mark.slow
def test_train_one_iteration_on_the_nnunet_dataset(tmp_path):
    dataset_json = make_dataset(tmp_path / "Dataset003_TinyLiver")
    config = Path(__file__).resolve().parents[1] / "configs" / "smoke_3d.yaml"
    run = tmp_path / "run"
    start = time.monotonic()
    code = main(["train", "--config", str(config), "--run-dir", str(run), "--manifest", str(dataset_json),
                 "--set", "data.labels=[background, liver, tumour]", "--set", "train.epochs=1",
                 "--set", "train.iters_per_epoch=1", "--set", "train.patch_size=[16, 16, 16]",
                 "--set", "infer.roi_size=[16, 16, 16]", "--device", "cpu", "-q"])
    assert code == 0
    assert (run / "best.pt").is_file() or (run / "last.pt").is_file()
    assert time.monotonic() - start < 60


def test_explicit_dataset_entries_and_importer_refusals(tmp_path):
    root = tmp_path / "d"
    make_dataset(root, splits=None)
    entries = {c: {"images": [f"imagesTr/{c}_0000.nii.gz"], "label": f"labelsTr/{c}.nii.gz"} for c in TRAINING[:2]}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 2,
                                                   "file_ending": ".nii.gz", "dataset": entries}))
    manifest = load_manifest(root / "dataset.json")
    assert list(manifest.splits["all"]) == ["liver_0", "liver_1"] and manifest.splits["test"] == ("liver_99",)
    assert manifest.cases["liver_1"].image == root / "imagesTr" / "liver_1_0000.nii.gz"
    with pytest.raises(InputError, match="imagesTr: no dataset.json here; give the nnU-Net dataset folder"):
        import_manifest("nnunet", tmp_path / "d" / "imagesTr", tmp_path / "x.json")
    with pytest.raises(InputError, match="nowhere: no such folder"):
        import_manifest("nnunet", tmp_path / "nowhere", tmp_path / "x.json")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "training": []}))
    with pytest.raises(InputError, match="not an nnU-Net v2 dataset.json .* use `liverseg manifest import msd`"):
        import_manifest("nnunet", root, tmp_path / "x.json")
