"""The experiment configuration: frozen dataclasses (``schema``), YAML on disk and ``--set a.b=value``
overrides (``loading``). Import from here: ``from liverseg.config import ExperimentConfig, load_config``."""
from __future__ import annotations

from .loading import (MOVED_KEYS, SHIPPED_CONFIGS, apply_moved_keys, apply_overrides, config_from_mapping,
                      config_from_yaml_text, from_dict, load_config, resolve_config, save_config, shipped_configs,
                      to_dict)
from .schema import (LOSSES, MODALITY_SPATIAL_DIMS, PHOTO_CHANNELS, AugmentConfig, DataConfig, ExperimentConfig,
                     InferConfig, ModelConfig, PhotoConfig, PreprocessConfig, TrainConfig)

__all__ = ["DataConfig", "PreprocessConfig", "ModelConfig", "AugmentConfig", "TrainConfig", "InferConfig",
           "PhotoConfig", "ExperimentConfig", "LOSSES", "MODALITY_SPATIAL_DIMS", "PHOTO_CHANNELS", "MOVED_KEYS", "SHIPPED_CONFIGS", "apply_moved_keys",
           "apply_overrides", "config_from_mapping", "config_from_yaml_text", "from_dict", "load_config",
           "resolve_config", "save_config", "shipped_configs", "to_dict"]
