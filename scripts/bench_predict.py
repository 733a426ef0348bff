#!/usr/bin/env python3
"""Time `liverseg predict` against the MONAI-tutorial reference pipeline on the same input, same weights.

    python scripts/bench_predict.py INPUT [INPUT ...] [--model RUN_DIR] [--runs 3] [--threads 2]
    python scripts/bench_predict.py --manifest M.json --split test [--model RUN_DIR]   # + Dice vs labels
    python scripts/bench_predict.py --large-only --model RUN_DIR                        # 512x512x1000 memory

Pipelines: ``liverseg`` is ``liverseg predict --model RUN`` as a user runs it (the run folder holds the
``model.onnx`` that ``liverseg train`` writes at the end, so on a CPU it predicts with ONNX Runtime and
never imports PyTorch); ``liverseg-torch`` is the same with ``--backend torch`` (the checkpoint through
PyTorch). The run given with ``--model`` is copied and exported inside the bench's temporary folder.

Every pipeline runs as a separate process, alternately (liverseg, liverseg-torch, reference, liverseg,
...), so machine noise hits all alike; each process's wall time and peak RSS (from wait4) are recorded
and medians and ratios printed. The reference is ``../shared/bench/monai_reference.py`` (override with
``--reference``): a MONAI residual U-Net (16..256 channels, 4 strides, 2 residual units, batch norm) at
1.5 x 1.5 x 2 mm with HU window [-57, 164]. When the liverseg run has exactly that architecture and
preprocessing (``REFERENCE_CONFIG`` below), its weights are handed to the reference (``--weights``), so
both pipelines run the same trained network and their Dice against the labels is comparable.

Without ``--model``, such a run is trained first on synthetic phantoms (``--train-minutes``, CPU).

``--large`` (or ``--large-only``) also predicts a synthetic 512x512x1000 CT (0.78 x 0.78 x 1 mm, int16,
written as uncompressed NIfTI) once per liverseg pipeline and reports wall time and peak RSS against
the 4 GB target.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO.parent / "shared" / "bench" / "monai_reference.py"
sys.path.insert(0, str(REPO))

# The reference script's network and preprocessing, as a liverseg config.
REFERENCE_CONFIG = {
    "data": {"labels": ["background", "liver"]},
    "preprocess": {"spacing_mm": [1.5, 1.5, 2.0], "hu_window": [-57.0, 164.0]},
    "model": {"name": "unet", "spatial_dims": 3, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
              "num_res_units": 2, "norm": "batch"},
    "train": {"epochs": 30, "iters_per_epoch": 10, "batch_size": 2, "patch_size": [96, 96, 64],
              "pos_fraction": 0.67, "lr": 0.003, "schedule": "cosine", "warmup_iters": 10, "val_every": 10,
              "aug_affine_prob": 0.2, "aug_rotate_deg": 10.0, "aug_scale": 0.15},
    "infer": {"roi_size": [128, 128, 96], "overlap": 0.25, "largest_component": ["liver"]},
}


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MB, exit code, output tail) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output_chunks = []
    assert process.stdout is not None
    for chunk in iter(lambda: process.stdout.read(65536), b""):
        output_chunks.append(chunk)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    output = b"".join(output_chunks).decode(errors="replace")
    return wall, usage.ru_maxrss / 1024.0, process.returncode, output[-600:]


def train_reference_model(workdir: Path, threads: int, minutes: float) -> Path:
    """A run with the reference architecture, trained on synthetic phantoms for ``minutes`` on the CPU."""
    import yaml

    from liverseg.phantoms import write_phantom_manifest

    manifest = write_phantom_manifest(workdir / "phantoms", {"train": range(10), "val": [12]})
    config = workdir / "reference_architecture.yaml"
    config.write_text(yaml.safe_dump(REFERENCE_CONFIG, sort_keys=False))
    run_dir = workdir / "model"
    subprocess.run([sys.executable, "-m", "liverseg", "train", "--config", str(config), "--run-dir", str(run_dir),
                    "--set", f"data.manifest={manifest}", "--set", f"train.max_minutes={minutes}",
                    "--threads", str(threads), "--device", "cpu", "-q"], check=True)
    return run_dir


def reference_weights(run_dir: Path, workdir: Path) -> Path | None:
    """The run's weights as a state dict for the reference's UNet, when the architectures match."""
    import torch

    from liverseg.config import from_dict, to_dict
    from liverseg.infer import find_checkpoint

    checkpoint = torch.load(find_checkpoint(run_dir), map_location="cpu", weights_only=True)
    cfg = to_dict(from_dict(checkpoint["config"]))
    for section in ("preprocess", "model"):
        for key, value in REFERENCE_CONFIG[section].items():
            if cfg[section][key] != value:
                print(f"note: run has {section}.{key}={cfg[section][key]}, the reference {value}: the reference "
                      "runs with random weights and Dice is not comparable")
                return None
    if list(cfg["data"]["labels"]) != ["background", "liver"]:
        return None
    state = {key[len("net."):]: value for key, value in checkpoint["model"].items()}
    path = workdir / "reference_weights.pt"
    torch.save(state, path)
    return path


def copy_run(model: Path, dest: Path, export_onnx: bool) -> Path:
    """The run's config and checkpoints in ``dest``, with a fresh ``model.onnx`` when ``export_onnx``."""
    dest.mkdir(parents=True)
    for name in ("config.yaml", "best.pt", "last.pt"):
        if (model / name).is_file():
            shutil.copy2(model / name, dest / name)
    if export_onnx:
        subprocess.run([sys.executable, "-m", "liverseg", "export", str(dest), "--format", "onnx"], check=True,
                       stdout=subprocess.DEVNULL)
    return dest


