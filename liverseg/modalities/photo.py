"""2D photographs (``data.modality: photo``): retinal fundus images, lesion photographs, any RGB/grey
image with a mask, through the same ``liverseg train / predict / evaluate`` as CT. How a photograph
becomes the network's input is the config's ``photo`` section; loading and training patches are
``photo_data.py``, prediction ``photo_predict.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import PHOTO_CHANNELS, ExperimentConfig
from .base import Modality, ModalityTraits


class PhotoModality(Modality):
    traits = ModalityTraits(name="photo", inputs="PHOTO", volume_inputs=False, auto_plan=False, exportable=False)

    def in_channels(self, cfg: ExperimentConfig) -> int:
        return PHOTO_CHANNELS[cfg.photo.color]

    def load_case(self, item: dict, cfg: ExperimentConfig) -> dict:
        from .photo_data import load_photo_case  # heavy (torch): kept out of the exported-model path

        return load_photo_case(item, cfg)

    def train_loader(self, cfg: ExperimentConfig, items: list[dict], workers: int, seed: int, *, rank: int = 0,
                     world: int = 1, cache_dir: str | Path | None = None, ram_budget_gb: float | None = None) -> Any:
        from .photo_data import photo_train_loader  # heavy (torch): kept out of the exported-model path

        return photo_train_loader(cfg, items, workers, seed, rank=rank, world=world)

    def validation_cases(self, cfg: ExperimentConfig, items: list[dict]) -> Any:
        from .photo_data import photo_validation_cases  # heavy (torch): kept out of the exported-model path

        return photo_validation_cases(cfg, items)

    def predict_case(self, model: Any, case: dict, cfg: ExperimentConfig, device: Any) -> np.ndarray:
        from .photo_predict import photo_probabilities  # heavy (torch): kept out of the exported-model path

        return photo_probabilities(model, case["image"], cfg, device)

    def read_input(self, bundle: Any, case: Any, options: Any) -> Any:
        """The photograph and its field of view as the network's input (``photo_predict.read_photo_input``)."""
        from .photo_predict import read_photo_input  # heavy (torch): kept out of the exported-model path

        return read_photo_input(case, bundle.cfg)

    def segment(self, bundle: Any, case: Any, read: Any, options: Any, progress: bool = False) -> Any:
        from .photo_predict import segment_photo  # heavy (torch): kept out of the exported-model path

        return (read, *segment_photo(bundle.model, bundle.cfg, read, bundle.device))

    def write_outputs(self, bundle: Any, case: Any, segmented: Any, case_dir: Path, options: Any) -> list[Path]:
        """mask.png, probability[_<label>].png and overlay.png (``photo_predict.write_photo_outputs``)."""
        from .photo_predict import write_photo_outputs  # heavy (torch): kept out of the exported-model path

        photo, labels, probabilities = segmented
        return write_photo_outputs(bundle.cfg.data.labels, case, photo, labels, probabilities, case_dir)


PHOTO = PhotoModality()

__all__ = ["PhotoModality", "PHOTO"]
