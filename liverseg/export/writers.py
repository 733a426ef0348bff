"""``liverseg export``: a trained run as one self-describing ONNX or TorchScript file.

The resolved config (labels, preprocessing spacing and HU window, inference settings) travels inside
the file, so ``liverseg predict --model EXPORTED.onnx`` needs nothing else:

* ONNX: ``metadata_props`` ``liverseg.config`` (YAML), ``liverseg.size_divisor`` (inputs are padded
  to multiples of it), ``liverseg.model_id``, ``liverseg.version``, ``liverseg.epoch``,
  ``liverseg.checkpoint_sha256`` (so a run folder's ONNX export is used only while it matches the
  folder's checkpoint; see ``inference.sources.load_model``).
* TorchScript: extra files ``liverseg/config.yaml`` and ``liverseg/meta.json`` inside the archive.

This module only writes; reading these files back is ``inference.sources.load_exported``.

The network is exported without liverseg's size adapter, with dynamic batch and spatial axes; the
padding to the size divisor and the crop back happen in Python around it, exactly as for the run
folder, so the sliding window can fit its tiles to each volume. ONNX Runtime runs it on CPU with
``--threads`` intra-op threads (or CUDA when asked and available).
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..atomic import atomic_path
from ..config import ExperimentConfig, to_dict
from ..errors import InputError
from ..engine.loaded import TrainedModel, file_digest
from ..inference.sources import load_trained_model
from ..modalities import modality_for
from ..run_folder import EXPORT_NAMES, export_path
from ..version import __version__

if TYPE_CHECKING:  # torch is imported where it is used: ONNX prediction runs without it
    import torch

ONNX_OPSET = 17


def example_input(cfg: ExperimentConfig) -> "torch.Tensor":
    """A (1, C, *tile) input: the sliding-window tile padded to the network's size divisor."""
    import torch

    divisor = cfg.model.size_divisor
    tile = [-(-r // divisor) * divisor for r in cfg.infer.roi_size]
    return torch.zeros((1, modality_for(cfg).in_channels(cfg), *tile), dtype=torch.float32)


def _meta(trained: TrainedModel) -> dict:
    return {"model_id": trained.model_id, "size_divisor": trained.cfg.model.size_divisor,
            "epoch": trained.epoch, "liverseg_version": __version__,
            "checkpoint_sha256": file_digest(trained.checkpoint_path, 64)}


def export_model(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> Path:
    """Write the run's model as ``fmt`` (onnx | torchscript) to ``out`` (default: inside the run); atomic."""
    import torch

    if fmt not in EXPORT_NAMES:  # --format monai-bundle is monai_bundle.py's
        raise InputError(f"--format {fmt!r}: use {' or '.join(EXPORT_NAMES)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (the exporter needs it; say so before the slow part)
        except ImportError:
            raise InputError("--format onnx needs the onnx package: pip install 'liverseg[onnx]'") from None
    trained = load_trained_model(run_dir, "cpu")
    if not modality_for(trained.cfg).traits.exportable:
        raise InputError(f"{run_dir}: export supports CT runs (data.modality=ct), this run is "
                         f"data.modality={trained.cfg.data.modality}; predict with --model {run_dir}")
    out = Path(out) if out is not None else export_path(run_dir, fmt)
    if out.is_dir():
        out = out / EXPORT_NAMES[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    model = trained.model.net.eval()  # without the size adapter: padding is done around it
    example = example_input(trained.cfg)
    config_text = yaml.safe_dump(to_dict(trained.cfg), sort_keys=False)
    meta = _meta(trained)
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            _export_onnx(model, example, config_text, meta, tmp)
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(model, example)
                torch.jit.save(traced, str(tmp), _extra_files={"liverseg/config.yaml": config_text,
                                                               "liverseg/meta.json": json.dumps(meta)})
    return out


def _export_onnx(model: "torch.nn.Module", example: "torch.Tensor", config_text: str, meta: dict, path: Path) -> None:
    import onnx
    import torch

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: static tile shape, dynamic batch, no extra dependencies.
        axes = {0: "batch", **{2 + i: f"spatial{i}" for i in range(example.ndim - 2)}}
        torch.onnx.export(model, (example,), buffer, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, opset_version=ONNX_OPSET, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (("liverseg.config", config_text), ("liverseg.size_divisor", str(meta["size_divisor"])),
                       ("liverseg.model_id", meta["model_id"]), ("liverseg.version", meta["liverseg_version"]),
                       ("liverseg.epoch", str(meta["epoch"])),
                       ("liverseg.checkpoint_sha256", meta["checkpoint_sha256"])):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


__all__ = ["export_model", "example_input", "ONNX_OPSET"]
