"""``liverseg demo``: the main job on a real CT that ships with the package, with no network access.

``liverseg demo`` segments the TotalSegmentator example CT (``builtin/samples``, Apache-2.0) with the
built-in liver model, writes every output a user gets from ``liverseg predict``, compares the liver
with the mask TotalSegmentator v1 made for that CT (model-made, not an expert's) and prints where the
files are and how to open them in 3D Slicer.

``liverseg demo --train``: the whole training road on synthetic CT phantoms: generate phantoms
(random anisotropic spacing, orientations, some oblique) -> train a small 3D U-Net for a fixed time
budget on CPU -> predict the held-out phantoms -> evaluate against their exact labels.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from importlib import resources
from pathlib import Path

from . import builtin
from .config import load_config
from .datasets.manifest import Case, load_manifest
from .engine.loaded import resolve_device
from .errors import InputError
from .evaluation import evaluate, format_table, write_csv
from .inference.batch import PredictOptions, predict_cases, predict_files
from .phantoms import write_phantom_manifest
from .run_folder import RUN, TRAINING_OUTPUTS

TRAIN_SEEDS = tuple(range(0, 12))
VAL_SEEDS = (12, 13)
TEST_SEEDS = (100, 101, 102, 103)
MARKER = ".liverseg-demo"
# Loads CT + segmentation with names and colours from 3D Slicer's Python console (source checkouts).
SLICER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slicer_load.py"


SAMPLE_CT = "totalseg_example_ct_3mm.nii.gz"
SAMPLE_REFERENCE = "totalseg_example_liver_model_v1.nii.gz"


def sample_path(name: str) -> Path:
    return Path(str(resources.files("liverseg") / "builtin" / "samples" / name))


def demo_config_path() -> Path:
    return Path(str(resources.files("liverseg") / "configs" / "demo_3d.yaml"))


def _prepare_folder(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise InputError(f"{out}: exists and is not a liverseg demo folder; choose another -o")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by liverseg demo; deleted and rewritten by the next demo run\n")


def run_builtin_demo(out: Path, device: str | None = None, threads: int | None = None,
                     progress: bool = True) -> int:
    """Segment the packaged CT with the built-in liver model; every output, the Dice, where to look."""
    started = time.perf_counter()
    _prepare_folder(out)
    ct = sample_path(SAMPLE_CT)
    model = builtin.get(builtin.DEFAULT_MODEL)
    print(f"[1/2] segmenting the TotalSegmentator example CT (real abdominal CT, 3 mm; shipped in the package)\n"
          f"      with the built-in model '{model.name}': {model.title}")
    options = PredictOptions(device=device, threads=threads, progress=progress, overwrite=True)
    result = predict_cases([Case("totalseg_example", ct, None)], out, model.name, options)
    if result.failed:
        raise InputError("; ".join(f"{case}: {reason}" for case, reason in result.failed))
    case_dir = result.case_dirs["totalseg_example"]
    print("[2/2] comparing with the liver mask TotalSegmentator v1 made for this CT (model-made, not an expert's)")
    result = evaluate(case_dir / "segmentation.nii.gz", sample_path(SAMPLE_REFERENCE), {1: "liver"})[0]
    report = json.loads((case_dir / "report.json").read_text())
    liver = report["labels"]["liver"]
    reference_ml = result.ref_voxels * report["geometry"]["voxel_volume_ml"]
    print(f"\nLiver {liver['volume_ml']:.0f} mL (reference {reference_ml:.0f} mL); against the reference: "
          f"Dice {result.dice:.3f}, 95% Hausdorff {result.hd95:.1f} mm, mean surface distance {result.assd:.1f} mm"
          f"\nSegmentation {report['runtime_s']:.1f} s, whole demo {time.perf_counter() - started:.1f} s")
    print(f"\nOutputs in {case_dir.resolve()}:\n"
          "  segmentation.nii.gz    label map (1 = liver) on exactly the CT's voxel grid\n"
          "  segmentation.seg.nrrd  the same for 3D Slicer, with the segment's name and colour\n"
          "  labels.ctbl            colour table\n"
          "  report.json            liver volume, HU statistics, geometry, warnings, model and its provenance\n"
          "  preview.png            axial / coronal / sagittal views with the liver outlined")
    print("\nOpen it in 3D Slicer: File > Add Data, choose\n"
          f"  {ct}\n  {(case_dir / 'segmentation.seg.nrrd').resolve()}")
    if SLICER_SCRIPT.is_file():
        print("or in Slicer's Python console:\n"
              f"  exec(open(r'{SLICER_SCRIPT}').read()); load_case(r'{case_dir.resolve()}', ct=r'{ct}')")
    print("\nSegment your own CT (DICOM folder or NIfTI/NRRD/MHA): liverseg predict CT -o OUT"
          "\nTrain your own model: liverseg demo --train (synthetic phantoms), then see the README")
    return 0


def run_demo(out: Path, minutes: float = 10.0, device: str | None = None, threads: int | None = None,
             progress: bool = True, train_models: bool = False) -> int:
    if not train_models:
        return run_builtin_demo(out, device, threads, progress)
    return run_training_demo(out, minutes, device, threads, progress)


def run_training_demo(out: Path, minutes: float = 10.0, device: str | None = None, threads: int | None = None,
                      progress: bool = True) -> int:
    # heavy: torch and MONAI (the training loop) stay off the built-in demo, which predicts without them
    import torch

    from .training.loop import train  # heavy: torch and MONAI, see above

    if minutes <= 0:
        raise InputError(f"--minutes {minutes}: must be positive")
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    _prepare_folder(out)
    data_dir = out / "data"
    print(f"[1/4] generating {len(TRAIN_SEEDS) + len(VAL_SEEDS) + len(TEST_SEEDS)} synthetic CT phantoms "
          f"in {data_dir}")
    manifest = write_phantom_manifest(data_dir, {"train": TRAIN_SEEDS, "val": VAL_SEEDS, "test": TEST_SEEDS})
    test_cases = load_manifest(manifest).split("test")

    # A fixed number of iterations (from the config) keeps the demo reproducible; --minutes only caps
    # it on a slower machine, where the run stops early with a less converged model.
    cfg = load_config(demo_config_path(), [f"data.manifest={manifest}", f"train.max_minutes={minutes}"])
    torch_device = resolve_device(device)
    run_dir = out / "run"
    print(f"[2/4] training a {cfg.model.name} for {cfg.train.epochs} epochs x {cfg.train.iters_per_epoch} "
          f"iterations (at most {minutes:g} min) on {torch_device} -> {run_dir}")
    train(cfg, run_dir, device=device, progress=progress)

    prediction_dir = out / "predictions"
    test_images = [case.image for case in test_cases]
    print(f"[3/4] predicting {len(test_images)} held-out phantoms -> {prediction_dir}")
    predictions = predict_files(test_images, prediction_dir, run_dir, device=device, progress=progress)

    print("[4/4] evaluating against the phantoms' exact liver labels")
    results = [result for case, prediction in zip(test_cases, predictions)
               for result in evaluate(prediction, case.label, {1: "liver"})]
    csv_path = write_csv(results, out / "evaluation.csv")
    mean_dice = statistics.mean(r.dice for r in results)
    print(format_table(results))
    first_image, first_case = test_images[0].resolve(), predictions[0].parent.resolve()
    print(f"\nMean liver Dice on {len(results)} held-out phantoms: {mean_dice:.4f}")
    print(f"Total demo time: {(time.perf_counter() - started) / 60:.1f} min")
    exported = f", {RUN.onnx} for CPU prediction" if (run_dir / RUN.onnx).is_file() else ""
    print(f"\nOutputs:\n  model run folder : {run_dir} ({', '.join(TRAINING_OUTPUTS)}{exported})"
          f"\n  per case         : {prediction_dir}/<case>/ (segmentation.nii.gz, segmentation.seg.nrrd, labels.ctbl, "
          "report.json, preview.png)"
          f"\n  evaluation       : {csv_path}")
    print("\nOpen one in 3D Slicer: File > Add Data, choose\n"
          f"  {first_image}\n  {first_case / 'segmentation.seg.nrrd'}\n"
          "(the liver segment keeps its name and colour and overlays the CT exactly)")
    if SLICER_SCRIPT.is_file():
        print("or in Slicer's Python console:\n"
              f"  exec(open(r'{SLICER_SCRIPT}').read()); load_case(r'{first_case}', ct=r'{first_image}')")
    print(f"\nSegment your own CT with this model: liverseg predict CT_FOLDER_OR_FILE -o OUT --model {run_dir}")
    if mean_dice < 0.9:
        print("warning: mean Dice below 0.90; if training stopped at the --minutes cap, this machine is "
              "slower than the one the demo was sized for: allow more minutes")
    return 0
