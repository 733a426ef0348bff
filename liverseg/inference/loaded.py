"""The loaded-model type every model source returns (``TrainedModel``), ensembles, and device choice.

``sources.load_model`` turns a run folder, a file written by ``liverseg export`` or a built-in model's
name into a ``TrainedModel``; ``liverseg.builtin`` builds its own. The network inside is a torch
module, an ONNX Runtime network (``sources.OnnxNetwork``), a built-in predictor (which brings its own
``segment_volume``) or an ``Ensemble``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ExperimentConfig
from ..download import file_hash
from ..errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass
class TrainedModel:
    """A model ready to predict: its config, the network (torch module or exported runtime), an id."""

    cfg: ExperimentConfig
    model: Any  # torch.nn.Module for checkpoints and TorchScript; an ONNX Runtime network, a built-in
    #             predictor or an Ensemble otherwise
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


__all__ = ["TrainedModel", "Ensemble", "file_digest", "nvidia_gpu_present", "resolve_device"]
