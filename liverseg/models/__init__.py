"""Model registry: an explicit dict from name to builder. No scanning, no dotted paths.

Every builder takes ``(ModelConfig, in_channels, out_channels)`` and returns a module whose
``forward(x)`` gives full-resolution logits of shape (N, out_channels, *spatial).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .unet import build_unet

Builder = Callable[[ModelConfig, int, int], nn.Module]

MODELS: dict[str, Builder] = {
    "unet": build_unet,
}


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    try:
        builder = MODELS[cfg.name]
    except KeyError:
        raise ConfigError(f"model.name={cfg.name!r} is not a known model; known: "
                          f"{', '.join(sorted(MODELS))}") from None
    return builder(cfg, in_channels, out_channels)


def size_divisor(cfg: ModelConfig) -> int:
    """Input sizes must be multiples of this for the encoder/decoder shapes to line up."""
    divisor = 1
    for stride in cfg.strides:
        divisor *= stride
    return divisor


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "build_model", "size_divisor", "count_parameters"]
