"""The CT volumes' training datasets, loaders and caching.

CT training patches are drawn as ``sampling.py`` describes: sample ``i`` is a pure function of
``(seed, i)``, and ``StepSampler`` splits each step's samples across ranks.

Caching: the deterministic part of the pipeline (read, reorient, resample, normalise, pad,
foreground/background indices) runs once per case. With ``cache_dir`` its results go to a disk
cache (MONAI ``PersistentDataset``) in a sub-folder named after a hash of everything that shapes
them (preprocessing config, labels, crop size), so a changed config never reads stale volumes.
On top, a RAM cache holds as many cases as fit a stated budget (and ``train.cache_rate``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose

from ..config import ExperimentConfig, to_dict
from ..errors import surface_user_errors
from .sampling import StepSampler, sample_seed
from .transforms import LoadCased, augmentation, cached_transforms, crop_size, patch_sampling

log = logging.getLogger(__name__)

PREPROCESS_CACHE_VERSION = 2  # bump when the cached transforms change meaning


# ----------------------------------------------------------------------------- training patches

class StepDataset(torch.utils.data.Dataset):
    """``dataset[i]``: an augmented patch drawn for global sample index ``i``, a pure function of
    ``(seed, i)``: the case is ``rng(seed, i)``'s choice among the cached cases and the augmentation
    pipeline is re-seeded from the same pair. Returns plain tensors: image float32, label int64."""

    def __init__(self, cases: Sequence[dict], augment: Compose, seed: int) -> None:
        self.cases = cases
        self.augment = augment
        self.seed = int(seed)

    def __len__(self) -> int:  # only for DataLoader's sake: any index >= 0 is valid
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        state = np.random.RandomState(sample_seed(self.seed, index))
        case = self.cases[int(state.randint(len(self.cases)))]
        self.augment.set_random_state(seed=int(state.randint(2**31)))
        with surface_user_errors():
            out = self.augment(case)
        if isinstance(out, list):  # RandCropByPosNegLabeld returns num_samples dicts
            out = out[0]
        return {"image": torch.as_tensor(out["image"]).float().contiguous(),
                "label": torch.as_tensor(out["label"]).long().contiguous()}


# ----------------------------------------------------------------------------- caching

def preprocessing_key(cfg: ExperimentConfig) -> str:
    """Hash of everything that shapes the cached (deterministic) part of a training case."""
    spec = {"version": PREPROCESS_CACHE_VERSION, "preprocess": to_dict(cfg.preprocess),
            "labels": list(cfg.data.labels), "label_remap": {str(k): v for k, v in cfg.data.label_remap.items()},
            "modality": cfg.data.modality, "crop_size": list(crop_size(cfg))}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _file_stamp(path: str | None) -> str:
    if not path:
        return ""
    stat = os.stat(path)
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _item_bytes(item: dict) -> int:
    return sum(int(v.element_size() * v.nelement()) if isinstance(v, torch.Tensor) else
               int(v.nbytes) if isinstance(v, np.ndarray) else 0 for v in item.values())


class CachedCases(torch.utils.data.Dataset):
    """The deterministic part of every case: from RAM when it fitted the budget, else from the disk
    cache (or recomputed when there is none)."""

    def __init__(self, source: torch.utils.data.Dataset, ram_items: dict[int, dict]) -> None:
        self.source, self.ram_items = source, ram_items

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        item = self.ram_items.get(index)
        if item is not None:
            return item
        with surface_user_errors():
            return self.source[index]


def default_ram_budget_gb() -> float:
    """Half of the memory available now (Linux; 4 GB where that cannot be read), shared among the
    training processes torchrun started on this node (each caches every case it may draw)."""
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20 / 2 / processes
    except OSError:
        pass
    return 4.0 / processes


def cached_cases(cfg: ExperimentConfig, items: list[dict], transforms: Sequence[Callable], *,
                 cache_dir: str | os.PathLike | None = None, ram_budget_gb: float | None = None) -> CachedCases:
    """Run ``transforms`` once per case, cached on disk (``cache_dir``) and in RAM (budget in GB)."""
    pipeline = Compose(list(transforms))
    if cache_dir:
        folder = os.path.join(os.fspath(cache_dir), f"preprocessed-{preprocessing_key(cfg)}")
        stamped = [{**item, "stamp": f"{_file_stamp(item['image'])}/{_file_stamp(item.get('label'))}"}
                   for item in items]
        source: torch.utils.data.Dataset = PersistentDataset(stamped, transform=pipeline, cache_dir=folder)
    else:
        source = Dataset(items, transform=pipeline)
    budget = (default_ram_budget_gb() if ram_budget_gb is None else ram_budget_gb) * 2**30
    limit = int(round(cfg.train.cache_rate * len(items)))
    ram: dict[int, dict] = {}
    used = 0
    for index in range(len(items)):
        if len(ram) >= limit:
            break
        with surface_user_errors():
            item = source[index]
        size = _item_bytes(item)
        if used + size > budget:
            break
        ram[index] = item
        used += size
    log.info("cache: %d of %d training cases in RAM (%.2f GB of a %.2f GB budget)%s", len(ram), len(items),
             used / 2**30, budget / 2**30, f", the rest from the disk cache {folder}" if cache_dir
             else ("" if len(ram) == len(items) else ", the rest re-read every time (no --cache-dir)"))
    return CachedCases(source, ram)


# ----------------------------------------------------------------------------- loaders

def volume_train_loader(cfg: ExperimentConfig, items: list[dict], workers: int, seed: int, *, rank: int = 0,
                        world: int = 1, cache_dir: str | os.PathLike | None = None,
                        ram_budget_gb: float | None = None) -> torch.utils.data.DataLoader:
    """Loader of augmented CT patches; its ``sampler`` is a ``StepSampler`` that the training loop
    points at the steps to draw (``loader.sampler.set_steps(first, stop)``)."""
    cases = cached_cases(cfg, items, cached_transforms(cfg), cache_dir=cache_dir, ram_budget_gb=ram_budget_gb)
    random_part = patch_sampling(cfg) + augmentation(cfg.train.augment, cfg.model.spatial_dims)
    dataset = StepDataset(cases, Compose(random_part), seed)
    sampler = StepSampler(cfg.train.batch_size, rank, world)
    pin = torch.cuda.is_available()
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler,
                                       num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                                       prefetch_factor=4 if workers > 0 else None, drop_last=False)


def volume_validation_cases(cfg: ExperimentConfig, items: list[dict]):
    """Whole preprocessed CT volumes (no augmentation), cached in memory."""
    with surface_user_errors():
        return CacheDataset(items, transform=LoadCased(cfg), cache_rate=1.0, num_workers=None, progress=False)


__all__ = ["volume_train_loader", "volume_validation_cases", "StepDataset",
           "cached_cases", "preprocessing_key"]
