"""Model sources behind one loader: a run folder, a file written by ``liverseg export`` (ONNX or
TorchScript, the config embedded) or a built-in model's name -> one ``loaded.TrainedModel``.

``load_model`` picks the source; ``load_ensemble`` loads several into one ``Ensemble``. Run folders
are read through ``liverseg.run_folder`` (file names, checkpoint, export lookup); an ONNX export runs
on ONNX Runtime without importing PyTorch or MONAI (``OnnxNetwork``).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from .. import builtin
from ..config import ExperimentConfig, config_from_yaml_text
from ..errors import ConfigError, InputError
from ..run_folder import current_onnx_export, find_checkpoint, find_exported, is_run_folder, read_checkpoint
from ..engine.loaded import Ensemble, TrainedModel, file_digest, nvidia_gpu_present, resolve_device
from ..modalities import modality_for

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")


# ----------------------------------------------------------------------------- one loader

def load_model(path: str | Path | None, device: Any = None, threads: int | None = None,
               backend: str = "auto") -> TrainedModel:
    """A run folder, a file (or folder) written by ``liverseg export``, or the name of a built-in model
    (``None``: the default built-in liver model), ready on ``device``.

    ``backend`` applies to run folders: ``torch`` rebuilds the network from the checkpoint; ``onnx``
    runs the folder's ONNX export (``RUN.onnx``, written by ``liverseg train`` at the end of a run, or by
    ``liverseg export``) with ONNX Runtime; ``auto`` (the default) takes that export when it was
    exported from the folder's current checkpoint, onnxruntime is installed and the prediction runs
    on the CPU (``--device cpu``, or ``auto`` on a machine without an NVIDIA GPU), the checkpoint
    otherwise. Measured on 2 CPU threads (``scripts/bench_predict.py``): ONNX Runtime is about twice
    as fast per tile and starts 2.5 s sooner, since it needs no PyTorch.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend!r}: use {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1")
    if path is None:
        path = builtin.DEFAULT_MODEL
    if not Path(path).exists():
        if builtin.is_builtin(str(path)):
            return builtin.load_builtin(str(path), device, threads, backend)
        raise InputError(f"--model {path}: no such run folder or model file, and not a built-in model "
                         f"(built-in: {', '.join(builtin.BUILTIN_MODELS)}; see `liverseg models`)")
    path = Path(path)
    if path.is_dir() and not is_run_folder(path):
        exported = find_exported(path)
        if exported is not None:
            path = exported
    if path.is_file():
        return load_exported(path, device, threads)
    if backend != "torch" and path.is_dir():
        onnx_file, why_not = current_onnx_export(path)
        name = str(device or "auto")
        on_cpu = name == "cpu" or (name == "auto" and not nvidia_gpu_present())
        if onnx_file is not None and (backend == "onnx" or on_cpu):
            trained = load_exported(onnx_file, device, threads)
            if is_current_export(trained, path):
                log.debug("%s: predicting with %s (ONNX Runtime)", path, onnx_file.name)
                return trained
            why_not = f"its {onnx_file.name} was exported from another checkpoint than {find_checkpoint(path).name}"
            log.info("%s: %s; predicting with PyTorch (re-export: liverseg export %s)", path, why_not, path)
        if backend == "onnx":
            raise InputError(f"{path}: --backend onnx, but {why_not}; run `liverseg export {path} --format onnx` "
                             "or use --backend torch")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return load_trained_model(path, device)


def load_trained_model(run_dir: str | Path, device: Any = "cpu") -> TrainedModel:
    """Rebuild the model from a run folder alone (config + checkpoint)."""
    from ..models import build_model  # heavy (MONAI): imported only for checkpoints

    device = resolve_device(device)
    checkpoint_path, checkpoint, cfg = read_checkpoint(run_dir)
    model = build_model(cfg.model, in_channels=modality_for(cfg).in_channels(cfg), out_channels=len(cfg.data.labels))
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    epoch = int(checkpoint.get("epoch", 0))
    model_id = f"{checkpoint_path.parent.name}/{checkpoint_path.name} epoch {epoch} sha256:{file_digest(checkpoint_path)}"
    return TrainedModel(cfg, model, checkpoint_path, epoch, "torch", model_id, device=device)


def load_ensemble(paths: Sequence[str | Path | None], device: Any = None, threads: int | None = None,
                  backend: str = "auto") -> "TrainedModel":
    """One ``TrainedModel`` whose ``model`` is an ``Ensemble`` of the models at ``paths`` (run folders,
    exported files or built-in models with the same label list)."""
    members = []
    for path in paths:
        trained = load_model(path, device, threads, backend)
        if getattr(trained.model, "segment_volume", None) is not None and \
                getattr(trained.model, "segment_volume_with_probabilities", None) is None:
            raise InputError(f"--model {path}: a built-in model gives labels, not probabilities, so it cannot be "
                             f"an ensemble member; use run folders or exported models "
                             f"(built-in: {', '.join(builtin.BUILTIN_MODELS)})")
        if not modality_for(trained.cfg).traits.volume_inputs:
            raise InputError(f"--model {path}: a {trained.cfg.data.modality} model; ensembles are for CT models")
        first_path, first = (paths[0], members[0]) if members else (path, trained)
        if tuple(trained.cfg.data.labels) != tuple(first.cfg.data.labels):
            raise InputError(f"--model {first_path} (labels {', '.join(first.cfg.data.labels)}) and --model {path} "
                             f"(labels {', '.join(trained.cfg.data.labels)}) have different labels; ensemble "
                             "members must share one label list")
        members.append(trained)
    first = members[0]
    ids = [m.model_id or str(m.checkpoint_path) for m in members]
    return TrainedModel(first.cfg, Ensemble(members), first.checkpoint_path, first.epoch,
                        "ensemble " + "+".join(m.backend for m in members), "ensemble of " + " + ".join(ids),
                        meta={"members": ids}, device=first.device)


# ----------------------------------------------------------------------------- files written by liverseg export

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
    from ..models import SizeAdapter  # heavy (torch, MONAI): TorchScript files only

    module.eval()
    model = SizeAdapter(module, int(meta.get("size_divisor", cfg.model.size_divisor))).eval()
    model_id = f"{path.name} sha256:{file_digest(path)} (from {meta.get('model_id', '?')})"
    return TrainedModel(cfg, model, path, int(meta.get("epoch", 0)), "torchscript", model_id, meta, device)


def onnx_providers(device: Any, available: list[str]) -> tuple[list, str]:
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
    providers, device_name = onnx_providers(device, ort.get_available_providers())
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


__all__ = ["BACKENDS", "load_model", "load_trained_model", "load_ensemble", "load_exported", "is_current_export",
           "OnnxNetwork", "onnx_providers"]
