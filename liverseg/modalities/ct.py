"""CT volumes (``data.modality: ct``): DICOM series or NIfTI/NRRD/MHA files in Hounsfield units, resampled
to ``preprocess.spacing_mm``; 3D models, or 2D ones on axial slices (``model.slices_2d`` neighbours as
channels). The data pipeline is ``data.py`` and ``transforms.py``; prediction is ``engine.tiling``'s."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import MODALITY_SPATIAL_DIMS, ExperimentConfig
from .base import Modality, ModalityTraits


class CTModality(Modality):
    traits = ModalityTraits(name="ct", inputs="CT", spatial_dims=MODALITY_SPATIAL_DIMS["ct"], volume_inputs=True,
                            auto_plan=True, exportable=True)

    def in_channels(self, cfg: ExperimentConfig) -> int:
        from ..models import input_channels  # keeps torch and MONAI out of the exported-model path

        return input_channels(cfg.model)

    def load_case(self, item: dict, cfg: ExperimentConfig) -> dict:
        from .transforms import LoadCased  # keeps torch and MONAI out of the exported-model path

        return LoadCased(cfg)(item)

    def train_loader(self, cfg: ExperimentConfig, items: list[dict], workers: int, seed: int, *, rank: int = 0,
                     world: int = 1, cache_dir: str | Path | None = None, ram_budget_gb: float | None = None) -> Any:
        from .data import volume_train_loader  # keeps torch and MONAI out of the exported-model path

        return volume_train_loader(cfg, items, workers, seed, rank=rank, world=world, cache_dir=cache_dir,
                                   ram_budget_gb=ram_budget_gb)

    def validation_cases(self, cfg: ExperimentConfig, items: list[dict]) -> Any:
        from .data import volume_validation_cases  # keeps torch and MONAI out of the exported-model path

        return volume_validation_cases(cfg, items)

    def predict_case(self, model: Any, case: dict, cfg: ExperimentConfig, device: Any) -> np.ndarray:
        from ..engine.tiling import network_probabilities  # keeps torch out of the exported-model path

        return network_probabilities(model, case["image"][0], cfg, device)


CT = CTModality()

__all__ = ["CTModality", "CT"]
