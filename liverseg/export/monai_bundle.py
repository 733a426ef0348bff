"""``liverseg export RUN --format monai-bundle -o DIR``: a trained CT run as a MONAI bundle folder.

The folder runs with MONAI alone (no liverseg, no pytorch-ignite)::

    cd DIR && python -m monai.bundle run --config_file configs/inference.json \\
        --meta_file configs/metadata.json --dataset_dir /path/to/niftis --output_dir /path/to/out

* ``models/model.ts``: the network as TorchScript. It is traced without liverseg's size adapter and
  wrapped in a scripted module that zero-pads every input to a multiple of the network's size divisor
  and crops the logits back, so it takes any input size (checked at export on a second, odd-sized
  input against the eager network).
* ``configs/inference.json``: LoadImaged, EnsureChannelFirstd, Orientationd RAS, ScaleIntensityRanged
  (the run's HU window clip, then its scaling to [0, 1] or, for planned runs, the z-score: both affine
  maps, so one transform), Spacingd to the run's spacing; a Gaussian SlidingWindowInferer with the
  run's roi size and overlap over the softmax of the network (probabilities are blended, as liverseg
  does); Invertd of the probabilities (bilinear) to the input grid, AsDiscreted argmax, the run's
  largest-component / hole-filling clean-up, SaveImaged.
* ``configs/metadata.json``: MONAI's bundle metadata (meta_schema_20240725), with the run's spacing,
  HU window and labels.
* ``docs/README.md``, ``LICENSE``.

What differs from ``liverseg predict`` (and why the label maps agree closely but not voxel for voxel):
MONAI's Spacingd keeps the exact target spacing where liverseg stretches the grid to keep the volume's
extent, and does not anti-alias before down-sampling; the sliding window places its tiles differently;
liverseg's coarse-to-fine pass (which sets everything outside the found region to background) and flip
TTA are not reproduced. ``tests/test_monai_bundle.py`` measures the agreement.

Only shape-generic networks are exported: kul_unet and kul_resunet compute their padding in Python from
the input size (and kul_unet normalises over the whole patch), so their traced graph holds one input size.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import ExperimentConfig
from ..errors import InputError
from .writers import example_input
from ..engine.loaded import TrainedModel
from ..grid.road import intensity_map
from ..inference.sources import load_trained_model
from ..modalities import modality_for
from ..run_folder import RUN, monai_bundle_path
from ..version import __version__

if TYPE_CHECKING:
    import torch


# Models whose forward computes padding from the input size in Python: a trace is valid for one size.
NOT_SHAPE_GENERIC = {"kul_unet": "pads its input to the 27k - 26 'valid' sizes in Python and normalises "
                                 "over the whole patch",
                     "kul_resunet": "pads its input to the 'valid' sizes of its graph in Python"}
METADATA_SCHEMA = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
                   "0.8.1/meta_schema_20240725.json")
BUNDLE_VERSION = "0.1.0"


def _check_exportable(trained: "TrainedModel", run_dir: Path) -> None:
    cfg = trained.cfg
    if not modality_for(cfg).traits.exportable:
        raise InputError(f"{run_dir}: --format monai-bundle supports CT runs (data.modality=ct), this run is "
                         f"data.modality={cfg.data.modality}")
    if cfg.model.spatial_dims != 3:
        raise InputError(f"{run_dir}: --format monai-bundle supports 3D models; this run's model is 2D "
                         f"(model.spatial_dims={cfg.model.spatial_dims}, slices_2d={cfg.model.slices_2d}), whose "
                         "slice stacking has no MONAI transform; export it with --format onnx or torchscript")
    if cfg.model.name in NOT_SHAPE_GENERIC:
        raise InputError(f"{run_dir}: --format monai-bundle cannot export model.name={cfg.model.name}: it "
                         f"{NOT_SHAPE_GENERIC[cfg.model.name]}, so its TorchScript is not shape-generic (valid "
                         "for one input size only) and a MONAI sliding window cannot run it; predict with "
                         f"`liverseg predict --model {run_dir}`, or export --format onnx|torchscript")


def _padded_module(net: "torch.nn.Module", example: "torch.Tensor", divisor: int) -> "torch.jit.ScriptModule":
    """The net traced at ``example``, inside a scripted pad-to-``divisor``-and-crop wrapper."""
    import torch
    import torch.nn.functional as F

    class PadToMultiple(torch.nn.Module):
        """Zero-pads (N, C, X, Y, Z) at the far end of each axis to multiples of ``divisor``; crops back."""

        def __init__(self, inner: torch.nn.Module, divisor: int) -> None:
            super().__init__()
            self.inner = inner
            self.divisor = divisor

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d = self.divisor
            x_, y_, z_ = x.shape[2], x.shape[3], x.shape[4]
            padded = F.pad(x, [0, (d - z_ % d) % d, 0, (d - y_ % d) % d, 0, (d - x_ % d) % d])
            return self.inner(padded)[:, :, :x_, :y_, :z_]

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
        return torch.jit.script(PadToMultiple(traced, divisor))


def _check_shape_generic(module: Any, net: "torch.nn.Module", example: "torch.Tensor", divisor: int,
                         model_name: str, run_dir: Path) -> None:
    """Run the TorchScript and the eager network on an odd-sized input: same logits, or refuse."""
    import torch

    # Another size than the traced one along every axis, not a multiple of the divisor.
    probe_shape = [max(divisor, s - divisor) + divisor // 2 + 1 for s in example.shape[2:]]
    probe = torch.randn((1, example.shape[1], *probe_shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            got = module(probe)
            padded = torch.nn.functional.pad(probe, [p for s in reversed(probe_shape) for p in (0, (-s) % divisor)])
            want = net(padded)[(slice(None), slice(None), *(slice(0, s) for s in probe_shape))]
        ok = tuple(got.shape) == tuple(want.shape) and torch.allclose(got, want, rtol=1e-3, atol=1e-3)
    except RuntimeError:
        ok = False
    if not ok:
        raise InputError(f"{run_dir}: --format monai-bundle: the TorchScript of model.name={model_name} is not "
                         "shape-generic (traced at one tile size, it gives other logits or fails at another), "
                         "so a MONAI sliding window cannot run it; export --format onnx|torchscript instead")


def _intensity_range(cfg: "ExperimentConfig") -> tuple[float, float, float, float]:
    """ScaleIntensityRanged's (a_min, a_max, b_min, b_max): clip to the HU window, then liverseg's scaling
    (``grid.road.intensity_map``: [0, 1], or z-scores), an affine map given by where the window's ends go."""
    low, high, offset, divisor = intensity_map(cfg.preprocess)
    return low, high, (low - offset) / divisor, (high - offset) / divisor


