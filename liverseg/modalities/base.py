"""The modality interface: what one kind of input (CT volumes, 2D photographs) supplies to training,
prediction and export, so that the code above this package asks its modality instead of testing
``data.modality``'s value.

A modality is a static record of traits (``ModalityTraits``: what applies to it) and four behaviours:
load a case, build its training and validation data, predict a case (for validation, on the network's
grid; and an input, read -> segment -> write outputs, for ``liverseg predict``), score a case. ``modality_for(cfg)``
(``liverseg.modalities``) picks the one the config names.

This module and the plug-ins' own modules (``ct.py``, ``photo.py``) import no PyTorch or MONAI at the top:
prediction from an exported model asks for the traits without loading either.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ExperimentConfig
from ..metrics import dice


@dataclass(frozen=True)
class ModalityTraits:
    """What applies to a modality, fixed for it (not configurable)."""
    name: str  # the data.modality value that chooses it
    inputs: str  # the input kind written in run summaries and exports ("CT", "PHOTO")
    # Inputs are volumes with headers: batch prediction reads them once with header and intensity checks
    # (and pipelines reading with predicting), they may be ensembled, and ``liverseg.segment`` takes them.
    # Otherwise every input is a small self-contained file, predicted one after the other.
    volume_inputs: bool
    auto_plan: bool  # `liverseg plan` and train.auto_plan derive spacing, intensities and patch from its data
    exportable: bool  # ONNX / TorchScript / MONAI-bundle export, and the ONNX written at the end of training
    # the file of a case folder that holds the label map (what ``liverseg predict`` prints per case), or
    # None: the case folder itself is printed
    label_map: str | None = None


class Modality(ABC):
    """One modality. Subclasses set ``traits`` and implement the abstract methods."""

    traits: ModalityTraits

    @property
    def name(self) -> str:
        return self.traits.name

    @abstractmethod
    def in_channels(self, cfg: ExperimentConfig) -> int:
        """Input channels of the network for ``cfg``."""

    @abstractmethod
    def load_case(self, item: dict, cfg: ExperimentConfig) -> dict:
        """A manifest item (``items.case_dicts``) -> ``{"id", "image", "label"}`` on the network's grid:
        image (C, *spatial) float32, label (1, *spatial) int64 class indices (when the item has one)."""

    @abstractmethod
    def train_loader(self, cfg: ExperimentConfig, items: list[dict], workers: int, seed: int, *, rank: int = 0,
                     world: int = 1, cache_dir: str | Path | None = None, ram_budget_gb: float | None = None) -> Any:
        """A ``DataLoader`` of augmented training patches; its ``sampler`` is a ``sampling.StepSampler`` that
        the training loop points at the steps to draw. ``cache_dir`` / ``ram_budget_gb``: where the
        modality caches its preprocessed cases (ignored by one that keeps them all in memory)."""

    @abstractmethod
    def validation_cases(self, cfg: ExperimentConfig, items: list[dict]) -> Any:
        """The validation cases, loaded (``load_case``) once and kept: a sequence of case dicts."""

    @abstractmethod
    def predict_case(self, model: Any, case: dict, cfg: ExperimentConfig, device: Any) -> np.ndarray:
        """Class probabilities (K, *spatial) float32 of one loaded case (``load_case``), on its network grid."""

    def score_case(self, model: Any, case: dict, cfg: ExperimentConfig, device: Any) -> dict[str, float]:
        """Dice per foreground label (by name) of one loaded validation case, on its network grid: what
        training validation reports."""
        predicted = np.asarray(self.predict_case(model, case, cfg, device)).argmax(0)
        reference = case["label"][0].numpy()
        return {name: dice(predicted == index, reference == index)
                for index, name in enumerate(cfg.data.labels[1:], start=1)}

    # One input predicted, in the three steps that batch prediction (``inference.batch``) runs for every
    # case (pipelined across cases where ``traits.volume_inputs``: the next read and the last write overlap
    # the network). ``bundle`` is an ``engine.loaded.TrainedModel``; ``case`` a ``datasets.manifest.Case``;
    # ``options`` batch prediction's ``PredictOptions``.

    @abstractmethod
    def read_input(self, bundle: Any, case: Any, options: Any) -> Any:
        """Read one input for ``bundle``'s config, proven whole (a damaged or blank input raises ``InputError``)."""

    @abstractmethod
    def segment(self, bundle: Any, case: Any, read: Any, options: Any, progress: bool = False) -> Any:
        """Segment what ``read_input`` returned; the result is what ``write_outputs`` takes."""

    @abstractmethod
    def write_outputs(self, bundle: Any, case: Any, segmented: Any, case_dir: Path, options: Any) -> list[Path]:
        """Write ``segment``'s result into ``case_dir`` (a folder that batch prediction renames into place
        when complete); returns the files written."""


__all__ = ["ModalityTraits", "Modality"]
