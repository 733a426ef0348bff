"""The retinal-vessel recipe's parts: CHASE_DB1 folds by child, resolution normalisation of photographs,
the clDice topology loss, and the cross-validation fold table."""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses.cldice import soft_skel
from PIL import Image

from liverseg.cli import main
from liverseg.config import ExperimentConfig, apply_overrides
from liverseg.errors import ConfigError
from liverseg.io.photos import read_probability_png

from liverseg.training.losses import CrossEntropyClDice, SegmentationLoss
from liverseg.datasets.manifest import write_manifest
from liverseg.datasets.photo_manifests import chase_cv_splits, import_chase
from liverseg.modalities.photo_data import load_photo_case, network_size, to_network_resolution

REPO = Path(__file__).resolve().parents[1]
CHASE_IDS = [f"Image_{n:02d}{side}" for n in range(1, 15) for side in "LR"]


# ----------------------------------------------------------------------------- folds by child

def test_chase_folds_keep_both_eyes_of_a_child_together_and_cover_every_image_once():
    splits = chase_cv_splits(CHASE_IDS)
    held_out = [splits[f"cv_fold{k}"] for k in range(4)]
    assert sorted(i for fold in held_out for i in fold) == sorted(CHASE_IDS)
    assert [len(f) for f in held_out] == [8, 8, 6, 6]
    child = lambda case_id: case_id[:-1]  # noqa: E731 - Image_NN
    for k, fold in enumerate(held_out):
        children = {child(c) for c in fold}
        assert all(f"{c}L" in fold and f"{c}R" in fold for c in children)
        train = splits[f"cv_train{k}"]
        assert not children & {child(c) for c in train} and sorted(train + fold) == sorted(CHASE_IDS)
        val = splits[f"cv_val{k}"]
        assert len(val) == 2 and set(val) <= set(train) and len({child(c) for c in val}) == 1


def test_chase_importer_writes_the_cv_splits_beside_the_standard_split(tmp_path):
    for case_id in CHASE_IDS:
        (tmp_path / f"{case_id}.jpg").write_bytes(b"")
        (tmp_path / f"{case_id}_1stHO.png").write_bytes(b"")
    splits = import_chase(tmp_path)["splits"]
    assert splits["cv_fold0"] == ["Image_01L", "Image_01R", "Image_05L", "Image_05R", "Image_09L", "Image_09R",
                                  "Image_13L", "Image_13R"]
    assert len(splits["train"]) == 20 and len(splits["test"]) == 8


# ----------------------------------------------------------------------------- resolution normalisation

def _disc(height: int, width: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < radius ** 2


def test_network_size_scales_the_field_of_view_to_the_configured_width():
    fov = np.zeros((96, 100), dtype=bool)
    fov[20:70, 10:90] = True  # 80 px wide
    assert network_size(fov, 0) == (96, 100)
    assert network_size(fov, 40) == (48, 50)
    assert network_size(fov, 160) == (192, 200)
    assert network_size(fov, 81) == (96, 100)  # within 2%: not resampled


def test_resizing_keeps_classes_integral_and_a_half_size_vessel_survives():
    fov = np.ones((64, 64), dtype=bool)
    label = np.zeros((64, 64), dtype=np.uint8)
    label[:, 30:32] = 1  # a 2 px vessel -> 1 px at half size
    image = np.where(label[None] == 1, -1.0, 1.0).astype(np.float32)
    small_image, small_fov, small_label = to_network_resolution(image, fov, label, 32)
    assert small_image.shape == (1, 32, 32) and small_fov.all()
    assert small_label.dtype == np.uint8 and set(np.unique(small_label).tolist()) == {0, 1}
    assert small_label[:, 15].all() and small_label.sum() == 32
    same = to_network_resolution(image, fov, label, 64)
    assert same[0] is image and same[2] is label


def test_photo_fov_diameter_is_validated():
    with pytest.raises(ConfigError, match="photo.fov_diameter"):
        apply_overrides(ExperimentConfig(), ["photo.fov_diameter=8"]).validate()


def _toy_vessels(root: Path, size: int = 64) -> Path:
    rng = np.random.default_rng(3)
    cases = []
    for index in range(3):
        fov = _disc(size, size, size / 2 - 2)
        yy, xx = np.mgrid[:size, :size]
        vessels = np.zeros((size, size), dtype=bool)
        for _ in range(3):
            angle, offset = rng.uniform(0, math.pi), rng.uniform(-size / 4, size / 4)
            vessels |= np.abs((xx - size / 2) * math.sin(angle) - (yy - size / 2) * math.cos(angle) - offset) < 1.5
        vessels &= fov
        rgb = np.zeros((size, size, 3), dtype=np.uint8)
        rgb[fov] = (170, 90, 40)
        rgb[vessels] = (110, 30, 20)
        Image.fromarray(rgb).save(root / f"c{index}.png")
        Image.fromarray(vessels.astype(np.uint8) * 255).save(root / f"c{index}_label.png")
        Image.fromarray(fov.astype(np.uint8) * 255).save(root / f"c{index}_fov.png")
        cases.append({"id": f"c{index}", "image": f"c{index}.png", "label": f"c{index}_label.png",
                      "fov": f"c{index}_fov.png"})
    write_manifest(root / "m.json", "toy", {"background": 0, "vessel": 1}, cases,
                   {"train": ["c0", "c1"], "val": ["c1"], "test": ["c2"]})
    return root / "m.json"


def test_training_at_a_normalised_resolution_predicts_on_the_photographs_own_pixels(tmp_path):
    manifest = _toy_vessels(tmp_path)
    cfg = apply_overrides(ExperimentConfig(), [
        "data.modality=photo", "data.labels=[background, vessel]", "model.spatial_dims=2",
        f"data.manifest={manifest}", "photo.fov_diameter=32", "infer.largest_component=[]",
        "train.patch_size=[16, 16]", "infer.roi_size=[32, 32]"]).validate()
    from liverseg.datasets.manifest import load_manifest

    item = load_manifest(manifest).cases["c0"]
    case = load_photo_case({"id": item.case_id, "image": item.image, "label": item.label, "fov": item.fov}, cfg)
    size = network_size(np.array(Image.open(tmp_path / "c0_fov.png")) > 0, 32)
    assert size[0] < 40 and tuple(case["image"].shape) == (3, *size) and tuple(case["label"].shape) == (1, *size)
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/vessels_2d.yaml", "--run-dir", str(run), "-q", "--threads", "1",
                 "--set", f"data.manifest={manifest}", "--set", "photo.fov_diameter=32",
                 "--set", "train.epochs=1", "--set", "train.iters_per_epoch=2", "--set", "train.batch_size=2",
                 "--set", "train.patch_size=[16, 16]", "--set", "infer.roi_size=[32, 32]"]) == 0
    out = tmp_path / "pred"
    assert main(["predict", "--manifest", str(manifest), "--split", "test", "-o", str(out), "--model", str(run),
                 "-q", "--no-preview"]) == 0
    probability = read_probability_png(out / "c2" / "probability.png")
    assert probability.shape == (64, 64)
    fov = np.array(Image.open(tmp_path / "c2_fov.png")) > 0
    assert np.all(probability[~fov] == 0)