def dice_of(prediction: Path, label: Path) -> float:
    import SimpleITK as sitk

    from liverseg.metrics import dice

    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))) == 1
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label))) > 0  # LiTS tumour (2) is liver too
    return float(dice(predicted, reference))


def synthetic_large_ct(path: Path, shape=(512, 512, 1000), spacing=(0.78, 0.78, 1.0)) -> Path:
    """A body-like ellipse (soft tissue, noise) with a liver-like ellipsoid and a spine, int16 HU."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    nx, ny, nz = shape
    x = (np.arange(nx) - nx / 2) * spacing[0]
    y = (np.arange(ny) - ny / 2) * spacing[1]
    body = (x[:, None] / 170.0) ** 2 + (y[None, :] / 120.0) ** 2 <= 1.0
    spine = ((x[:, None]) / 15.0) ** 2 + ((y[None, :] + 70.0) / 15.0) ** 2 <= 1.0
    array = np.empty((nz, ny, nx), dtype=np.int16)  # SimpleITK order (z, y, x)
    for k in range(nz):
        z = (k - nz / 2) * spacing[2]
        hu = np.where(body, 30, -1000).astype(np.float32)
        liver = ((x[:, None] + 60.0) / 90.0) ** 2 + ((y[None, :] - 10.0) / 70.0) ** 2 + (z / 80.0) ** 2 <= 1.0
        hu[liver] = 110
        hu[spine] = 600
        hu += rng.normal(0, 12, hu.shape).astype(np.float32)
        array[k] = hu.T.astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="CT files or DICOM folders (no Dice without --manifest)")
    parser.add_argument("--manifest", type=Path, default=None, help="cases with labels (Dice for every pipeline)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", type=Path, default=None, help="liverseg run folder (default: train one)")
    parser.add_argument("--train-minutes", type=float, default=12.0)
    parser.add_argument("--runs", type=int, default=3, help="runs of each pipeline per input (at least 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads given to every pipeline")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="reference pipeline script")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="an extra liverseg pipeline, e.g. 'nocoarse=--set infer.coarse_to_fine=false'")
    parser.add_argument("--no-onnx", action="store_true",
                        help="do not export model.onnx: the liverseg pipeline then predicts with PyTorch")
    parser.add_argument("--no-reference", action="store_true", help="liverseg pipelines only")
    parser.add_argument("--large", action="store_true", help="also the synthetic 512x512x1000 memory check")
    parser.add_argument("--large-only", action="store_true", help="only the 512x512x1000 memory check")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3 for a meaningful median")
    if not args.no_reference and not args.large_only and not args.reference.is_file():
        parser.error(f"reference pipeline {args.reference} not found (expected ../shared/bench beside the repo)")

    cases: list[tuple[str, str, Path | None]] = []  # (name, input, label)
    if args.manifest is not None:
        from liverseg.manifest import load_manifest

        cases += [(c.case_id, str(c.image), c.label) for c in load_manifest(args.manifest).split(args.split)]
    from liverseg.io import case_name

    cases += [(case_name(p), p, None) for p in args.inputs]
    if not cases and not args.large_only:
        parser.error("give INPUT paths or --manifest (or --large-only)")

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="liverseg-bench-") as tmp:
        workdir = Path(tmp)
        model = args.model or train_reference_model(workdir, args.threads, args.train_minutes)
        run = copy_run(model, workdir / "run", export_onnx=not args.no_onnx)
        pipelines: dict[str, list[str]] = {"liverseg": ["--model", str(run)]}
        if not args.no_onnx:
            pipelines["liverseg-torch"] = ["--model", str(run), "--backend", "torch"]
        for item in args.variant:
            name, _, extra = item.partition("=")
            pipelines[name] = ["--model", str(model), *extra.split()]
        weights = None if args.no_reference else reference_weights(model, workdir)
        print(f"model: {model}   reference weights: {'same as liverseg' if weights else 'random'}   "
              f"threads: {args.threads}   runs: {args.runs} each, alternating")

        def liverseg_command(extra: list[str], input_path: str, out: Path) -> list[str]:
            return [sys.executable, "-m", "liverseg", "predict", input_path, "-o", str(out), *extra,
                    "--threads", str(args.threads), "--device", "cpu", "-q", "--overwrite"]

        if not args.large_only:
            header = f"{'case':<16} {'pipeline':<15} {'median s':>8} {'runs s':<24} {'peak RSS MB':>11} {'Dice':>7}"
            print(header)
            for name, input_path, label in cases:
                commands = {key: liverseg_command(extra, input_path, workdir / key) for key, extra in pipelines.items()}
                if not args.no_reference:
                    command = [sys.executable, str(args.reference), input_path, str(workdir / "ref"), "--threads",
                               str(args.threads)]
                    commands["reference"] = command + (["--weights", str(weights)] if weights else [])
                times: dict[str, list[float]] = {key: [] for key in commands}
                rss: dict[str, list[float]] = {key: [] for key in commands}
                failures: dict[str, str] = {}
                dice: dict[str, float] = {}
                for _ in range(args.runs):
                    for key, command in commands.items():
                        if key in failures:
                            continue
                        if key == "reference":
                            shutil.rmtree(workdir / "ref", ignore_errors=True)
                        wall, peak, code, tail = run_measured(command, env)
                        if code != 0:
                            failures[key] = " ".join(tail.strip().splitlines()[-1:])
                            continue
                        times[key].append(wall)
                        rss[key].append(peak)
                        if label is not None and key not in dice:
                            out = (next((workdir / "ref").glob("*_seg.nii*")) if key == "reference"
                                   else workdir / key / name / "segmentation.nii.gz")
                            dice[key] = dice_of(out, label)
                for key in commands:
                    if key in failures:
                        print(f"{name[:16]:<16} {key:<15} failed: {failures[key][:160]}")
                        continue
                    runs = " ".join(f"{t:.1f}" for t in times[key])
                    score = f"{dice[key]:.4f}" if key in dice else "-"
                    print(f"{name[:16]:<16} {key:<15} {statistics.median(times[key]):8.1f} {runs:<24} "
                          f"{statistics.median(rss[key]):11.0f} {score:>7}")
                if "reference" in commands and "reference" not in failures:
                    reference_s = statistics.median(times["reference"])
                    ratios = ", ".join(f"{key} {reference_s / statistics.median(times[key]):.2f}x"
                                       for key in commands if key != "reference" and key not in failures)
                    print(f"{name[:16]:<16} {'speed-up':<15} reference/liverseg wall time: {ratios}")

        if args.large or args.large_only:
            large = synthetic_large_ct(workdir / "large_512x512x1000.nii")
            print(f"\nsynthetic CT 512x512x1000 (0.78 x 0.78 x 1 mm): {large.stat().st_size / 1e6:.0f} MB on disk")
            for key, extra in pipelines.items():
                wall, peak, code, tail = run_measured(liverseg_command(extra, str(large), workdir / f"large_{key}"), env)
                verdict = "within 4 GB" if peak <= 4096 else "ABOVE 4 GB"
                status = "ok" if code == 0 else f"failed: {tail.strip().splitlines()[-1][:160]}"
                print(f"large            {key:<15} {wall:8.1f} s  peak RSS {peak:6.0f} MB  {verdict}  {status}")
                shutil.rmtree(workdir / f"large_{key}", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
