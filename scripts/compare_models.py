#!/usr/bin/env python3
"""Train every model variant with the same config, data and iteration budget; print Dice and time.

    python scripts/compare_models.py [--models unet ma_unet ...] [--config configs/demo_3d.yaml]
        [--set train.epochs=12 ...] [--manifest M.json --root ROOT --test-split test] [--workdir DIR]

Without ``--manifest`` the data are the demo's synthetic phantoms (12 train, 2 val, 4 test). With
one, the cases of ``--test-split`` are predicted on their original grid and scored against their
labels (after ``data.label_remap``). Every model gets the same config except ``model.name`` (and the
overrides given), so the iteration budget is identical; wall time is reported alongside.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from liverseg.config import apply_overrides, load_config  # noqa: E402
from liverseg.demo import TEST_SEEDS, TRAIN_SEEDS, VAL_SEEDS  # noqa: E402
from liverseg.evaluation import evaluate  # noqa: E402
from liverseg.inference.batch import predict_files  # noqa: E402
from liverseg.datasets.manifest import load_manifest  # noqa: E402
from liverseg.models import MODELS, build_model, count_parameters, input_channels  # noqa: E402
from liverseg.phantoms import write_phantom_manifest  # noqa: E402
from liverseg.training.loop import train  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo_3d.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--manifest", type=Path, default=None, help="default: the demo's phantoms")
    parser.add_argument("--root", type=Path, default=None, help="root of the manifest's relative paths")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs and predictions here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="liverseg-compare-") as tmp:
        work = args.workdir or Path(tmp)
        manifest_path = args.manifest or write_phantom_manifest(
            work / "phantoms", {"train": TRAIN_SEEDS, "val": VAL_SEEDS, "test": TEST_SEEDS})
        overrides = [f"data.manifest={manifest_path}"] + ([f"data.root={args.root}"] if args.root else []) + args.set
        base = load_config(args.config, overrides)
        manifest = load_manifest(manifest_path, base.data.root or None)
        test_cases = manifest.split(args.test_split)
        print(f"data: {manifest_path} (test split {args.test_split!r}: {len(test_cases)} cases); config "
              f"{args.config.name}; budget {base.train.epochs} epochs x {base.train.iters_per_epoch} iterations "
              f"x batch {base.train.batch_size}; overrides {args.set or 'none'}", flush=True)
        rows = []
        for name in args.models:
            cfg = apply_overrides(base, [f"model.name={name}"])
            params = count_parameters(build_model(cfg.model, input_channels(cfg.model), len(cfg.data.labels)))
            run_dir = work / "runs" / f"{name}_{cfg.model.spatial_dims}d"
            start = time.perf_counter()
            train(cfg, run_dir, threads=args.threads, progress=False)
            train_minutes = (time.perf_counter() - start) / 60
            start = time.perf_counter()
            written = predict_files([c.image for c in test_cases], work / "predictions" / run_dir.name, run_dir,
                                    threads=args.threads, progress=False)
            predict_seconds = (time.perf_counter() - start) / len(test_cases)
            scores = [result.dice for case, path in zip(test_cases, written)
                      for result in evaluate(path, case.label, {1: "liver"}, cfg.data.label_remap)]
            rows.append((name, cfg.model.spatial_dims, params, train_minutes, predict_seconds, scores))
            print(f"  {name}: Dice {statistics.mean(scores):.4f}, train {train_minutes:.1f} min", flush=True)

    print("\n| model | dims | parameters | train min | predict s/case | liver Dice mean | min |")
    print("|---|---|---|---|---|---|---|")
    for name, dims, params, train_minutes, predict_seconds, scores in rows:
        print(f"| {name} | {dims}D | {params / 1e6:.2f} M | {train_minutes:.1f} | {predict_seconds:.1f} | "
              f"{statistics.mean(scores):.4f} | {min(scores):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
