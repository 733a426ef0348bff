"""Model registry: an explicit dict from name to builder. No scanning, no dotted paths.

Every builder takes ``(ModelConfig, in_channels, out_channels)``. ``build_model`` wraps the network
in a ``SizeAdapter`` so that every registered model

* accepts any input size (padded to the network's size divisor, output cropped back),
* returns full-resolution logits (N, out_channels, *spatial) from ``forward`` in train and eval,
* offers ``deep_supervision_outputs(x)``: the main output first, then the auxiliary heads (if the
  architecture has any), all upsampled to full resolution; only the training step calls it.

``model.spatial_dims`` picks 2D or 3D; the same name serves both.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .kul_resunet import build_kul_resunet
from .kul_unet import build_kul_unet

Builder = Callable[[ModelConfig, int, int], nn.Module]


def _lazy_builder(module: str, name: str) -> Builder:
    """A builder whose module (which imports MONAI, 140 MB and seconds) loads on first use: the built-in
    models' prediction path imports this registry and never needs MONAI."""
    def build(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
        return getattr(importlib.import_module(module, __package__), name)(cfg, in_channels, out_channels)

    build.__name__ = name
    return build


build_unet = _lazy_builder(".unet", "build_unet")
build_attention_unet = _lazy_builder(".monai_nets", "build_attention_unet")
build_dynunet = _lazy_builder(".monai_nets", "build_dynunet")
build_ma_unet = _lazy_builder(".ma_unet", "build_ma_unet")
build_unet_classic = _lazy_builder(".classic", "build_unet_classic")

MODELS: dict[str, Builder] = {
    "unet": build_unet,                      # MONAI residual U-Net
    "attention_unet": build_attention_unet,  # attention gates on the skips
    "dynunet": build_dynunet,                # nnU-Net style, deep-supervision heads
    "ma_unet": build_ma_unet,                # CBAM encoder, ASPP bottleneck, multi-scale fusion, deep supervision
    "unet_classic": build_unet_classic,      # the seeds' Keras U-Net
    "kul_unet": build_kul_unet,              # KU Leuven multi-scale U-Net (the built-in liver model's family)
    "kul_resunet": build_kul_resunet,        # KU Leuven residual 'valid' U-Net (the built-in lesion model's family)
}


class SizeAdapter(nn.Module):
    """Pads inputs to a multiple of the network's size divisor and crops every output back."""

    def __init__(self, net: nn.Module, divisor: int) -> None:
        super().__init__()
        self.net = net
        self.divisor = divisor

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        spatial = tuple(x.shape[2:])
        extra = [(-s) % self.divisor for s in spatial]
        if not any(extra):
            return x, spatial
        padding: list[int] = []
        for e in reversed(extra):  # F.pad lists the last axis first
            padding += [0, e]
        return F.pad(x, padding), spatial

    @staticmethod
    def _crop(y: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        return y[(slice(None), slice(None), *(slice(0, s) for s in spatial))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, spatial = self._pad(x)
        return self._crop(self.net(padded), spatial)

    def deep_supervision_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        padded, spatial = self._pad(x)
        method = getattr(self.net, "deep_supervision_outputs", None)
        outputs = method(padded) if method is not None else [self.net(padded)]
        full = tuple(padded.shape[2:])
        mode = "trilinear" if len(full) == 3 else "bilinear"
        resized = [o if tuple(o.shape[2:]) == full else F.interpolate(o, size=full, mode=mode, align_corners=False)
                   for o in outputs]
        return [self._crop(o, spatial) for o in resized]


def input_channels(cfg: ModelConfig) -> int:
    """Channels a volume network sees: 3D models the volume, 2D models ``slices_2d`` neighbouring axial
    slices. (The channels of any modality: ``modalities.modality_for(cfg).in_channels(cfg)``.)"""
    return cfg.slices_2d if cfg.spatial_dims == 2 else 1


def size_divisor(cfg: ModelConfig) -> int:
    """Input sizes are padded to multiples of this (``ModelConfig.size_divisor``)."""
    return cfg.size_divisor


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> SizeAdapter:
    try:
        builder = MODELS[cfg.name]
    except KeyError:
        raise ConfigError(f"model.name={cfg.name!r} is not a known model; known: "
                          f"{', '.join(sorted(MODELS))}") from None
    return SizeAdapter(builder(cfg, in_channels, out_channels), size_divisor(cfg))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "SizeAdapter", "build_model", "input_channels", "size_divisor", "count_parameters"]
