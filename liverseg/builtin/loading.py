"""A built-in model ready to segment: one engine per stage (``make_engine``) behind ``BuiltinPredictor``,
wrapped in the ``TrainedModel`` that ``inference.batch`` uses like a run folder (``load_builtin``)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..config import DataConfig, ExperimentConfig, InferConfig, ModelConfig, PreprocessConfig
from ..errors import InputError
from ..engine.loaded import TrainedModel, nvidia_gpu_present, resolve_device
from .engines import StagedEngine, TorchEngine
from .kul_lesion import LESION_LABEL, StreamedTileEngine, TorchTileEngine, segment_lesions
from .kul_liver import segment
from .registry import DEFAULT_MODEL, WEIGHTS, get, load_weights, provenance, torch_module


class BuiltinPredictor:
    """``segment_volume(volume) -> (labels, warnings, details)`` for ``inference.batch`` (and
    ``segment_volume_with_probabilities`` for ``--save-probabilities``).

    ``engines``: one per stage, the first stage's first (the liver, then the lesions inside it)."""

    def __init__(self, name: str, engines: list) -> None:
        self.name = name
        self.engines = engines

    def segment_volume(self, volume, threads: int | None = None, liver_mask: np.ndarray | None = None):
        """``liver_mask`` (two-stage models): a liver on the volume's grid (any nonzero voxel) that replaces
        the first stage, e.g. a radiologist's contour; the lesions are then searched inside it."""
        labels, _, warnings, details = self._segment(volume, threads, liver_mask, False)
        return labels, warnings, details

    def segment_volume_with_probabilities(self, volume, threads: int | None = None,
                                          liver_mask: np.ndarray | None = None):
        """(labels, probabilities, warnings, details): ``probabilities`` uint8 ``round(255 p)`` of shape
        (X, Y, Z, labels) on the volume's grid. Liver model: (1 - p_liver, p_liver). Two stages, with the
        lesion network's p_lesion (0 outside the dilated liver): (1 - p_lesion) (1 - p_liver),
        (1 - p_lesion) p_liver, p_lesion. A given liver mask counts as p_liver 1 inside it. The label map
        is post-processed (largest liver component; an empty map when no liver is found), the
        probabilities are the networks' (emptied too when no liver is found)."""
        return self._segment(volume, threads, liver_mask, True)

    def _segment(self, volume, threads, liver_mask, keep: bool):
        if liver_mask is not None:
            if len(self.engines) < 2:
                raise InputError(f"a liver mask is for a two-stage built-in model (liver_lesions), not {self.name}")
            if tuple(liver_mask.shape) != tuple(volume.shape):
                raise InputError(f"liver mask of shape {tuple(liver_mask.shape)} does not fit the CT's "
                                 f"{tuple(volume.shape)}: it must be on the CT's own grid")
            labels = (np.asarray(liver_mask) > 0).astype(np.uint8)
            p_liver = labels * np.uint8(255) if keep else None
            warnings, details = [], {"liver": "given mask", "liver_ml": round(float(labels.sum()) *
                                                                                volume.voxel_volume_ml, 1)}
        else:
            result = segment(volume, self.engines[0], threads=threads, keep_probability=keep)
            labels, warnings, details, p_liver = result.labels, result.warnings, result.details, result.probability
        p_lesion = None
        if len(self.engines) > 1:
            release_free_memory()  # the liver stage's freed maps, before the lesion stage allocates its own
            lesions = segment_lesions(volume, labels, self.engines[1], keep_probability=keep)
            labels[lesions.mask] = LESION_LABEL
            warnings += lesions.warnings
            details.update(lesions.details)
            p_lesion = lesions.probability
        if not keep:
            return labels, None, warnings, details
        return labels, combine_probabilities(p_liver, p_lesion), warnings, details


