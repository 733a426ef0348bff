#!/usr/bin/env python3
"""Time `liverseg predict` against its peers on the same input: the MONAI-tutorial reference pipeline
(same weights) for trained runs, the KU Leuven package's own pipeline for the built-in liver model.

    python scripts/bench_predict.py INPUT [INPUT ...] [--model RUN_DIR] [--runs 3] [--threads 2]
    python scripts/bench_predict.py --manifest M.json --split test [--model RUN_DIR]   # + Dice vs labels
    python scripts/bench_predict.py --large-only --model RUN_DIR                        # 512x512x1000 memory
    python scripts/bench_predict.py --builtin [INPUT ...] [--mask INPUT=MASK ...] [--as-dicom CT[:TOP_MM]=MASK ...]
    python scripts/bench_predict.py --cohort 20 [CT] [--model RUN_DIR | --builtin-model liver]     # pipelining

``--cohort N``: a batch of N copies of one CT (default ``../shared/data/totalseg_example/ct_3mm.nii.gz``)
predicted by one ``liverseg predict`` process (``--threads``, default 2) with pipelining off
(``LIVERSEG_PIPELINE=0``: read, segment, write one case after the other) and on (the next case read
and the last written while the network runs), alternately, ``--runs`` times each; prints every run's
wall time, the medians in cases/hour and their ratio. The model: ``--model RUN_DIR``, ``--builtin-model
NAME`` when given explicitly, else ``COHORT_CONFIG`` with random weights (a small U-Net at 3 mm, so
reading and writing are a visible share of a case, as with a fast GPU).

``--builtin`` (a built-in model, ``--builtin-model liver`` by default, or ``liver_lesions``): pipelines ``liverseg`` (``liverseg predict CT
-o OUT`` as a user runs it: ONNX Runtime, staged computation), ``faithful`` (``--backend torch``: the
same road with the whole 189x162x162 patch through PyTorch, the reference for "within 0.005 Dice")
and ``kul-package`` (``scripts/kul_reference.py``: the package's own recipe, lung/hip crop, one fixed
patch; the liver model only). Dice of every pipeline against ``faithful`` and, with ``--mask INPUT=MASK``,
against that mask (liver: every label > 0; with ``liver_lesions`` also the lesion label 2 on its own). ``--as-dicom CT[:TOP_MM]=MASK`` first writes CT (a NIfTI; only its top TOP_MM mm
when given) as a 512x512x119 uncompressed DICOM series over a 400 mm field of view, the typical
abdominal CT layout, and MASK on the same grid.

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
KUL_REFERENCE = REPO / "scripts" / "kul_reference.py"
sys.path.insert(0, str(REPO))

# The reference script's network and preprocessing, as a liverseg config.
REFERENCE_CONFIG = {
    "data": {"labels": ["background", "liver"]},
    "preprocess": {"spacing_mm": [1.5, 1.5, 2.0], "hu_window": [-57.0, 164.0]},
    "model": {"name": "unet", "spatial_dims": 3, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
              "num_res_units": 2, "norm": "batch"},
    "train": {"epochs": 30, "iters_per_epoch": 10, "batch_size": 2, "patch_size": [96, 96, 64],
              "pos_fraction": 0.67, "lr": 0.003, "schedule": "cosine", "warmup_iters": 10, "val_every": 10,
              "augment": {"affine_prob": 0.2, "rotate_deg": 10.0, "scale": 0.15}},
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

    from liverseg.config import config_from_mapping, to_dict
    from liverseg.run_folder import find_checkpoint

    checkpoint = torch.load(find_checkpoint(run_dir), map_location="cpu", weights_only=True)
    cfg = to_dict(config_from_mapping(checkpoint["config"]))
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


def ct_as_dicom_series(ct_path: Path, folder: Path, mask_path: Path | None, top_mm: float | None = None,
                       matrix: int = 512, fov_mm: float = 400.0, slices: int = 119) -> tuple[Path, Path | None]:
    """Resample a CT (and its mask, nearest) into an axial DICOM series of ``matrix`` x ``matrix`` x ``slices``
    over ``fov_mm`` in-plane (air outside the CT), covering its whole S extent or its top ``top_mm``."""
    import nibabel as nib
    import SimpleITK as sitk
    from scipy import ndimage

    from liverseg.phantoms.dicom import write_series

    source = nib.load(str(ct_path))
    ct, affine = np.asanyarray(source.dataobj).astype(np.float32), source.affine
    mask = np.asanyarray(nib.load(str(mask_path)).dataobj) > 0.5 if mask_path else None
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, ct.shape[0] - 0.5) for j in (-0.5, ct.shape[1] - 0.5)
                        for k in (-0.5, ct.shape[2] - 0.5)]) @ affine.T
    bottom, top = corners[:, 2].min(), corners[:, 2].max()
    length = min(top - bottom, top_mm or np.inf)
    pixel, step = fov_mm / matrix, length / slices
    centre = affine @ np.r_[(np.array(ct.shape) - 1) / 2.0, 1.0]
    origin_lps = np.array([-centre[0] - (matrix - 1) / 2 * pixel, -centre[1] - (matrix - 1) / 2 * pixel,
                           top - length + step / 2])
    inverse = np.linalg.inv(affine)
    hu = np.empty((slices, matrix, matrix), dtype=np.uint16)
    labels = np.zeros((slices, matrix, matrix), dtype=np.uint8)
    x_lps = origin_lps[0] + np.arange(matrix)[None, :] * pixel  # columns run to patient left
    y_lps = origin_lps[1] + np.arange(matrix)[:, None] * pixel  # rows run to posterior
    for k in range(slices):
        ras = np.stack([-x_lps + 0 * y_lps, -y_lps + 0 * x_lps, np.full((matrix, matrix), origin_lps[2] + k * step),
                        np.ones((matrix, matrix))])
        ijk = np.tensordot(inverse, ras, axes=1)[:3]
        hu[k] = np.clip(np.rint(ndimage.map_coordinates(ct, ijk, order=1, cval=-1024.0)) + 1024, 0, 65535)
        if mask is not None:
            labels[k] = ndimage.map_coordinates(mask.astype(np.uint8), ijk, order=0, cval=0)
    write_series(folder, hu, origin=tuple(origin_lps), spacing=(pixel, pixel), slice_mm=step)
    if mask is None:
        return folder, None
    image = sitk.GetImageFromArray(labels)  # (slice, row, column) = SimpleITK's (z, y, x)
    image.SetSpacing((pixel, pixel, step))
    image.SetOrigin(tuple(float(v) for v in origin_lps))
    mask_out = folder.with_name(folder.name + "_mask.nii.gz")
    sitk.WriteImage(image, str(mask_out))
    return folder, mask_out


def mask_dice(prediction: Path, reference: Path, value: int | None = None) -> float:
    """Dice of the foreground (every label > 0), or of label ``value`` only (NaN when neither holds it)."""
    import SimpleITK as sitk

    from liverseg.metrics import dice

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
    if value is None:
        return float(dice(a > 0, b > 0))
    a, b = a == value, b == value
    return float(dice(a, b)) if a.any() or b.any() else float("nan")


def builtin_bench(args, cases: list[tuple[str, str, Path | None]], env: dict, workdir: Path) -> None:
    """The built-in liver model against the faithful whole-patch computation and the package's recipe."""
    def output(key: str, name: str) -> Path:
        return (workdir / key / f"{name}.nii.gz" if key.startswith("kul-package")
                else workdir / key / name / "segmentation.nii.gz")

    def command(key: str, input_path: str, name: str) -> list[str]:
        if key.startswith("kul-package"):
            extra = ["--no-crop"] if key.endswith("no-crop") else []
            return [sys.executable, str(KUL_REFERENCE), input_path, "-o", str(output(key, name)),
                    "--threads", str(args.threads), *extra]
        extra = ["--backend", "torch"] if key == "faithful" else []
        extra += ["--model", args.builtin_model]
        return [sys.executable, "-m", "liverseg", "predict", input_path, "-o", str(workdir / key), *extra,
                "--threads", str(args.threads), "--device", "cpu", "-q", "--overwrite"]

    lesions = args.builtin_model != "liver"
    # the package's recipe is benchmarked for the liver model only (its lesion stage takes 5-7 minutes a CT)
    keys = ["liverseg", "faithful"] + ([] if args.no_reference or lesions else ["kul-package"])
    print(f"built-in model {args.builtin_model}; threads: {args.threads}; runs: {args.runs} each, alternating")
    print(f"{'case':<20} {'pipeline':<12} {'median s':>8} {'runs s':<22} {'peak RSS MB':>11} "
          f"{'Dice vs faithful':>16} {'Dice vs mask':>12}" + (f" {'lesion Dice vs faithful / mask':>31}" if lesions else ""))
    for name, input_path, mask in cases:
        times: dict[str, list[float]] = {key: [] for key in keys}
        rss: dict[str, list[float]] = {key: [] for key in keys}
        failures: dict[str, str] = {}
        for _ in range(args.runs):
            for key in keys:
                if key in failures:
                    continue
                wall, peak, code, tail = run_measured(command(key, input_path, name), env)
                if code != 0:
                    failures[key] = " ".join(tail.strip().splitlines()[-1:])
                    continue
                times[key].append(wall)
                rss[key].append(peak)
        for key in keys:
            if key in failures:
                print(f"{name[:20]:<20} {key:<12} failed: {failures[key][:160]}")
                continue
            versus = "-" if "faithful" in failures else f"{mask_dice(output(key, name), output('faithful', name)):.4f}"
            against = f"{mask_dice(output(key, name), mask):.4f}" if mask else "-"
            runs = " ".join(f"{t:.1f}" for t in times[key])
            lesion = ""
            if lesions:
                lv = "-" if "faithful" in failures else f"{mask_dice(output(key, name), output('faithful', name), 2):.4f}"
                lm = f"{mask_dice(output(key, name), mask, 2):.4f}" if mask else "-"
                lesion = f" {lv + ' / ' + lm:>31}"
            print(f"{name[:20]:<20} {key:<12} {statistics.median(times[key]):8.1f} {runs:<22} "
                  f"{statistics.median(rss[key]):11.0f} {versus:>16} {against:>12}{lesion}")
        if "liverseg" not in failures:
            base = statistics.median(times["liverseg"])
            ratios = ", ".join(f"{key} {statistics.median(times[key]) / base:.2f}x" for key in keys[1:]
                               if key not in failures)
            print(f"{name[:20]:<20} {'speed-up':<12} liverseg is faster than: {ratios}")


