"""Automatic planning: target spacing (with the anisotropic-axis rule), foreground CT statistics,
patch and batch from a memory budget, written into the run and used unchanged at inference."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from liverseg.cli import main
from liverseg.config import load_config
from liverseg.modalities.items import case_dicts, load_training_manifest
from liverseg.errors import ConfigError
from liverseg.io import read_volume
from liverseg.training.plan import apply_plan, estimate_memory_gb, fingerprint, plan_dataset, target_spacing
from liverseg.modalities.transforms import LoadCased

SMOKE = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke_3d.yaml")


def test_target_spacing_is_the_median_for_isotropic_data():
    spacings = np.array([[0.7, 0.7, 1.0], [0.8, 0.8, 1.2], [0.9, 0.9, 1.5]])
    shapes = np.array([[512, 512, 300]] * 3)
    spacing, axis = target_spacing(spacings, shapes)
    assert spacing == pytest.approx([0.8, 0.8, 1.2]) and axis is None


def test_a_much_coarser_axis_takes_its_10th_percentile():
    z = np.array([5.0, 5.0, 5.0, 5.0, 2.5, 5.0, 5.0, 1.5, 5.0, 5.0])
    spacings = np.stack([np.full(10, 0.8), np.full(10, 0.8), z], axis=1)
    shapes = np.array([[512, 512, 60]] * 10)
    spacing, axis = target_spacing(spacings, shapes)
    assert axis == 2
    assert spacing[:2] == pytest.approx([0.8, 0.8])
    assert spacing[2] == pytest.approx(np.percentile(z, 10))  # 2.4, not the median 5.0


def test_plan_from_the_tiny_dataset(tiny_dataset):
    cfg = load_config(SMOKE, [f"data.manifest={tiny_dataset}"])
    manifest = load_training_manifest(cfg)
    items = case_dicts(manifest.split("train"), "train", manifest)
    plan = plan_dataset(items, cfg)
    fp = fingerprint(items, cfg)
    assert plan["target_spacing_mm"] == pytest.approx(np.median(fp["spacings_mm"], axis=0).tolist())
    hu = plan["foreground_hu"]  # the synthetic liver is 60 HU + N(0, 8) noise
    assert hu["p00_5"] < 45 < 75 < hu["p99_5"] < 90
    assert hu["mean"] == pytest.approx(60.0, abs=1.5) and hu["std"] == pytest.approx(8.0, abs=1.5)
    k = int(np.prod(cfg.model.strides))
    assert all(p % k == 0 for p in plan["patch_size"]) and plan["batch_size"] >= 2
    planned = apply_plan(cfg, plan)
    assert planned.preprocess.hu_window == (round(hu["p00_5"], 2), round(hu["p99_5"], 2))
    assert planned.infer.roi_size == tuple(plan["patch_size"]) == planned.train.patch_size
    # z-scoring: the liver's voxels have about zero mean and unit variance after preprocessing
    image = LoadCased(planned)(items[0])
    liver = image["image"][image["label"] > 0]
    assert float(liver.mean()) == pytest.approx(0.0, abs=0.2) and float(liver.std()) == pytest.approx(1.0, abs=0.25)


def test_patch_and_batch_follow_the_memory_budget(tiny_dataset):
    cfg = load_config(None, [f"data.manifest={tiny_dataset}"])  # the default (larger) U-Net
    manifest = load_training_manifest(cfg)
    items = case_dicts(manifest.split("train"), "train", manifest)
    plans = [plan_dataset(items, replace(cfg, train=replace(cfg.train, plan_memory_gb=gb))) for gb in (0.51, 0.55, 64.0)]
    volumes = [int(np.prod(p["patch_size"])) for p in plans]
    assert volumes[0] < volumes[2] and volumes == sorted(volumes)
    for plan, gb in zip(plans, (0.51, 0.55, 64.0)):
        assert plan["estimated_memory_gb"] <= gb or min(plan["patch_size"]) == 16
    assert estimate_memory_gb(cfg, (64, 64, 64), 4) > estimate_memory_gb(cfg, (64, 64, 64), 2)
    # The batch grows with the budget once the dataset is large enough not to cap it (5% of its voxels).
    from liverseg.training.plan import plan_patch_and_batch

    many_cases = 1000 * 48.0 ** 3
    budgets = (1.0, 2.0, 4.0)
    batches = [plan_patch_and_batch(replace(cfg, train=replace(cfg.train, plan_memory_gb=gb)), [48.0] * 3,
                                    many_cases, [1.5] * 3) for gb in budgets]
    assert [b["patch_size"] for b in batches] == [[48, 48, 48]] * 3
    assert 2 < batches[0]["batch_size"] < batches[1]["batch_size"] < batches[2]["batch_size"]
    assert all(b["estimated_memory_gb"] <= gb for b, gb in zip(batches, budgets))
    capped = plan_patch_and_batch(replace(cfg, train=replace(cfg.train, plan_memory_gb=4.0)), [48.0] * 3,
                                  2 * 48.0 ** 3, [1.5] * 3)
    assert capped["batch_size"] == 2  # two cases: the 5% cap keeps the minimum batch


def test_photo_configs_are_not_planned(tiny_dataset):
    cfg = load_config(None, ["data.modality=photo", "model.spatial_dims=2", "train.patch_size=[64, 64]",
                             "infer.roi_size=[64, 64]"])
    with pytest.raises(ConfigError, match="CT only"):
        plan_dataset([{"id": "x", "image": "x.png", "label": "y.png"}], cfg)


def test_plan_command_writes_a_config_train_uses_as_is(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "planned.yaml"
    assert main(["plan", str(tiny_dataset), "--root", str(tiny_dataset.parent), "--config", SMOKE,
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "target spacing" in printed and "patch / batch" in printed
    written = yaml.safe_load(out.read_text())
    assert written["train"]["auto_plan"] is False and written["preprocess"]["intensity_std_hu"] > 0


def test_train_plans_once_and_inference_uses_the_stored_plan(tiny_dataset, tmp_path, monkeypatch):
    cfg = load_config(SMOKE, [f"data.manifest={tiny_dataset}", "train.auto_plan=true", "train.epochs=1",
                              "train.iters_per_epoch=1", "model.channels=[4, 8, 16]", "infer.coarse_to_fine=false"])
    from liverseg.training import plan as plan_module, loop as train_module
    from liverseg.engine import volume as volume_module

    calls = []
    real_plan_dataset = plan_module.plan_dataset
    monkeypatch.setattr(plan_module, "plan_dataset", lambda *a, **k: calls.append(1) or real_plan_dataset(*a, **k))
    run = tmp_path / "run"
    train_module.train(cfg, run, device="cpu", progress=False)
    assert len(calls) == 1  # planned once, by train itself
    plan = json.loads((run / "plan.json").read_text())
    saved = load_config(run / "config.yaml")
    assert list(saved.train.patch_size) == plan["patch_size"] and saved.preprocess.intensity_std_hu > 0

    # predict reads the stored values: the network sees exactly what training's loader saw
    seen = {}

    def capture(model, image, cfg, device, *args, **kwargs):
        seen["image"] = np.array(image)
        return np.zeros((2, *image.shape), dtype=np.float32)

    monkeypatch.setattr(volume_module, "network_probabilities", capture)
    manifest = load_training_manifest(saved)
    item = case_dicts(manifest.split("val"), "val", manifest)[0]
    volume_module.predict_volume(torch.nn.Identity(), read_volume(item["image"]), saved, torch.device("cpu"))
    expected = LoadCased(saved)(item)["image"][0]
    np.testing.assert_allclose(seen["image"], expected.numpy(), atol=1e-4)
    assert len(calls) == 1  # prediction never plans
