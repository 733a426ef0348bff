"""CT volumes (``data.modality: ct``): DICOM series or NIfTI/NRRD/MHA files in Hounsfield units, resampled
to ``preprocess.spacing_mm``; 3D models, or 2D ones on axial slices (``model.slices_2d`` neighbours as
channels). The data pipeline is ``data.py`` and ``transforms.py``; validation's prediction is
``engine.tiling``'s; an input's prediction is ``ct_case.py`` (read, segment with ``engine``, write)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import ExperimentConfig
from .base import Modality, ModalityTraits
from .ct_case import SEGMENTATION, read_ct_case, segment_ct_case, write_ct_case


class CTModality(Modality):
    traits = ModalityTraits(name="ct", inputs="CT", volume_inputs=True, auto_plan=True, exportable=True,
                            label_map=SEGMENTATION)

    def in_channels(self, cfg: ExperimentConfig) -> int:
        from ..models import input_channels  # heavy (torch, MONAI): kept out of the exported-model path

        return input_channels(cfg.model)

    def load_case(self, item: dict, cfg: ExperimentConfig) -> dict:
        from .transforms import LoadCased  # heavy (torch, MONAI): kept out of the exported-model path

        return LoadCased(cfg)(item)

    def train_loader(self, cfg: ExperimentConfig, items: list[dict], workers: int, seed: int, *, rank: int = 0,
                     world: int = 1, cache_dir: str | Path | None = None, ram_budget_gb: float | None = None) -> Any:
        from .data import volume_train_loader  # heavy (torch, MONAI): kept out of the exported-model path

        return volume_train_loader(cfg, items, workers, seed, rank=rank, world=world, cache_dir=cache_dir,
                                   ram_budget_gb=ram_budget_gb)

    def validation_cases(self, cfg: ExperimentConfig, items: list[dict]) -> Any:
        from .data import volume_validation_cases  # heavy (torch, MONAI): kept out of the exported-model path

        return volume_validation_cases(cfg, items)

    def predict_case(self, model: Any, case: dict, cfg: ExperimentConfig, device: Any) -> np.ndarray:
        from ..engine.tiling import network_probabilities  # heavy (torch): kept out of the exported-model path

        return network_probabilities(model, case["image"][0], cfg, device)

    def read_input(self, bundle: Any, case: Any, options: Any) -> Any:
        """(volume, seconds): ``ct_case.read_ct_case`` (format-agnostic checks, blank volumes refused)."""
        return read_ct_case(case, options)

    def segment(self, bundle: Any, case: Any, read: Any, options: Any, progress: bool = False) -> Any:
        return segment_ct_case(bundle, read, options, progress)

    def write_outputs(self, bundle: Any, case: Any, segmented: Any, case_dir: Path, options: Any) -> list[Path]:
        """The label map on the input's grid, Slicer files, DICOM SEG, report (``ct_case.write_ct_case``)."""
        return write_ct_case(bundle, case, case_dir, options, segmented)


CT = CTModality()

__all__ = ["CTModality", "CT"]
