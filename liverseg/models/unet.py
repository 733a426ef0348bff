"""Residual U-Net (MONAI ``UNet``), in 2D or 3D."""
from __future__ import annotations

from monai.networks.nets import UNet
from torch import nn

from ..config import ModelConfig


def build_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return UNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=cfg.channels,
        strides=cfg.strides,
        num_res_units=cfg.num_res_units,
        norm=cfg.norm,
        dropout=cfg.dropout,
    )