def inference_config(cfg: "ExperimentConfig") -> dict:
    """The bundle's ``configs/inference.json`` for a run's config."""
    labels = list(cfg.data.labels)
    a_min, a_max, b_min, b_max = _intensity_range(cfg)
    post: list[dict] = [
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    # The run's clean-up (infer config), in liverseg's order; 26-connectivity as liverseg.engine.postprocess.
    for name, size_ml in cfg.infer.min_object_ml.items():
        if len(labels) == 2:  # RemoveSmallObjects treats all foreground as one: exact for one class only
            post.append({"_target_": "RemoveSmallObjectsd", "keys": "pred", "min_size": float(size_ml) * 1000.0,
                         "connectivity": 3, "by_measure": True})
    if cfg.infer.largest_component:
        post.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred",
                     "applied_labels": [labels.index(n) for n in cfg.infer.largest_component],
                     "independent": True, "connectivity": 3})
    if cfg.infer.fill_holes:
        post.append({"_target_": "FillHolesd", "keys": "pred",
                     "applied_labels": [labels.index(n) for n in cfg.infer.fill_holes]})
    post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_ext": ".nii.gz", "output_dtype": "$numpy.uint8", "resample": False,
                 "separate_folder": False, "print_log": False})
    return {
        "imports": ["$import glob", "$import math", "$import os", "$import numpy", "$import torch", "$import monai"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$@bundle_root + '/input'",
        "input_file": "",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$[@input_file] if @input_file else sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) "
                    "+ glob.glob(os.path.join(@dataset_dir, '*.nii')))",
        "model_path": "$@bundle_root + '/models/model.ts'",
        "network": "$torch.jit.load(@model_path, map_location=@device).eval()",
        # liverseg blends the tiles' softmax probabilities, not their logits: the softmax is part of the
        # network the inferer calls, so the postprocessing needs no Activationsd.
        "network_probabilities": "$torch.nn.Sequential(@network, torch.nn.Softmax(dim=1)).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS",
             "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": a_min, "a_max": a_max,
             "b_min": b_min, "b_max": b_max, "clip": True},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [float(s) for s in cfg.preprocess.spacing_mm],
             "mode": "bilinear", "scale_extent": True, "align_corners": True},
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': f} for f in @datalist]",
                    "transform": "@preprocessing"},
        "roi_size": [int(r) for r in cfg.infer.roi_size],
        "overlap": float(cfg.infer.overlap),
        "size_divisor": int(cfg.model.size_divisor),
        # liverseg's tile fitting (infer.fit_tile): per axis as many tiles as roi_size needs, each shrunk to
        # what still covers the volume with the overlap, rounded up to the size divisor. It matters for
        # instance-normalised networks: a small volume zero-padded to a large tile changes their statistics.
        # Never larger than the volume: MONAI would pad it on both sides, liverseg pads at the far end, as
        # models/model.ts does when it pads to the size divisor.
        "tile_count": "$lambda n, r: 1 if n <= r else len({round(i * (n - r) / (c - 1)) for c in "
                      "[math.ceil((n - r) / max(1, int(r * (1 - @overlap)))) + 1] for i in range(c)})",
        "tile_size": "$lambda shape: [max(1, min(n, r, -(-(math.ceil(n / (c - (c - 1) * @overlap)) if c > 1 else n) "
                     "// @size_divisor) * @size_divisor)) for n, r in zip(shape, @roi_size) for c in "
                     "[@tile_count(n, r)]]",
        "inferer": "$lambda shape: monai.inferers.SlidingWindowInferer(roi_size=@tile_size(shape), "
                   f"sw_batch_size={int(cfg.infer.sw_batch_size)}, overlap=@overlap, mode={cfg.infer.blend!r}, "
                   "sigma_scale=0.125, padding_mode='constant', cval=0.0)",
        "postprocessing": {"_target_": "Compose", "transforms": post},
        # no_grad as a decorator, not torch.set_grad_enabled(False) in "initialize": a bundle run inside
        # someone's Python process must not switch autograd off for what that process does next
        "predict": "$torch.no_grad()(lambda d: @postprocessing(dict(d, pred=@inferer(d['image'].shape[1:])("
                   "d['image'][None].to(@device), "
                   "@network_probabilities)[0].cpu())))",
        "initialize": ["$os.makedirs(@output_dir, exist_ok=True)"],
        "run": ["$[@predict(d) for d in @dataset]"],
    }


