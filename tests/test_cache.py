"""Disk cache keyed by the preprocessing config, RAM cache under a budget, and loaders whose samples
depend only on (seed, index), whatever the number of workers."""
from __future__ import annotations

import os

import pytest
import torch

from liverseg.config import load_config
from liverseg.modalities.data import cached_cases, preprocessing_key, volume_train_loader
from liverseg.modalities.items import case_dicts, load_training_manifest
from liverseg.modalities.sampling import StepSampler
from liverseg.modalities.transforms import LoadCased, cached_transforms

REPO_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke_3d.yaml")


def _setup(tiny_dataset, *overrides):
    cfg = load_config(REPO_CONFIG, [f"data.manifest={tiny_dataset}", *overrides])
    manifest = load_training_manifest(cfg)
    return cfg, case_dicts(manifest.split("train"), "train", manifest)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k]))
                                        for k in a if k != "id")


def test_disk_cache_is_reused_and_keyed_by_the_preprocessing_config(tiny_dataset, tmp_path, monkeypatch):
    cfg, items = _setup(tiny_dataset)
    first = cached_cases(cfg, items, cached_transforms(cfg), cache_dir=tmp_path, ram_budget_gb=0)
    assert first.ram_items == {}
    computed = [first[i] for i in range(len(items))]
    folders = [p.name for p in tmp_path.iterdir()]
    assert folders == [f"preprocessed-{preprocessing_key(cfg)}"]
    assert len(list((tmp_path / folders[0]).glob("*.pt"))) == len(items)

    def no_reading(self, data):
        raise AssertionError("the disk cache should have answered")

    monkeypatch.setattr(LoadCased, "__call__", no_reading)
    again = cached_cases(cfg, items, cached_transforms(cfg), cache_dir=tmp_path, ram_budget_gb=0)
    assert all(_same(computed[i], again[i]) for i in range(len(items)))
    monkeypatch.undo()

    other, _ = _setup(tiny_dataset, "preprocess.spacing_mm=[5.0, 5.0, 5.0]")
    assert preprocessing_key(other) != preprocessing_key(cfg)
    assert preprocessing_key(load_config(REPO_CONFIG, [f"data.manifest={tiny_dataset}", "train.lr=0.1"])) == \
        preprocessing_key(cfg)  # training-only settings do not invalidate the cache
    cached_cases(other, items, cached_transforms(other), cache_dir=tmp_path, ram_budget_gb=0)[0]
    assert len(list(tmp_path.iterdir())) == 2


def test_ram_cache_holds_what_fits_the_budget(tiny_dataset):
    cfg, items = _setup(tiny_dataset)
    everything = cached_cases(cfg, items, cached_transforms(cfg), ram_budget_gb=1.0)
    assert sorted(everything.ram_items) == list(range(len(items)))
    sizes = [sum(v.element_size() * v.nelement() for v in item.values() if isinstance(v, torch.Tensor))
             for item in everything.ram_items.values()]
    assert everything.ram_items[0]["label"].dtype == torch.uint8
    assert everything.ram_items[0]["label_fg"].dtype == torch.int32
    budget_gb = (sizes[0] + sizes[1] // 2) / 2**30  # one case and a half
    partial = cached_cases(cfg, items, cached_transforms(cfg), ram_budget_gb=budget_gb)
    assert sorted(partial.ram_items) == [0]
    assert all(_same(everything[i], partial[i]) for i in range(len(items)))  # the rest is recomputed
    half = load_config(REPO_CONFIG, [f"data.manifest={tiny_dataset}", "train.cache_rate=0.34"])
    assert len(cached_cases(half, items, cached_transforms(half), ram_budget_gb=1.0).ram_items) == 1


def test_samples_depend_on_seed_and_index_only(tiny_dataset):
    cfg, items = _setup(tiny_dataset, "train.batch_size=2", "train.augment.affine_prob=0.5")
    loader = volume_train_loader(cfg, items, workers=0, seed=3, ram_budget_gb=1.0)
    assert isinstance(loader.sampler, StepSampler)
    dataset = loader.dataset
    a, b = dataset[17], dataset[17]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["label"].dtype == torch.int64 and a["image"].dtype == torch.float32
    assert not torch.equal(dataset[18]["image"], a["image"])
    loader.sampler.set_steps(4, 6)
    batches = list(loader)
    assert len(batches) == 2
    assert torch.equal(batches[1]["image"][1], dataset[5 * 2 + 1]["image"])
    # ranks split a step's samples: rank r of 2 draws indices (step * 2 + r) * batch + b
    sampler = StepSampler(2, rank=1, world=2)
    sampler.set_steps(3, 4)
    assert list(sampler) == [14, 15]


@pytest.mark.slow
def test_worker_processes_draw_the_same_batches(tiny_dataset):
    cfg, items = _setup(tiny_dataset, "train.batch_size=2")
    serial = volume_train_loader(cfg, items, workers=0, seed=5, ram_budget_gb=1.0)
    parallel = volume_train_loader(cfg, items, workers=2, seed=5, ram_budget_gb=1.0)
    for loader in (serial, parallel):
        loader.sampler.set_steps(0, 3)
    for x, y in zip(serial, parallel):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
