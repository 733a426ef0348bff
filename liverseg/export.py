"""``liverseg export``: a trained run as one self-describing ONNX or TorchScript file.

The resolved config (labels, preprocessing spacing and HU window, inference settings) travels inside
the file, so ``liverseg predict --model EXPORTED.onnx`` needs nothing else:

* ONNX: ``metadata_props`` ``liverseg.config`` (YAML), ``liverseg.size_divisor`` (inputs are padded
  to multiples of it), ``liverseg.model_id``, ``liverseg.version``, ``liverseg.epoch``,
  ``liverseg.checkpoint_sha256`` (so a run folder's ONNX export is used only while it matches the
  folder's checkpoint; see ``infer.load_model``).
* TorchScript: extra files ``liverseg/config.yaml`` and ``liverseg/meta.json`` inside the archive.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from . import __version__
from .atomic import atomic_path
from .config import ExperimentConfig, config_from_yaml_text, to_dict
from .errors import ConfigError, InputError
from .inference.volume import TrainedModel, file_digest, load_trained_model, resolve_device
from .run_folder import EXPORT_NAMES, export_path, find_checkpoint

if TYPE_CHECKING:  # torch is imported where it is used: ONNX prediction runs without it
    import torch

FORMATS = EXPORT_NAMES  # format -> file name in a run folder; --format monai-bundle is monai_bundle.py's
ONNX_OPSET = 17


def example_input(cfg: ExperimentConfig) -> "torch.Tensor":
    """A (1, C, *tile) input: the sliding-window tile padded to the network's size divisor."""
    import torch

    divisor = cfg.model.size_divisor
    tile = [-(-r // divisor) * divisor for r in cfg.infer.roi_size]
    from .models import input_channels

    return torch.zeros((1, input_channels(cfg), *tile), dtype=torch.float32)


def _meta(trained: TrainedModel) -> dict:
    return {"model_id": trained.model_id, "size_divisor": trained.cfg.model.size_divisor,
            "epoch": trained.epoch, "liverseg_version": __version__,
            "checkpoint_sha256": file_digest(trained.checkpoint_path, 64)}


def export_model(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> Path:
    """Write the run's model as ``fmt`` (onnx | torchscript) to ``out`` (default: inside the run); atomic."""
    import torch

    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: use {' or '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (the exporter needs it; say so before the slow part)
        except ImportError:
            raise InputError("--format onnx needs the onnx package: pip install 'liverseg[onnx]'") from None
    trained = load_trained_model(run_dir, "cpu")
    if trained.cfg.data.modality != "ct":
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


# ----------------------------------------------------------------------------- loading

def is_current_export(trained: TrainedModel, run_dir: Path) -> bool:
    """Whether an exported ONNX model was written from ``run_dir``'s current checkpoint."""
    recorded = trained.meta.get("liverseg.checkpoint_sha256")
    return bool(recorded) and recorded == file_digest(find_checkpoint(Path(run_dir)), 64)


class OnnxNetwork:
    """Calls an ONNX Runtime session like liverseg's models: (N, C, *any) array -> logits (N, K, *same).

    Inputs are zero-padded at the far end of each axis to multiples of ``divisor`` and the logits
    cropped back, as ``models.SizeAdapter`` does (not imported here: ONNX prediction needs no MONAI).
    """

    def __init__(self, session, divisor: int) -> None:
        self.session = session
        self.divisor = divisor
        self.input_name = session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        spatial = tuple(batch.shape[2:])
        padding = [(0, 0), (0, 0)] + [(0, (-s) % self.divisor) for s in spatial]
        array = np.pad(batch, padding) if any(p for _, p in padding) else np.ascontiguousarray(batch)
        logits = self.session.run(None, {self.input_name: array})[0]
        return logits[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


def _config_from_text(text: str, path: Path) -> ExperimentConfig:
    try:
        return config_from_yaml_text(text)
    except (ConfigError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: embedded liverseg config is invalid ({exc})") from None


def load_exported(path: str | Path, device: Any = None, threads: int | None = None) -> TrainedModel:
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, device, threads)
    import torch

    device = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
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
    from .models import SizeAdapter

    module.eval()
    model = SizeAdapter(module, int(meta.get("size_divisor", cfg.model.size_divisor))).eval()
    model_id = f"{path.name} sha256:{file_digest(path)} (from {meta.get('model_id', '?')})"
    return TrainedModel(cfg, model, path, int(meta.get("epoch", 0)), "torchscript", model_id, meta, device)


def _onnx_providers(device: Any, available: list[str]) -> tuple[list, str]:
    """ONNX Runtime execution providers for a device name (auto | cpu | cuda | cuda:N), and the device."""
    name = str(device if device is not None else "auto")
    has_cuda = "CUDAExecutionProvider" in available
    if name == "cpu" or (name == "auto" and not has_cuda):
        return ["CPUExecutionProvider"], "cpu"
    if name == "auto":
        name = "cuda"
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise InputError(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N")
    if not has_cuda:
        raise InputError(f"--device {name}: this onnxruntime has no CUDA provider (providers: "
                         f"{', '.join(available)}); pip install onnxruntime-gpu, or use --device cpu, or "
                         "predict from the run folder with --backend torch")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"], name


def _load_onnx(path: Path, device: Any, threads: int | None) -> TrainedModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError(f"{path}: ONNX models need onnxruntime: pip install 'liverseg[onnx]'") from None
    providers, device_name = _onnx_providers(device, ort.get_available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default, one per physical core
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InputError(f"{path}: cannot be loaded by ONNX Runtime ({str(exc).splitlines()[0][:160]})") from None
    props = session.get_modelmeta().custom_metadata_map
    if "liverseg.config" not in props:
        raise InputError(f"{path}: ONNX file without a liverseg config; export it with `liverseg export`")
    cfg = _config_from_text(props["liverseg.config"], path)
    divisor = int(props.get("liverseg.size_divisor", cfg.model.size_divisor))
    model_id = f"{path.name} sha256:{file_digest(path)} (from {props.get('liverseg.model_id', '?')})"
    meta = {k: v for k, v in props.items() if k != "liverseg.config"}
    return TrainedModel(cfg, OnnxNetwork(session, divisor), path, int(props.get("liverseg.epoch", 0)), "onnx",
                        model_id, meta, device_name)


__all__ = ["export_model", "load_exported", "is_current_export", "OnnxNetwork", "example_input", "FORMATS"]
