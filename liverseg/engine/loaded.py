"""The loaded-model type every model source returns (``TrainedModel``), ensembles, and device choice.

``sources.load_model`` turns a run folder, a file written by ``liverseg export`` or a built-in model's
name into a ``TrainedModel``; ``liverseg.builtin`` builds its own. The network inside is a torch
module, an ONNX Runtime network (``sources.OnnxNetwork``), a built-in predictor (which brings its own
``segment_volume``) or an ``Ensemble``; ``predict`` segments a CT volume with any of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import ExperimentConfig
from ..datasets.download import file_hash
from ..errors import InputError
from ..io.volume import Volume
from .volume import predict_volume, predict_volume_probabilities

if TYPE_CHECKING:
    import torch


@dataclass
class TrainedModel:
    """A model ready to predict: its config, the network (torch module or exported runtime), an id."""

    cfg: ExperimentConfig
    model: Any  # a torch module (checkpoint, TorchScript), an OnnxNetwork, a built-in predictor or an Ensemble
    checkpoint_path: Path
    epoch: int
    backend: str = "torch"  # torch | torchscript | onnx
    model_id: str = ""
    meta: dict = field(default_factory=dict)
    device: Any = "cpu"  # torch.device for torch backends; "cpu" or "cuda" for ONNX Runtime


@dataclass
class Ensemble:
    """Several models (same label list) whose input-grid probabilities are averaged before the argmax."""

    members: list  # of TrainedModel


def predict(trained: TrainedModel, volume: Volume, *, threads: int | None = None, progress: bool = False,
            memory_gb: float | None = None, probabilities: bool = False,
            liver_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, list, dict]:
    """(labels, probabilities, warnings, details) of one CT volume, whatever ``trained``'s source: the
    one way a loaded model predicts (``batch`` and ``liverseg.api`` call it).

    ``labels``: uint8 on exactly the volume's grid, post-processed. ``probabilities``: uint8
    (X, Y, Z, K) on the volume's grid when ``probabilities`` is asked for, else None. A built-in
    model brings its own road (``segment_volume``, which takes ``threads`` and ``liver_mask``); an
    ``Ensemble`` averages its members' probabilities (``volume.predict_volume_probabilities``); any
    other network runs ``volume.predict_volume`` (``progress``, ``memory_gb``).
    """
    segment_volume = getattr(trained.model, "segment_volume", None)
    if segment_volume is not None:
        if probabilities:
            labels, stored, warnings, details = trained.model.segment_volume_with_probabilities(
                volume, threads=threads)
            return labels, stored, warnings, details
        mask = {} if liver_mask is None else {"liver_mask": liver_mask}
        labels, warnings, details = segment_volume(volume, threads=threads, **mask)
        return labels, None, warnings, details
    if liver_mask is not None:
        raise InputError(f"liver_mask: only the two-stage built-in model (liver_lesions) takes one, not "
                         f"{trained.model_id or trained.checkpoint_path}")
    if isinstance(trained.model, Ensemble) or probabilities:
        members = trained.model.members if isinstance(trained.model, Ensemble) else [trained]
        labels, stored = predict_volume_probabilities(members, volume, progress=progress, memory_gb=memory_gb,
                                                      keep_probabilities=probabilities)
        return labels, stored, [], {}
    labels = predict_volume(trained.model, volume, trained.cfg, trained.device, progress=progress, memory_gb=memory_gb)
    return labels, None, [], {}


def file_digest(path: Path, length: int = 12) -> str:
    """The first ``length`` hex digits of the file's sha256 (model ids, export provenance)."""
    return file_hash(path, "sha256")[:length]


def nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA driver loaded (checked without importing torch)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def resolve_device(name: Any) -> "torch.device":
    """A torch device from a name (``auto``: CUDA when available, else CPU) or a device."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (torch "
                         f"{torch.__version__}); use --device cpu")
    return device


__all__ = ["TrainedModel", "Ensemble", "predict", "file_digest", "nvidia_gpu_present", "resolve_device"]
