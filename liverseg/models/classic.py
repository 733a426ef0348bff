"""The classic U-Net of the project's Keras seeds, in 2D or 3D.

Layout of Ronneberger, Fischer and Brox, "U-Net", MICCAI 2015 (arXiv:1505.04597), in the form the
Keras seeds used:

* encoder: per level two (3x3 conv, norm, ReLU) blocks with ``model.channels[i]`` filters (16 at the
  top, doubling per level in the configs), then max pooling with kernel = stride =
  ``model.strides[i]``;
* dropout (``model.dropout``) after the second conv of the two bottom encoder levels (the last skip
  level and the bottleneck), as the widely copied Keras U-Net does (zhixuhao/unet, ``model.py``:
  ``Dropout(0.5)`` after conv4 and conv5); the dropped-out features are also the skip connection there,
  and so here. Element-wise ``nn.Dropout``, as Keras ``Dropout``;
* decoder: transposed-conv up-sampling (kernel = stride, no activation), concatenation with the skip,
  two (3x3 conv, norm, ReLU) blocks;
* a final 1x1 conv giving logits (the Keras seeds put a sigmoid/softmax there; liverseg's losses and
  inference take logits).

Differences from the seeds, on purpose: the norm is ``model.norm`` rather than always batch norm, so
that instance norm can train with batch size 1 (the Keras seeds used batch norm; configs that
reproduce them set ``norm: batch``); convs followed by a norm have no bias (the norm's shift makes it
redundant). Weights use He-normal initialisation as the seeds' ``kernel_initializer='he_normal'``
(PyTorch's is not truncated). 3D is the same network with 3D layers (Çiçek et al., "3D U-Net",
MICCAI 2016).

No deep-supervision heads: ``deep_supervision_outputs`` returns ``[forward(x)]``. Spatial sizes must be
divisible by prod(strides); the registry's size adapter pads to that.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError


def _norm(norm: str | tuple, dims: int, channels: int) -> nn.Module:
    # Affine instance norm (as nnU-Net); MONAI's default instance norm has no learnable parameters.
    if isinstance(norm, str) and norm.lower() == "instance":
        norm = ("instance", {"affine": True})
    return get_norm_layer(name=norm, spatial_dims=dims, channels=channels)


def _conv_block(dims: int, in_channels: int, out_channels: int, norm: str | tuple) -> nn.Sequential:
    return nn.Sequential(Conv[Conv.CONV, dims](in_channels, out_channels, 3, padding=1, bias=False),
                         _norm(norm, dims, out_channels), nn.ReLU(inplace=True))


class ClassicUNet(nn.Module):
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        norm: str | tuple = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims = spatial_dims
        channels, strides = tuple(channels), tuple(strides)
        levels = len(channels)
        pool = Pool[Pool.MAX, dims]
        convt = Conv[Conv.CONVTRANS, dims]

        # Encoder levels 0 .. levels-1; the last one is the bottleneck (no pooling, no skip).
        self.encoders = nn.ModuleList()
        width = in_channels
        for i in range(levels):
            block = [_conv_block(dims, width, channels[i], norm), _conv_block(dims, channels[i], channels[i], norm)]
            if i >= levels - 2:
                block.append(nn.Dropout(dropout))
            self.encoders.append(nn.Sequential(*block))
            width = channels[i]
        self.pools = nn.ModuleList(pool(kernel_size=s, stride=s) for s in strides)

        # Decoder, indexed by the level it produces: ups[k] goes from level k+1 to level k.
        self.ups = nn.ModuleList(convt(channels[k + 1], channels[k], strides[k], stride=strides[k])
                                 for k in range(levels - 1))
        self.decoders = nn.ModuleList(
            nn.Sequential(_conv_block(dims, 2 * channels[k], channels[k], norm),
                          _conv_block(dims, channels[k], channels[k], norm))
            for k in range(levels - 1))
        self.classifier = Conv[Conv.CONV, dims](channels[0], out_channels, 1)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encode, pool in zip(self.encoders[:-1], self.pools):
            x = encode(x)
            skips.append(x)
            x = pool(x)
        x = self.encoders[-1](x)
        for k in reversed(range(len(skips))):
            x = self.decoders[k](torch.cat([self.ups[k](x), skips[k]], dim=1))
        return self.classifier(x)

    def deep_supervision_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.forward(x)]


def build_unet_classic(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    if len(cfg.channels) < 2 or len(cfg.strides) != len(cfg.channels) - 1:
        raise ConfigError(f"model.channels={list(cfg.channels)}, model.strides={list(cfg.strides)}: "
                          "unet_classic needs at least two levels and one stride fewer than channels")
    return ClassicUNet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                       channels=cfg.channels, strides=cfg.strides, norm=cfg.norm, dropout=cfg.dropout)
