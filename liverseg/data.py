"""Datasets and loaders for training and validation."""
from __future__ import annotations


import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose

from .config import ExperimentConfig
from .errors import ConfigError, InputError, surface_user_errors
from .manifest import Case, Manifest, load_manifest
from .transforms import LoadCased, augmentation, cached_transforms


def load_training_manifest(cfg: ExperimentConfig, manifest_override: str | None = None) -> Manifest:
    manifest_path = manifest_override or cfg.data.manifest
    if not manifest_path:
        raise ConfigError("data.manifest is empty: set it in the config or with --set data.manifest=PATH "
                          "(a liverseg manifest JSON or an MSD dataset.json)")
    return load_manifest(manifest_path, cfg.data.root or None)


def case_dicts(cases: list[Case], split: str, manifest: Manifest, need_labels: bool = True) -> list[dict]:
    items = []
    for case in cases:
        if not case.image.exists():
            raise InputError(f"{manifest.path}: case {case.case_id} image {case.image} not found; check "
                             "data.root (paths in the manifest are relative to it)")
        if need_labels:
            if case.label is None:
                raise InputError(f"{manifest.path}: case {case.case_id} in split {split!r} has no label")
            if not case.label.exists():
                raise InputError(f"{manifest.path}: case {case.case_id} label {case.label} not found")
        items.append({"id": case.case_id, "image": str(case.image),
                      "label": str(case.label) if case.label else None})
    if not items:
        raise InputError(f"{manifest.path}: split {split!r} is empty")
    return items


def train_loader(cfg: ExperimentConfig, items: list[dict], workers: int, seed: int) -> DataLoader:
    """Endless-feeling loader: each epoch draws iters_per_epoch x batch_size random patches."""
    with surface_user_errors():
        dataset = CacheDataset(items, transform=Compose(cached_transforms(cfg) + augmentation(cfg)),
                               cache_rate=cfg.train.cache_rate, num_workers=None, progress=False)
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, generator=generator,
                                             num_samples=cfg.train.iters_per_epoch * cfg.train.batch_size)
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, drop_last=True)


def validation_cases(cfg: ExperimentConfig, items: list[dict]) -> Dataset:
    """Whole preprocessed volumes (no augmentation), cached in memory."""
    with surface_user_errors():
        return CacheDataset(items, transform=LoadCased(cfg), cache_rate=1.0, num_workers=None, progress=False)


__all__ = ["load_training_manifest", "case_dicts", "train_loader", "validation_cases"]
