#!/usr/bin/env python3
"""Patches per second of liverseg's training loop against a plain MONAI-tutorial loop, in one run.

    python scripts/bench_train.py [--config configs/demo_3d.yaml] [--iters 10] [--epochs 6]
                                  [--threads 2] [--device cpu|cuda] [--workers 0]

Same network (``build_model`` from the config), patch size, batch size, Dice-CE loss, AdamW, data
(synthetic phantoms written by ``liverseg.phantoms``) and the same MONAI transforms; what differs
is the loop around them:

- liverseg: ``liverseg.training.loop.train`` itself (per-step seeding, deterministic ``StepDataset``
  with patches cropped from RAM-cached volumes, no copy of the whole volume per sample, logging,
  checkpoints). Its time per epoch is ``epoch_seconds`` from ``metrics.csv`` (the training
  iterations of the epoch; validation and checkpoint writing come after it and are excluded).
- MONAI tutorial (the spleen 3D segmentation notebook): ``CacheDataset`` over the deterministic
  transforms followed by the random ones, MONAI ``DataLoader`` with a replacement sampler of
  ``iters x batch`` patches per epoch, ``for batch in loader: zero_grad, forward, loss, backward,
  step, loss.item()``; on CUDA with ``torch.autocast`` + ``GradScaler`` as the tutorial's AMP variant.

The two loops alternate epoch by epoch (liverseg epoch k, tutorial epoch k, ...; liverseg resumes
its run exactly for each epoch, its set-up and validation untimed), so load from other processes
hits both alike; the first epoch of each is warm-up and dropped. Medians over the timed epochs and
their ratio are printed. On CUDA the GPU utilisation (``nvidia-smi``, sampled every 0.2 s) is reported too.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from monai.data import CacheDataset, DataLoader  # noqa: E402
from monai.transforms import Compose  # noqa: E402

from liverseg.config import load_config  # noqa: E402
from liverseg.modalities.items import case_dicts, load_training_manifest  # noqa: E402
from liverseg.training.losses import SegmentationLoss  # noqa: E402
from liverseg.models import build_model, input_channels  # noqa: E402
from liverseg.phantoms import write_phantom_manifest  # noqa: E402
from liverseg.training.loop import train  # noqa: E402
from liverseg.training.log import read_metrics  # noqa: E402
from liverseg.modalities.transforms import (CompactCased, CopyPatchd, augmentation, cached_transforms,  # noqa: E402
                                           patch_sampling)


class GpuUtilisation:
    """Mean GPU utilisation (%) from nvidia-smi while the block runs; None without nvidia-smi."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda"
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      f"--id={torch.cuda.current_device()}"], capture_output=True, text=True,
                                     timeout=5).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            time.sleep(0.2)

    def __enter__(self) -> "GpuUtilisation":
        if self.enabled:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def liverseg_epoch(cfg, run_dir: Path, epoch: int, device: str, workers: int) -> float:
    """Seconds of epoch ``epoch`` of liverseg's own training loop: ``train`` to ``epoch`` epochs,
    resuming the run (exactly) from the previous call, so the two loops can alternate epoch by epoch."""
    cfg = replace(cfg, train=replace(cfg.train, epochs=epoch))
    train(cfg, run_dir, device=device, workers=workers, progress=False, resume=epoch > 1)
    return float(read_metrics(run_dir / "metrics.csv")[-1]["epoch_seconds"])


def monai_tutorial_epochs(cfg, items: list[dict], device: torch.device, workers: int):
    """Seconds per epoch of the MONAI-tutorial loop on the same model, data and transforms (a generator:
    one epoch per ``next``)."""
    t = cfg.train
    torch.manual_seed(t.seed)
    deterministic = [s for s in cached_transforms(cfg) if not isinstance(s, CompactCased)]
    random_part = [s for s in patch_sampling(cfg) + augmentation(cfg.train.augment, cfg.model.spatial_dims)
                   if not isinstance(s, CopyPatchd)]
    dataset = CacheDataset(items, transform=Compose(deterministic + random_part), cache_rate=1.0, num_workers=None,
                           progress=False)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=t.iters_per_epoch * t.batch_size)
    loader = DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda")
    model = build_model(cfg.model, in_channels=input_channels(cfg.model), out_channels=len(cfg.data.labels)).to(device)
    loss_function = SegmentationLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    use_amp = device.type == "cuda" and t.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    while True:
        model.train()
        start = time.perf_counter()
        epoch_loss = 0.0
        for batch_data in loader:
            inputs, labels = batch_data["image"].to(device), batch_data["label"].to(device)
            optimizer.zero_grad()
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                outputs = model(inputs)
                loss = loss_function(outputs, labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            epoch_loss += loss.item()
        yield time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo_3d.yaml"))
    parser.add_argument("--iters", type=int, default=10, help="iterations per epoch")
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per loop (+1 warm-up each)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cases", type=int, default=6, help="training phantoms")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        manifest = write_phantom_manifest(Path(tmp) / "data", {"train": range(args.cases), "val": [50]})
        cfg = load_config(args.config, [f"data.manifest={manifest}", f"train.iters_per_epoch={args.iters}",
                                        "train.val_every=1000", "train.checkpoint_minutes=0",
                                        "train.max_minutes=0", "train.auto_plan=false"])
        loaded = load_training_manifest(cfg)
        items = case_dicts(loaded.split("train"), "train", loaded)
        patches = cfg.train.iters_per_epoch * cfg.train.batch_size
        ours, theirs, util_ours, util_theirs = [], [], [], []
        tutorial = monai_tutorial_epochs(cfg, items, device, args.workers)
        for epoch in range(1, args.epochs + 2):  # epoch 1 of each loop is warm-up
            with GpuUtilisation(device) as gpu:
                ours.append(liverseg_epoch(cfg, Path(tmp) / "run", epoch, args.device, args.workers))
            util_ours.append(gpu.mean)
            with GpuUtilisation(device) as gpu:
                theirs.append(next(tutorial))
            util_theirs.append(gpu.mean)
            print(f"epoch {epoch}{' (warm-up)' if epoch == 1 else ''}: liverseg {patches / ours[-1]:.2f} patches/s, "
                  f"MONAI tutorial {patches / theirs[-1]:.2f} patches/s", flush=True)
        ours, theirs, util_ours, util_theirs = ours[1:], theirs[1:], util_ours[1:], util_theirs[1:]

    ours_rate = statistics.median(patches / s for s in ours)
    theirs_rate = statistics.median(patches / s for s in theirs)
    print(f"\nmodel {cfg.model.name} {list(cfg.model.channels)}, patch {list(cfg.train.patch_size)}, batch "
          f"{cfg.train.batch_size}, {args.cases} phantoms, device {device}, {torch.get_num_threads()} threads, "
          f"workers {args.workers}, AMP {'on' if device.type == 'cuda' and cfg.train.amp else 'off'}")
    print("| loop | median patches/s | epochs timed |")
    print("|---|---|---|")
    print(f"| liverseg train | {ours_rate:.2f} | {len(ours)} x {args.iters} it |")
    print(f"| MONAI tutorial | {theirs_rate:.2f} | {len(theirs)} x {args.iters} it |")
    print(f"ratio liverseg / MONAI tutorial: {ours_rate / theirs_rate:.2f}x")
    if device.type == "cuda":
        mean = lambda values: statistics.mean(v for v in values if v is not None) if any(  # noqa: E731
            v is not None for v in values) else float("nan")
        print(f"GPU utilisation: liverseg {mean(util_ours):.0f}%, MONAI tutorial {mean(util_theirs):.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