# The network of --cohort without --model: a small U-Net at 3 mm, one tile (random weights: speed only).
COHORT_CONFIG = {
    "data": {"labels": ["background", "liver"]},
    "preprocess": {"spacing_mm": [3.0, 3.0, 3.0], "hu_window": [-200.0, 300.0]},
    "model": {"name": "unet", "spatial_dims": 3, "channels": [16, 32, 64, 128], "strides": [2, 2, 2],
              "num_res_units": 1, "norm": "instance"},
    "train": {"auto_plan": False, "export_onnx": False},
    "infer": {"roi_size": [128, 128, 128], "overlap": 0.25},
}


def cohort_bench(args, workdir: Path) -> None:
    """Throughput of one process on an N-case batch, pipelining off vs on (see the module docstring)."""
    import torch

    from liverseg.config import from_dict, to_dict
    from liverseg.models import build_model

    source = Path(args.inputs[0]) if args.inputs else REPO.parent / "shared" / "data" / "totalseg_example" / "ct_3mm.nii.gz"
    inputs = workdir / "cohort"
    inputs.mkdir()
    for i in range(args.cohort):
        shutil.copy2(source, inputs / f"case{i:03d}.nii.gz")
    if args.model is not None:
        model = ["--model", str(args.model)]
    elif args.builtin_model_given:
        model = ["--model", args.builtin_model]
    else:
        cfg = from_dict(COHORT_CONFIG)
        torch.manual_seed(0)
        net = build_model(cfg.model, in_channels=1, out_channels=len(cfg.data.labels))
        (workdir / "run").mkdir()
        torch.save({"model": net.state_dict(), "config": to_dict(cfg), "epoch": 1}, workdir / "run" / "best.pt")
        model = ["--model", str(workdir / "run")]
    print(f"cohort: {args.cohort} copies of {source}; model {model[1]}; threads {args.threads}; "
          f"runs {args.runs} each, alternating; cpu cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.runs):
        for key in ("off", "on"):
            out = workdir / f"out_{key}"
            shutil.rmtree(out, ignore_errors=True)
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1",
                       LIVERSEG_PIPELINE="1" if key == "on" else "0")
            command = [sys.executable, "-m", "liverseg", "predict", str(inputs), "-o", str(out), *model,
                       "--threads", str(args.threads), "--device", "cpu", "-q"]
            wall, peak, code, tail = run_measured(command, env)
            if code != 0:
                print(f"pipelining {key}: failed: {tail.strip().splitlines()[-1:]}")
                return
            times[key].append(wall)
            print(f"pipelining {key:<3} {wall:7.1f} s  {args.cohort * 3600 / wall:7.0f} cases/h  peak RSS {peak:6.0f} MB",
                  flush=True)
    medians = {key: statistics.median(values) for key, values in times.items()}
    for key in ("off", "on"):
        print(f"median pipelining {key:<3} {medians[key]:7.1f} s  {args.cohort * 3600 / medians[key]:7.0f} cases/h")
    print(f"throughput ratio on/off: {medians['off'] / medians['on']:.2f}x")


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
    parser.add_argument("--builtin", action="store_true",
                        help="the built-in liver model against its faithful whole-patch run and the package's recipe")
    parser.add_argument("--builtin-model", default="liver", metavar="NAME",
                        help="with --builtin: which built-in model (liver, liver_lesions); default liver")
    parser.add_argument("--mask", action="append", default=[], metavar="INPUT=MASK",
                        help="with --builtin: a reference liver mask (or liver 1 / lesion 2 label map) for one of "
                             "the INPUTs (repeatable)")
    parser.add_argument("--as-dicom", action="append", default=[], metavar="CT[:TOP_MM]=MASK",
                        help="with --builtin: benchmark CT written as a 512x512x119 DICOM series (and MASK on its grid)")
    parser.add_argument("--cohort", type=int, default=None, metavar="N",
                        help="throughput of one process on N copies of one CT, pipelining off vs on")
    args = parser.parse_args()
    args.builtin_model_given = "--builtin-model" in sys.argv
    if args.cohort is not None:
        if args.runs < 3 or args.cohort < 2:
            parser.error("--cohort N needs N >= 2 and --runs >= 3")
        with tempfile.TemporaryDirectory(prefix="liverseg-bench-") as tmp:
            cohort_bench(args, Path(tmp))
        return 0
    if args.builtin:
        if args.runs < 3:
            parser.error("--runs must be at least 3 for a meaningful median")
        masks = dict(item.split("=", 1) for item in args.mask if "=" in item)
        if len(masks) != len(args.mask) or not set(masks) <= set(args.inputs):
            parser.error("--mask: give INPUT=MASK pairs whose INPUT is one of the inputs")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
        with tempfile.TemporaryDirectory(prefix="liverseg-bench-") as tmp:
            workdir = Path(tmp)
            from liverseg.io import case_name

            cases = [(case_name(p), p, Path(masks[p]) if p in masks else None) for p in args.inputs]
            for item in args.as_dicom:
                source, _, mask = item.partition("=")
                source, _, top = source.partition(":")
                name = f"{case_name(source)}_dicom{'_top' + top if top else ''}"
                folder, mask_out = ct_as_dicom_series(Path(source), workdir / "inputs" / name,
                                                      Path(mask) if mask else None, float(top) if top else None)
                cases.append((name, str(folder), mask_out))
            if not cases:
                parser.error("--builtin: give INPUT paths or --as-dicom")
            builtin_bench(args, cases, env, workdir)
        return 0
    if args.runs < 3:
        parser.error("--runs must be at least 3 for a meaningful median")
    if not args.no_reference and not args.large_only and not args.reference.is_file():
        parser.error(f"reference pipeline {args.reference} not found (expected ../shared/bench beside the repo)")

    cases: list[tuple[str, str, Path | None]] = []  # (name, input, label)
    if args.manifest is not None:
        from liverseg.datasets.manifest import load_manifest

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
