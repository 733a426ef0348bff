"""Architectures that MONAI provides whole: attention-gated U-Net and DynUNet (nnU-Net's network)."""
from __future__ import annotations

import torch
from monai.networks.nets import AttentionUnet, DynUNet
from torch import nn

from ..config import ModelConfig


def build_attention_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """U-Net whose skip connections pass through attention gates (Oktay et al. 2018).

    MONAI's AttentionUnet always uses batch norm; ``model.norm`` does not apply to it.
    """
    return AttentionUnet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                         channels=cfg.channels, strides=cfg.strides, dropout=cfg.dropout)


class DeepSupervisedDynUNet(nn.Module):
    """MONAI DynUNet with deep-supervision heads, behind liverseg's model contract.

    DynUNet returns, in train mode only, a stack of the main output and the heads (already upsampled
    to full resolution); ``forward`` here always returns the main full-resolution logits and
    ``deep_supervision_outputs`` the whole list.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        strides = [1, *cfg.strides]
        # One head per decoder level below full resolution, leaving out the bottleneck's own level
        # (DynUNet allows at most len(strides) - 2).
        heads = max(1, len(strides) - 2)
        self.net = DynUNet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                           kernel_size=[3] * len(strides), strides=strides, upsample_kernel_size=strides[1:],
                           filters=list(cfg.channels), dropout=cfg.dropout or None,
                           norm_name=(cfg.norm, {"affine": True}), deep_supervision=True,
                           deep_supr_num=heads, res_block=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[:, 0] if self.training else out

    def deep_supervision_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.training:
            return [self.net(x)]
        return list(self.net(x).unbind(dim=1))


def build_dynunet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return DeepSupervisedDynUNet(cfg, in_channels, out_channels)
