#!/usr/bin/env python3
"""Time `liverseg predict` against the MONAI-tutorial reference pipeline on the same input.

    python scripts/bench_predict.py INPUT [INPUT ...] [--model RUN_DIR] [--runs 3] [--threads 2]

Both run as separate processes, alternately (liverseg, reference, liverseg, ...), so machine noise
hits both alike; each process's wall time and peak RSS (from wait4) are recorded and the medians and
their ratios printed. The reference is ``../shared/bench/monai_reference.py`` (override with
``--reference``). Without ``--model``, a small model is trained first on synthetic phantoms
(``configs/smoke_3d.yaml``) so the script needs nothing else; speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO.parent / "shared" / "bench" / "monai_reference.py"


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


def train_default_model(workdir: Path, threads: int) -> Path:
    """A smoke-config model on a few phantoms: enough for timing, built in about half a minute."""
    sys.path.insert(0, str(REPO))
    from liverseg.phantoms import write_phantom_manifest

    manifest = write_phantom_manifest(workdir / "phantoms", {"train": range(3), "val": [3]})
    run_dir = workdir / "model"
    subprocess.run([sys.executable, "-m", "liverseg", "train", "--config", str(REPO / "configs" / "smoke_3d.yaml"),
                    "--run-dir", str(run_dir), "--set", f"data.manifest={manifest}", "--threads", str(threads),
                    "-q"], check=True)
    return run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="DICOM series folders or NIfTI/NRRD/MHA files")
    parser.add_argument("--model", type=Path, default=None, help="liverseg run folder (default: train a smoke model)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each pipeline per input (at least 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads given to both pipelines")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="reference pipeline script")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3 for a meaningful median")
    if not args.reference.is_file():
        parser.error(f"reference pipeline {args.reference} not found (expected ../shared/bench beside the repo)")

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="liverseg-bench-") as tmp:
        workdir = Path(tmp)
        model = args.model or train_default_model(workdir, args.threads)
        print(f"model: {model}   threads: {args.threads}   runs: {args.runs} each, alternating")
        print(f"{'input':<34} {'pipeline':<10} {'median s':>9} {'runs s':<26} {'peak RSS MB':>11}")
        for input_path in args.inputs:
            commands = {
                "liverseg": [sys.executable, "-m", "liverseg", "predict", input_path, "-o", str(workdir / "ls"),
                             "--model", str(model), "--threads", str(args.threads), "-q"],
                "reference": [sys.executable, str(args.reference), input_path, str(workdir / "ref"),
                              "--threads", str(args.threads)],
            }
            times: dict[str, list[float]] = {name: [] for name in commands}
            rss: dict[str, list[float]] = {name: [] for name in commands}
            failures: dict[str, str] = {}
            for _ in range(args.runs):
                for name, command in commands.items():
                    if name in failures:
                        continue
                    wall, peak, code, tail = run_measured(command, env)
                    if code != 0:
                        failures[name] = " ".join(tail.strip().splitlines()[-1:])
                        continue
                    times[name].append(wall)
                    rss[name].append(peak)
            label = Path(input_path).name[:34]
            for name in commands:
                if name in failures:
                    print(f"{label:<34} {name:<10} failed: {failures[name][:160]}")
                    continue
                runs = " ".join(f"{t:.2f}" for t in times[name])
                print(f"{label:<34} {name:<10} {statistics.median(times[name]):9.2f} {runs:<26} "
                      f"{statistics.median(rss[name]):11.0f}")
            if not failures:
                speedup = statistics.median(times["reference"]) / statistics.median(times["liverseg"])
                memory = statistics.median(rss["liverseg"]) / statistics.median(rss["reference"])
                print(f"{label:<34} ratio      reference/liverseg time = {speedup:.2f}x faster; "
                      f"liverseg/reference peak RSS = {memory:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