# ----------------------------------------------------------------------------- clDice

def test_the_soft_skeleton_cldice_uses_thins_a_bar_to_its_centre_line():
    """MONAI's soft skeleton, with the loss's own number of iterations, is what clDice rests on."""
    bar = torch.zeros(1, 1, 24, 24)
    bar[0, 0, 8:13, 2:22] = 1.0
    skeleton = soft_skel(bar, CrossEntropyClDice().iterations)[0, 0]
    assert skeleton[10, 6:18].min() > 0.99 and skeleton[8:13, 12].sum() == pytest.approx(1.0)


def test_cldice_rewards_a_connected_vessel_over_a_broken_one_with_the_same_pixel_error():
    truth = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    truth[0, 0, 14:17, :] = 1
    loss = SegmentationLoss("ce_cldice")

    def logits_of(mask: torch.Tensor) -> torch.Tensor:
        foreground = mask.float() * 16 - 8
        return torch.cat([-foreground, foreground], dim=1)

    broken = truth.clone()
    broken[0, 0, 14:17, 15:18] = 0  # a 3 px gap across the vessel: 9 pixels wrong, centre line cut
    thinner = truth.clone()
    thinner[0, 0, 14, 7:16] = 0  # 9 pixels of one edge missing: centre line intact
    assert float(loss(logits_of(truth), truth)) < 0.01
    assert float(loss(logits_of(broken), truth)) > float(loss(logits_of(thinner), truth)) + 0.01
    logits = logits_of(broken).requires_grad_()
    loss(logits, truth).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- the fold table

def _table_module():
    spec = importlib.util.spec_from_file_location("vessel_cv_table", REPO / "scripts" / "vessel_cv_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fold(out: Path, k: int, rows: list[tuple[str, float, float, float]], seconds: int) -> None:
    evaluation = out / f"fold{k}" / "pred" / "evaluation"
    evaluation.mkdir(parents=True)
    with (evaluation / "per_case.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "label", "name", "dice", "accuracy", "auc"])
        for case, dice, accuracy, auc in rows:
            writer.writerow([case, 1, "vessel", dice, accuracy, auc])
    (out / f"fold{k}" / "train_seconds").write_text(str(seconds))


def test_fold_table_means_per_fold_over_folds_and_over_images(tmp_path, capsys):
    _fold(tmp_path, 0, [("a", 0.8, 0.96, 0.98), ("b", 0.7, 0.95, 0.97)], 600)
    _fold(tmp_path, 1, [("c", 0.9, 0.97, 0.99)], 1200)
    module = _table_module()
    table, summary = module.fold_table(tmp_path)
    assert [r["auc"] for r in table] == pytest.approx([0.975, 0.99])
    assert summary["fold_mean"]["auc"] == pytest.approx(0.9825)
    assert summary["image_mean"]["auc"] == pytest.approx((0.98 + 0.97 + 0.99) / 3)
    assert table[0]["worst"] == "b" and table[1]["train_min"] == pytest.approx(20.0)
    assert module.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "**0.9825**" in printed and (tmp_path / "cv_table.csv").is_file()


def test_fold_table_refuses_a_fold_without_auc(tmp_path):
    _fold(tmp_path, 0, [("a", 0.8, 0.96, float("nan"))], 60)
    with pytest.raises(SystemExit, match="auc is not finite"):
        _table_module().fold_table(tmp_path)