def metadata(trained: "TrainedModel", bundle_name: str) -> dict:
    import monai
    import torch

    cfg = trained.cfg
    labels = list(cfg.data.labels)
    spacing = [float(s) for s in cfg.preprocess.spacing_mm]
    roi = [int(r) for r in cfg.infer.roi_size]
    a_min, a_max, b_min, b_max = _intensity_range(cfg)
    channels = {str(i): name for i, name in enumerate(labels)}
    optional = {}
    for package in ("nibabel",):
        try:
            optional[package] = __import__(package).__version__
        except ImportError:
            pass
    return {
        "schema": METADATA_SCHEMA,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by liverseg {__version__} from {trained.model_id}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {},
        "optional_packages_version": optional,
        "name": bundle_name,
        "task": f"CT segmentation of {', '.join(labels[1:])}",
        "description": (f"A liverseg {cfg.model.name} network ({trained.model_id}) for 3D CT segmentation of "
                        f"{', '.join(labels[1:])}, with liverseg's preprocessing as MONAI transforms: RAS "
                        f"orientation, HU window [{a_min:g}, {a_max:g}], {spacing} mm spacing, Gaussian "
                        f"sliding window over {roi} tiles."),
        "authors": "liverseg (exported model; see docs/README.md for its training run)",
        "copyright": "Copyright (c) the liverseg authors and the run's owner",
        "data_source": f"the training data of the exported liverseg run (see its {RUN.config})",
        "data_type": "nibabel",
        "image_classes": "single channel CT in Hounsfield units",
        "label_classes": ", ".join(f"{i} is {name}" for i, name in enumerate(labels)),
        "pred_classes": "single channel label map on the input's grid: " +
                        ", ".join(f"{i} {name}" for i, name in enumerate(labels)),
        "intended_use": "Research only; not for diagnostic or clinical use",
        "references": [],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                "spatial_shape": roi, "dtype": "float32", "value_range": [b_min, b_max],
                "is_patch_data": True, "channel_def": {"0": "image"},
                "pixdim": spacing, "orientation": "RAS", "hu_window": [a_min, a_max],
                "spatial_shape_note": f"any size; padded to multiples of {cfg.model.size_divisor} inside the "
                                      "network",
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": len(labels),
                "spatial_shape": roi, "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": channels, "pixdim": spacing,
            }},
        },
        "labels": channels,
        "pixdim": spacing,
    }


