"""Modalities: what differs between CT volumes and 2D photographs, behind one small interface
(``base.Modality``). ``modality_for(cfg)`` is the one place that reads ``data.modality``; the code above
this package calls the modality it returns, or reads its ``traits``."""
from __future__ import annotations

from ..config import ExperimentConfig
from ..errors import ConfigError
from .base import Modality, ModalityTraits
from .ct import CT
from .photo import PHOTO

MODALITIES: dict[str, Modality] = {"ct": CT, "photo": PHOTO}


def modality_for(cfg: ExperimentConfig) -> Modality:
    """The modality ``cfg.data.modality`` names; ConfigError for an unknown name. (The model.spatial_dims
    each allows is config's ``MODALITY_SPATIAL_DIMS``, checked by ``ExperimentConfig.validate``: the bottom
    layer cannot read the modalities.)"""
    modality = MODALITIES.get(cfg.data.modality)
    if modality is None:
        raise ConfigError(f"data.modality={cfg.data.modality!r}: use {' or '.join(MODALITIES)}")
    return modality


__all__ = ["MODALITIES", "Modality", "ModalityTraits", "modality_for"]