def combine_probabilities(p_liver: np.ndarray, p_lesion: np.ndarray | None) -> np.ndarray:
    """uint8 (X, Y, Z, K) from uint8 stage probabilities (see ``segment_volume_with_probabilities``);
    the channels sum to 255 up to rounding."""
    liver = p_liver.astype(np.float32) / 255.0
    if p_lesion is None:
        channels = [1.0 - liver, liver]
    else:
        lesion = p_lesion.astype(np.float32) / 255.0
        rest = 1.0 - lesion
        channels = [rest * (1.0 - liver), rest * liver, lesion]
    return np.stack([np.rint(c * 255.0).astype(np.uint8) for c in channels], axis=-1)


def release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it for reuse otherwise, and peak RSS is
    what the user sees); nothing where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, looked up once (``ctypes.util.find_library`` runs ldconfig: not per case)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def stages(name: str) -> list[str]:
    """The built-in models a prediction with ``name`` runs, first stage first."""
    model = get(name)
    return (stages(model.first_stage) if model.first_stage else []) + [name]


def make_engine(name: str, device: Any = None, threads: int | None = None, backend: str = "auto"):
    """The engine of one built-in network. The liver model: ONNX Runtime (staged) on a CPU, PyTorch (whole
    patch) on CUDA or when ``backend='torch'``. The lesion model: PyTorch, tiles in slabs on a CPU
    (``resunet_stream``), whole tiles on CUDA or when ``backend='torch'``.

    ``device`` auto: CUDA when an NVIDIA driver is loaded and PyTorch can use it, the CPU otherwise."""
    model = get(name)
    device_name = str(device if device is not None else "auto")
    if backend not in ("auto", "torch", "onnx"):
        raise InputError(f"--backend {backend!r}: use auto, torch or onnx")
    wants_cuda = device_name.startswith("cuda")
    if device_name == "auto" and backend == "auto":
        # the driver check is free; importing torch to ask it costs seconds, so only where there is a driver
        wants_cuda = nvidia_gpu_present() and _torch_sees_cuda()
    if model.network == "kul_resunet":
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        if backend == "torch" or wants_cuda:
            return TorchTileEngine(torch_module(name), resolve_device(device if device_name != "auto" else None))
        if device_name not in ("auto", "cpu"):
            raise InputError(f"--device {device_name}: use --backend torch for CUDA")
        return StreamedTileEngine(torch_module(name))
    if backend == "torch" or (wants_cuda and backend != "onnx"):
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        return TorchEngine(torch_module(name), resolve_device(device if device_name != "auto" else None))
    if device_name not in ("auto", "cpu"):
        raise InputError(f"--device {device_name}: the built-in model's ONNX Runtime path runs on the CPU; use "
                         "--backend torch for CUDA")
    return StagedEngine(load_weights(name), model.factor, threads)


def _torch_sees_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def load_builtin(name: str = DEFAULT_MODEL, device: Any = None, threads: int | None = None, backend: str = "auto"):
    """A ``TrainedModel`` for ``inference.batch``: the built-in model ready to segment."""
    model = get(name)
    engines = [make_engine(stage, device, threads, backend) for stage in stages(name)]
    engine_names = " + ".join(e.name for e in engines)
    cfg = ExperimentConfig(
        data=DataConfig(labels=model.labels),
        preprocess=PreprocessConfig(spacing_mm=model.spacing_mm, hu_window=(-200.0, 200.0)),
        model=ModelConfig(name=model.network, channels=model.channels,
                          strides=(model.factor,) * (len(model.channels) - 1), norm="patch"),
        infer=InferConfig(roi_size=(180, 172, 86) if model.network == "kul_resunet" else (189, 162, 162),
                          largest_component=("liver",), coarse_to_fine=False),
    )
    shas = ", ".join(f"{stage} sha256:{provenance(get(stage))['weights_sha256'][:12]}" for stage in stages(name))
    model_id = f"{name} (built-in: {model.title}; weights {shas})"
    return TrainedModel(cfg, BuiltinPredictor(name, engines), WEIGHTS / model.weights, 0, f"builtin {engine_names}",
                        model_id, {"builtin": name, "threads": threads}, str(device or "auto"))


__all__ = ["BuiltinPredictor", "combine_probabilities", "release_free_memory", "stages", "make_engine",
           "load_builtin"]
