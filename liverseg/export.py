"""``liverseg export``: a trained run as one self-describing ONNX or TorchScript file.

The resolved config (labels, preprocessing spacing and HU window, inference settings) travels inside
the file, so ``liverseg predict --model model.onnx`` needs nothing else:

* ONNX: ``metadata_props`` ``liverseg.config`` (YAML), ``liverseg.tile_shape`` (JSON: the fixed
  (C, *tile) input every call gets; the batch axis is dynamic), ``liverseg.model_id``, ``liverseg.version``.
* TorchScript: extra files ``liverseg/config.yaml`` and ``liverseg/meta.json`` inside the archive.

The graph is exported for the sliding-window tile (``infer.roi_size``, padded by the model to its size
divisor inside the graph): prediction only ever feeds tiles of that size, the coarse pass included.
ONNX Runtime runs it on CPU with ``--threads`` intra-op threads (or CUDA when asked and available).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from . import __version__
from .config import ExperimentConfig, config_from_yaml_text, to_dict
from .errors import ConfigError, InputError
from .infer import TrainedModel, file_digest, load_trained_model
from .models import input_channels

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
ONNX_OPSET = 17


def tile_shape(cfg: ExperimentConfig) -> tuple[int, ...]:
    """(C, *tile) of every network call during prediction."""
    return (input_channels(cfg.model), *cfg.infer.roi_size)


def _meta(trained: TrainedModel) -> dict:
    return {"model_id": trained.model_id, "tile_shape": list(tile_shape(trained.cfg)),
            "epoch": trained.epoch, "liverseg_version": __version__}


def export_model(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> Path:
    """Write the run's model as ``fmt`` (onnx | torchscript) to ``out`` (default: inside the run); atomic."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: use {' or '.join(FORMATS)}")
    trained = load_trained_model(run_dir, torch.device("cpu"))
    if trained.cfg.data.modality != "ct":
        raise InputError(f"{run_dir}: export supports CT runs (data.modality=ct), this run is "
                         f"data.modality={trained.cfg.data.modality}; predict with --model {run_dir}")
    out = Path(out) if out is not None else Path(run_dir) / FORMATS[fmt]
    if out.is_dir():
        out = out / FORMATS[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    model = trained.model.eval()
    example = torch.zeros((1, *tile_shape(trained.cfg)), dtype=torch.float32)
    config_text = yaml.safe_dump(to_dict(trained.cfg), sort_keys=False)
    meta = _meta(trained)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        if fmt == "onnx":
            _export_onnx(model, example, config_text, meta, Path(tmp))
        else:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(model, example)
                torch.jit.save(traced, tmp, _extra_files={"liverseg/config.yaml": config_text,
                                                          "liverseg/meta.json": json.dumps(meta)})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, config_text: str, meta: dict, path: Path) -> None:
    import onnx

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: static tile shape, dynamic batch, no extra dependencies.
        torch.onnx.export(model, (example,), buffer, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (("liverseg.config", config_text), ("liverseg.tile_shape", json.dumps(meta["tile_shape"])),
                       ("liverseg.model_id", meta["model_id"]), ("liverseg.version", meta["liverseg_version"]),
                       ("liverseg.epoch", str(meta["epoch"]))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


# ----------------------------------------------------------------------------- loading

def find_exported(folder: Path) -> Path | None:
    """The exported model inside a folder (model.onnx first), or None."""
    for name in FORMATS.values():
        if (folder / name).is_file():
            return folder / name
    onnx_files = sorted(folder.glob("*.onnx"))
    return onnx_files[0] if len(onnx_files) == 1 else None


class OnnxNetwork:
    """Calls an ONNX Runtime session like a torch module: (N, C, *tile) tensor -> logits tensor."""

    def __init__(self, session, tile: tuple[int, ...]) -> None:
        self.session = session
        self.tile = tuple(tile)
        self.input_name = session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if tuple(batch.shape[1:]) != self.tile:
            raise InputError(f"the exported model takes tiles of shape {self.tile}, got {tuple(batch.shape[1:])}; "
                             "infer.roi_size cannot change after export: export again with the new setting")
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def _config_from_text(text: str, path: Path) -> ExperimentConfig:
    try:
        return config_from_yaml_text(text)
    except (ConfigError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: embedded liverseg config is invalid ({exc})") from None


def load_exported(path: str | Path, device: torch.device, threads: int | None = None) -> TrainedModel:
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, device, threads)
    extra = {"liverseg/config.yaml": "", "liverseg/meta.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InputError(f"{path}: is neither a run folder nor a model written by `liverseg export` "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not extra["liverseg/config.yaml"]:
        raise InputError(f"{path}: TorchScript file without a liverseg config; export it with `liverseg export`")
    cfg = _config_from_text(extra["liverseg/config.yaml"], path)
    meta = json.loads(extra["liverseg/meta.json"] or "{}")
    module.eval()
    model_id = f"{path.name} sha256:{file_digest(path)} (from {meta.get('model_id', '?')})"
    return TrainedModel(cfg, module, path, int(meta.get("epoch", 0)), "torchscript", model_id, meta)


def _load_onnx(path: Path, device: torch.device, threads: int | None) -> TrainedModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError(f"{path}: ONNX models need onnxruntime: pip install 'liverseg[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InputError(f"{path}: cannot be loaded by ONNX Runtime ({str(exc).splitlines()[0][:160]})") from None
    props = session.get_modelmeta().custom_metadata_map
    if "liverseg.config" not in props:
        raise InputError(f"{path}: ONNX file without a liverseg config; export it with `liverseg export`")
    cfg = _config_from_text(props["liverseg.config"], path)
    tile = tuple(json.loads(props.get("liverseg.tile_shape", "[]"))) or tile_shape(cfg)
    if tuple(tile) != tile_shape(cfg):
        raise InputError(f"{path}: exported for tiles {tile} but its config asks for {tile_shape(cfg)}")
    model_id = f"{path.name} sha256:{file_digest(path)} (from {props.get('liverseg.model_id', '?')})"
    meta = {k: v for k, v in props.items() if k != "liverseg.config"}
    return TrainedModel(cfg, OnnxNetwork(session, tile), path, int(props.get("liverseg.epoch", 0)), "onnx",
                        model_id, meta)


__all__ = ["export_model", "load_exported", "find_exported", "OnnxNetwork", "tile_shape", "FORMATS"]