README_TEMPLATE = """# {name}: {labels_fg} CT segmentation (MONAI bundle exported by liverseg)

A liverseg run ({model_id}) as a MONAI bundle. It runs with MONAI {monai_version} and PyTorch
alone; liverseg is not needed. Research use only; not for diagnostic or clinical use.

## Labels

{label_lines}

## Run

From this folder, on every `*.nii.gz`/`*.nii` in a folder:

```
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
    --dataset_dir /path/to/niftis --output_dir /path/to/out
```

or on one file: `--input_file /path/to/ct.nii.gz`. From elsewhere add `--bundle_root /path/to/this/folder`.
The command line needs MONAI's optional `fire` package (`pip install fire`); from Python, without it:
`monai.bundle.run(config_file="configs/inference.json", meta_file="configs/metadata.json", bundle_root=".",
dataset_dir=..., output_dir=...)`.
Each input `NAME.nii.gz` gives `OUT/NAME_seg.nii.gz`: a uint8 label map on the input's own grid
(same shape and affine). The network runs on a GPU when PyTorch sees one.

## What it does

1. Preprocessing (`preprocessing` in `configs/inference.json`): LoadImaged, EnsureChannelFirstd,
   Orientationd RAS, ScaleIntensityRanged ({intensity}), Spacingd to {spacing} mm (bilinear).
2. `models/model.ts` (TorchScript, {network}): logits of {num_labels} classes; inputs of any size are
   zero-padded to multiples of {divisor} inside the module and the logits cropped back.
3. SlidingWindowInferer: {roi} tiles, overlap {overlap}, {blend} blending of the softmax probabilities.
4. Postprocessing: Invertd of the probabilities to the input grid (bilinear), AsDiscreted argmax,
   {cleanup}SaveImaged.

## Agreement with `liverseg predict`

The label maps agree with `liverseg predict --model RUN` on the same file up to resampling and tiling
differences: Spacingd keeps exactly {spacing} mm (liverseg stretches the grid slightly to keep the
volume's extent) and does not anti-alias when down-sampling, and the tiles sit elsewhere. liverseg's
coarse-to-fine pass{tta} is not reproduced. Measured by liverseg's tests (tests/test_monai_bundle.py) on a
synthetic 40x36x20 CT at 2 mm (LPS, rotated 20 degrees) with a 4 mm model: 99.95 % of the voxels equal,
foreground Dice 0.9986 (one tile); 99.7 % and 0.996 with 12x12x8 tiles. Expect differences at object
boundaries, about a voxel wide, and more where liverseg's coarse pass would have cut a far-off false positive.

## Provenance

Exported by liverseg {version} from {model_id}, trained for {epoch} epochs.
"""

