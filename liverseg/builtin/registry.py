"""The built-in models' registry: each one's provenance, licence, citation, input and measured figures,
and its weights (package data, sha256-checked on load)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

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
        from ..models.kul_resunet import KulResUNet  # heavy (torch): the ONNX Runtime path never loads it

        module = KulResUNet(3, 1, len(model.network_labels), model.channels)
    else:
        from ..models.kul_unet import KulUNet  # heavy (torch): the ONNX Runtime path never loads it

        module = KulUNet(3, 1, len(model.network_labels), model.channels, model.factor)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in load_weights(name).items()})
    return module.eval()


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


__all__ = ["WEIGHTS", "BuiltinModel", "BUILTIN_MODELS", "DEFAULT_MODEL", "LESION_FIGURES", "is_builtin", "get",
           "provenance", "load_weights", "torch_module", "describe"]
