"""Built-in pretrained models: shipped inside the package, run with no training and no network access.

``BUILTIN_MODELS`` names each one with its provenance, licence, citation, input and measured figures;
``load_builtin(name)`` returns a ``TrainedModel`` that ``liverseg predict`` uses like a run folder.
The weights are package data (``weights/*.npz``, converted by ``scripts/convert_kul_weights.py``,
with ``weights/*.json`` recording the sha256 of the original files and of the converted one, checked
on load) under their own licence (``LICENSE-Apache-2.0.txt``; attribution, changes and citations in
``NOTICE.md``). ``samples/`` holds the demo CT (TotalSegmentator's example, Apache-2.0).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig, ExperimentConfig, InferConfig, ModelConfig, PreprocessConfig
from ..errors import InputError
from ..engine.loaded import TrainedModel, nvidia_gpu_present, resolve_device

WEIGHTS = Path(str(resources.files("liverseg") / "builtin" / "weights"))


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    title: str
    weights: str  # file in WEIGHTS
    factor: int  # KulUNet sub-sampling factor
    channels: tuple[int, ...]
    labels: tuple[str, ...]
    modality: str
    spacing_mm: tuple[float, float, float]
    source: str
    licence: str
    citation: str
    figures: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    network: str = "kul_unet"  # the registry name of the network the weights belong to
    first_stage: str | None = None  # a built-in model run first, whose mask this one works inside
    stage_labels: tuple[str, ...] | None = None  # the network's own labels, where they differ from ``labels``

    @property
    def network_labels(self) -> tuple[str, ...]:
        """What the network itself outputs (the two-stage model's lesion network: background, lesion)."""
        return self.stage_labels or self.labels


# measured with scripts/bench_predict.py --builtin and check_kul_lesion_port.py (see README)
LESION_FIGURES = (
    "lesion Dice 0.719 on LiTS case 117 (expert labels) with the expert liver as the gate, 35 of 70 lesions "
    "found, 2 false positives (scripts/lesion_check.py; one case, not a benchmark)",
    "64 s end to end and 1.33 GB peak memory on a 512x512x119 DICOM series with 2 CPU threads (18 lesion "
    "tiles; scripts/bench_predict.py --builtin --builtin-model liver_lesions)",
    "faithful to the original network: max probability difference 7.5e-5 against an independent Keras "
    "rebuild on the original weights (scripts/check_kul_lesion_port.py)",
)

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "liver": BuiltinModel(
        name="liver",
        title="Whole liver in CT (KU Leuven 3D U-Net, 3 mm)",
        weights="kul_liver_3mm.npz",
        factor=3,
        channels=(20, 40, 80, 160),
        labels=("background", "liver"),
        modality="CT (Hounsfield units); trained on CT and MR, only CT is supported here",
        spacing_mm=(3.0, 3.0, 3.0),
        source="pyliverlesionseg 0.3 (PyPI), KU Leuven: trained_models/model_unet_ct_mr_liv_seg_resize_1.5mm_"
               "med_3_resize_3mm_20201011_dice_loss_val_binary_dice_mean.hdf5, converted to PyTorch/ONNX by "
               "scripts/convert_kul_weights.py",
        licence="Apache-2.0 (liverseg/builtin/LICENSE-Apache-2.0.txt; attribution in liverseg/builtin/NOTICE.md)",
        citation="Tang X, Jafargholi Rangraz E, Coudyzer W, et al. Whole liver segmentation based on deep "
                 "learning and manual adjustment for clinical use in SIRT. Eur J Nucl Med Mol Imaging 47, "
                 "2742-2752 (2020). doi:10.1007/s00259-020-04800-3",
        figures=("liver Dice 0.936 against the model-made (TotalSegmentator v1) liver mask of the TotalSegmentator "
                 "example CT (the demo CT), 0.940 on its top 200 mm written as a 512x512x119 DICOM series",
                 "8.6 s end to end and 1.0 GB peak memory on that 512x512x119 series with 2 CPU threads (one pass; "
                 "12.6 s for a scan that starts inside the liver); scripts/bench_predict.py --builtin",
                 "faithful to the original network: max probability difference 1.4e-5 against an independent "
                 "Keras rebuild on the original weights (scripts/check_kul_port.py)"),
        notes=("not validated for clinical use",),
    ),
    "liver_lesions": BuiltinModel(
        name="liver_lesions",
        title="Liver and liver lesions in CT (the liver model, then the KU Leuven lesion U-Net inside the liver, "
              "1 x 1 x 3 mm)",
        weights="kul_lesion_1x1x3mm.npz",
        factor=2,
        channels=(20, 40, 80, 160),
        labels=("background", "liver", "liver lesion"),
        modality="CT (Hounsfield units); trained on CT and MR, only CT is supported here",
        spacing_mm=(1.0, 1.0, 3.0),
        source="pyliverlesionseg 0.3 (PyPI), KU Leuven: trained_models/model_unet_ct_mr_lesion_seg_resize_1mm_1mm_"
               "3mm_20220207_dice_loss_val_binary_dice_mean.hdf5 (after the built-in 'liver' model), converted to "
               "PyTorch by scripts/convert_kul_weights.py",
        licence="Apache-2.0 (liverseg/builtin/LICENSE-Apache-2.0.txt; attribution in liverseg/builtin/NOTICE.md)",
        citation="pyliverlesionseg 0.3, KU Leuven (Tang X, Jafargholi Rangraz E, Coudyzer W, et al.), "
                 "https://pypi.org/project/pyliverlesionseg/0.3/; the liver stage: Eur J Nucl Med Mol Imaging 47, "
                 "2742-2752 (2020). doi:10.1007/s00259-020-04800-3",
        figures=LESION_FIGURES,
        notes=("not validated for clinical use",
               "lesions are searched only inside the liver found by the first stage (dilated by about 2 mm "
               "in-plane, 6 mm along z): a tumour that the liver mask leaves out is missed"),
        network="kul_resunet",
        first_stage="liver",
        stage_labels=("background", "liver lesion"),
    ),
}
DEFAULT_MODEL = "liver"


