#!/usr/bin/env python3
"""Parameters, forward FLOPs per voxel and CPU forward time of every registered model, 3D and 2D.

    python scripts/model_table.py [--threads 2] [--repeats 3] [--models unet ma_unet ...]

Every model is built with the same widths (channels 16-32-64-128-256, strides 2-2-2-2, one input
channel, two classes). FLOPs are counted by ``torch.utils.flop_counter`` on a 64^3 / 256^2 input and
divided by its voxel count; time is the median forward pass (after one warm-up) on a 128^3 (3D) or
512^2 (2D) input in inference mode. Prints a Markdown table (the one in the README).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from liverseg.config import ModelConfig  # noqa: E402
from liverseg.models import MODELS, build_model, count_parameters  # noqa: E402

FLOP_SHAPE = {3: (64, 64, 64), 2: (256, 256)}
TIME_SHAPE = {3: (128, 128, 128), 2: (512, 512)}


def measure(name: str, dims: int, repeats: int) -> dict:
    cfg = ModelConfig(name=name, spatial_dims=dims, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))
    model = build_model(cfg, 1, 2).eval()
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.zeros(1, 1, *FLOP_SHAPE[dims]))
        flops_per_voxel = counter.get_total_flops() / torch.tensor(FLOP_SHAPE[dims]).prod().item()
        x = torch.randn(1, 1, *TIME_SHAPE[dims])
        model(x)  # warm-up: first call pays one-off allocations
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return {"params": count_parameters(model), "flops_per_voxel": flops_per_voxel,
            "seconds": statistics.median(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU threads, median of {args.repeats} forward passes\n")
    print("| model | dims | parameters | forward GFLOP per Mvoxel | CPU s per input | input |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for dims in (3, 2):
            row = measure(name, dims, args.repeats)
            shape = "x".join(str(s) for s in TIME_SHAPE[dims])
            print(f"| {name} | {dims}D | {row['params'] / 1e6:.2f} M | {row['flops_per_voxel'] / 1e3:.1f} | "
                  f"{row['seconds']:.2f} | {shape} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
