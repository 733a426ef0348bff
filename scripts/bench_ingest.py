"""DICOM series load time: liverseg.io.read_volume vs SimpleITK's ImageSeriesReader, same series, one run.

    .venv/bin/python scripts/bench_ingest.py [--repeats 5] [--slices 120] [--threads N] [--workdir DIR]

Series: a synthetic 512x512xN uncompressed CT series written here with pydicom, and the real 20-slice
JPEG 2000 series in ../shared/data/totalseg_example/dicom_series_jpeg2000 when present. Both readers
start from the folder (SimpleITK: GetGDCMSeriesFileNames + Execute; liverseg: discovery, validation,
decoding, rescale), run alternately after one warm-up each (files in the page cache for both), and
the arrays are checked equal. Reported: median seconds of ``--repeats`` runs and the ratio
liverseg / SimpleITK (target: at most 1.2).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import SimpleITK as sitk

from liverseg.io.dicom import files as dicom_io  # THREADS: the package's thread pool
from liverseg.io import read_volume
from liverseg.io.images import sitk_to_volume
from liverseg.phantoms.dicom import write_series

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example" / "dicom_series_jpeg2000"


def write_synthetic(folder: Path, n_slices: int) -> Path:
    """A 512x512 body-ellipse series, file names in reverse slice order without suffix (as PACS exports)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) ** 2 / 200 ** 2 + (xx - 256) ** 2 / 230 ** 2) < 1
    volume = np.stack([np.where(body, 1024 + 40 + rng.normal(0, 20, (512, 512)), 0).astype(np.uint16)
                       for _ in range(n_slices)])
    write_series(folder, volume, origin=(-250.0, -250.0, -300.0), spacing=(0.9765625, 0.9765625), slice_mm=2.5,
                 names=[f"IM{n_slices - k:05d}" for k in range(n_slices)], description="synthetic bench")
    return folder


def read_sitk(folder: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def bench(name: str, folder: Path, repeats: int) -> tuple[float, float]:
    ours, theirs = read_volume(folder), sitk_to_volume(read_sitk(folder), folder)  # warm-up + equality check
    same = np.array_equal(ours.array, theirs.array) and np.allclose(ours.affine_ras, theirs.affine_ras, atol=1e-4)
    t_ours, t_sitk = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        read_sitk(folder)
        t_sitk.append(time.perf_counter() - start)
        start = time.perf_counter()
        read_volume(folder)
        t_ours.append(time.perf_counter() - start)
    m_ours, m_sitk = statistics.median(t_ours), statistics.median(t_sitk)
    print(f"{name:34s} {'x'.join(map(str, ours.shape)):>12s}  liverseg {m_ours:7.3f} s   SimpleITK {m_sitk:7.3f} s   "
          f"ratio {m_ours / m_sitk:5.2f}   arrays+affine equal: {same}")
    return m_ours, m_sitk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--threads", type=int, default=None, help="liverseg decoding threads (default: min(8, cores))")
    parser.add_argument("--workdir", type=Path, default=None, help="where the synthetic series is written")
    args = parser.parse_args()
    if args.threads:
        dicom_io.THREADS = args.threads
    import os
    print(f"cores: {os.cpu_count()}, liverseg threads: {dicom_io.THREADS}, SimpleITK threads: "
          f"{sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}, repeats: {args.repeats} (median)")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        synthetic = write_synthetic(Path(tmp) / "synthetic", args.slices)
        results = [bench(f"synthetic 512x512x{args.slices} (raw LE)", synthetic, args.repeats)]
        if REAL.is_dir():
            results.append(bench("real 512x512x20 JPEG 2000", REAL, args.repeats))
        else:
            print(f"(skipped the real JPEG 2000 series: {REAL} not present)")
    worst = max(o / s for o, s in results)
    print(f"worst ratio liverseg/SimpleITK: {worst:.2f} (target <= 1.20): {'PASS' if worst <= 1.2 else 'FAIL'}")
    return 0 if worst <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