def is_builtin(name: str | Path) -> bool:
    return isinstance(name, str) and name in BUILTIN_MODELS


def get(name: str) -> BuiltinModel:
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise InputError(f"--model {name!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}), nor a run "
                         "folder or exported model file") from None


def provenance(model: BuiltinModel) -> dict[str, Any]:
    return json.loads((WEIGHTS / model.weights).with_suffix(".json").read_text())


@lru_cache(maxsize=4)
def load_weights(name: str) -> dict[str, np.ndarray]:
    """The model's float32 arrays, after checking the file's sha256 against its provenance record."""
    model = get(name)
    path = WEIGHTS / model.weights
    if not path.is_file():
        raise InputError(f"{path}: the built-in model's weight file is missing; reinstall liverseg")
    data = path.read_bytes()
    expected = provenance(model)["weights_sha256"]
    if hashlib.sha256(data).hexdigest() != expected:
        raise InputError(f"{path}: sha256 does not match the recorded {expected[:12]}...; the file is damaged, "
                         "reinstall liverseg")
    import io

    with np.load(io.BytesIO(data)) as archive:
        return {key: archive[key] for key in archive.files}


def torch_module(name: str):
    """The built-in's network (``KulUNet`` or ``KulResUNet``) with its weights (PyTorch; for fine-tuning, CUDA
    and the full computation). For a two-stage model: its own (last) stage's network."""
    import torch

    model = get(name)
    if model.network == "kul_resunet":
        from ..models.kul_resunet import KulResUNet

        module = KulResUNet(3, 1, len(model.network_labels), model.channels)
    else:
        from ..models.kul_unet import KulUNet

        module = KulUNet(3, 1, len(model.network_labels), model.channels, model.factor)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in load_weights(name).items()})
    return module.eval()


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
        from .kul_liver import segment

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
            from .kul_lesion import LESION_LABEL, segment_lesions

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
        from .kul_lesion import StreamedTileEngine, TorchTileEngine

        if backend == "torch" or wants_cuda:
            return TorchTileEngine(torch_module(name), resolve_device(device if device_name != "auto" else None))
        if device_name not in ("auto", "cpu"):
            raise InputError(f"--device {device_name}: use --backend torch for CUDA")
        return StreamedTileEngine(torch_module(name))
    if backend == "torch" or (wants_cuda and backend != "onnx"):
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        from .engines import TorchEngine

        return TorchEngine(torch_module(name), resolve_device(device if device_name != "auto" else None))
    if device_name not in ("auto", "cpu"):
        raise InputError(f"--device {device_name}: the built-in model's ONNX Runtime path runs on the CPU; use "
                         "--backend torch for CUDA")
    from .engines import StagedEngine

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


def describe(name: str) -> str:
    model = get(name)
    record = provenance(model)
    lines = [f"{model.name}: {model.title}",
             f"  input      : {model.modality}, resampled to {' x '.join(f'{s:g}' for s in model.spacing_mm)} mm",
             f"  labels     : {', '.join(model.labels[1:])}",
             f"  source     : {model.source}",
             f"  licence    : {model.licence}",
             f"  citation   : {model.citation}",
             f"  weights    : {model.weights} ({record['parameters']:,} parameters, sha256 {record['weights_sha256'][:16]}...; "
             f"original {Path(record['member']).name} sha256 {record['member_sha256'][:16]}...)"]
    lines += [f"  measured   : {f}" for f in model.figures]
    lines += [f"  note       : {n}" for n in model.notes]
    return "\n".join(lines)


__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "BuiltinModel", "is_builtin", "get", "load_weights", "torch_module",
           "load_builtin", "describe", "make_engine", "provenance", "stages"]