LICENSE_TEXT = """The network weights in models/model.ts come from a liverseg training run; their licence is the
one of that run's training data and of whoever trained it. Check it before redistributing this bundle.

The configuration files and documentation of this bundle were generated by liverseg and may be used
under the Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0).
"""


def _readme(trained: "TrainedModel", name: str) -> str:
    cfg = trained.cfg
    labels = list(cfg.data.labels)
    a_min, a_max, b_min, b_max = _intensity_range(cfg)
    intensity = (f"HU clipped to [{a_min:g}, {a_max:g}], mapped linearly to [{b_min:.4g}, {b_max:.4g}]")
    cleanup = ""
    if cfg.infer.min_object_ml and len(labels) == 2:
        sizes = ", ".join(f"{n} < {v:g} mL" for n, v in cfg.infer.min_object_ml.items())
        cleanup += f"RemoveSmallObjectsd ({sizes}), "
    if cfg.infer.largest_component:
        cleanup += f"KeepLargestConnectedComponentd ({', '.join(cfg.infer.largest_component)}), "
    if cfg.infer.fill_holes:
        cleanup += f"FillHolesd ({', '.join(cfg.infer.fill_holes)}), "
    tta = f" and flip TTA over axes {list(cfg.infer.tta_flip_axes)}" if cfg.infer.tta_flip_axes else ""
    if cfg.infer.min_object_ml and len(labels) > 2:
        tta += " and the small-object removal (min_object_ml)"
    return README_TEMPLATE.format(
        name=name, labels_fg=", ".join(labels[1:]), model_id=trained.model_id,
        monai_version=_monai_version(), label_lines="\n".join(f"- {i}: {n}" for i, n in enumerate(labels)),
        intensity=intensity, spacing=[float(s) for s in cfg.preprocess.spacing_mm], network=cfg.model.name,
        num_labels=len(labels), divisor=cfg.model.size_divisor, roi=list(cfg.infer.roi_size),
        overlap=cfg.infer.overlap, blend=cfg.infer.blend, cleanup=cleanup, tta=tta, version=__version__,
        epoch=trained.epoch)


def _monai_version() -> str:
    import monai

    return monai.__version__


def export_monai_bundle(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run as a MONAI bundle folder ``out`` (default: ``run_folder.monai_bundle_path``); returns it.

    Written into a temporary sibling folder and renamed into place, so a failed export leaves nothing.
    An existing non-empty ``out`` is refused (a bundle is never merged into another folder).
    """
    import torch

    run_dir = Path(run_dir)
    trained = load_trained_model(run_dir, "cpu")
    _check_exportable(trained, run_dir)
    out = Path(out) if out is not None else monai_bundle_path(run_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"-o {out}: exists and is not an empty folder; a bundle is written into a new folder")
    cfg = trained.cfg
    net = trained.model.net.eval()  # without liverseg's size adapter: the scripted wrapper pads
    example = example_input(cfg)
    module = _padded_module(net, example, cfg.model.size_divisor)
    _check_shape_generic(module, net, example, cfg.model.size_divisor, cfg.model.name, run_dir)
    name = f"liverseg_{'_'.join(cfg.data.labels[1:])}_ct_segmentation"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-bundle"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "configs").mkdir(parents=True)
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        torch.jit.save(module, str(tmp / "models" / "model.ts"),
                       _extra_files={"metadata.json": json.dumps({"labels": list(cfg.data.labels)})})
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference_config(cfg), indent=4) + "\n")
        (tmp / "configs" / "metadata.json").write_text(json.dumps(metadata(trained, name), indent=4) + "\n")
        (tmp / "docs" / "README.md").write_text(_readme(trained, name))
        (tmp / "LICENSE").write_text(LICENSE_TEXT)
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["export_monai_bundle", "inference_config", "metadata", "NOT_SHAPE_GENERIC"]
