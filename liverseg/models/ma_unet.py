"""MA-UNet: a U-Net improved with multi-scale context and attention, in 2D or 3D.

The "improved U-Net" used for COVID-19 CT lesion segmentation, built from these parts:

* **Encoder.** Per level a residual double-conv block (conv3-norm-LeakyReLU, conv3-norm, plus a 1x1
  projection shortcut, LeakyReLU after the sum; He et al., "Deep Residual Learning", CVPR 2016), then
  **CBAM** (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018, arXiv:1807.06521):
  channel attention from a shared MLP (reduction 8, at least 4 hidden units) over the global average-
  and max-pooled features, then spatial attention from a 7-wide conv over the channel-wise mean and
  max maps. The attended features are the skip connection; a strided 3x3 conv (stride
  ``model.strides[i]``) then halves the resolution. Channel and spatial attention on a U-Net for
  COVID-19 CT follows Zhou, Canu and Ruan, Int J Imaging Syst Technol 2021 (doi:10.1002/ima.22527).
* **Bottleneck.** A residual double-conv block, then **ASPP** (Chen et al., DeepLab v3,
  arXiv:1706.05587): one 1x1 branch and one dilated 3x3 branch per ``model.aspp_dilations``
  (default 3, 5, 7; padding = dilation), concatenated and fused by 1x1 conv + norm + LeakyReLU. This
  is MONAI's ``SimpleASPP`` (kernel sizes (1, 3, 3, 3), dilations (1, 3, 5, 7)), which is exactly
  that spec; it has no image-pooling branch. An ASPP bottleneck in a COVID-19 lesion U-Net is also
  COPLE-Net's design (Wang et al., IEEE TMI 2020). ``model.dropout`` is applied after the ASPP.
* **Decoder.** Per level a transposed conv (kernel = stride), concatenation with the skip, and the
  same residual double-conv block.
* **Multi-scale decoder fusion.** Every decoder level's features are projected by a 1x1 conv to the
  first level's width, interpolated to full resolution and summed (a feature-pyramid style fusion:
  small lesions are seen by the fine levels, context by the coarse ones), then norm + LeakyReLU and
  the final 1x1 classifier.
* **Deep supervision.** A 1x1 head on every decoder level below full resolution (Lee et al.,
  "Deeply-Supervised Nets", AISTATS 2015; Dou et al., 3D DSN, Medical Image Analysis 2017).
  ``deep_supervision_outputs`` returns the main logits first, then the heads from the highest to the
  lowest resolution, raw (the caller upsamples). The heads are always built, whatever
  ``model.deep_supervision`` says, so a checkpoint's tensors do not depend on a training option.

Spatial sizes must be divisible by prod(strides); the registry's size adapter pads to that.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import SimpleASPP
from monai.networks.layers.factories import Conv, Dropout
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError

# LeakyReLU slope as in nnU-Net and MONAI's SimpleASPP default.
_SLOPE = 0.01


def _norm_arg(norm: str | tuple) -> str | tuple:
    # Instance norm with learnable affine parameters, as nnU-Net/DynUNet use it; MONAI's default
    # instance norm has none.
    if isinstance(norm, str) and norm.lower() == "instance":
        return ("instance", {"affine": True})
    return norm


def _norm(norm: str | tuple, dims: int, channels: int) -> nn.Module:
    return get_norm_layer(name=_norm_arg(norm), spatial_dims=dims, channels=channels)


def _act() -> nn.Module:
    return nn.LeakyReLU(_SLOPE, inplace=True)


class ResidualDoubleConv(nn.Module):
    """conv3-norm-act-conv3-norm + shortcut (1x1 conv + norm when the width changes), then act."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, norm: str | tuple) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, dims]
        # No conv bias: the norm that follows has its own shift.
        self.body = nn.Sequential(
            conv(in_channels, out_channels, 3, padding=1, bias=False), _norm(norm, dims, out_channels), _act(),
            conv(out_channels, out_channels, 3, padding=1, bias=False), _norm(norm, dims, out_channels),
        )
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(conv(in_channels, out_channels, 1, bias=False),
                                          _norm(norm, dims, out_channels))
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) * x, the MLP shared."""

    def __init__(self, dims: int, channels: int, reduction: int = 8, min_hidden: int = 4) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, dims]
        hidden = max(channels // reduction, min_hidden)
        # 1x1 convs on the pooled (N, C, 1, ...) maps are the shared MLP without any reshaping.
        self.mlp = nn.Sequential(conv(channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, channels, 1))
        self.reduce = tuple(range(2, 2 + dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=self.reduce, keepdim=True)
        peak = x.amax(dim=self.reduce, keepdim=True)
        return x * torch.sigmoid(self.mlp(avg) + self.mlp(peak))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv_k([mean_c(x); max_c(x)])) * x."""

    def __init__(self, dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, dims](2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(maps))


class CBAM(nn.Module):
    """Channel attention, then spatial attention (the order the CBAM paper found best)."""

    def __init__(self, dims: int, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(dims, channels, reduction)
        self.spatial = SpatialAttention(dims, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def _down(dims: int, channels: int, stride: int, norm: str | tuple) -> nn.Sequential:
    # kernel max(3, stride) with padding (k-1)//2 gives exactly size/stride for divisible sizes and
    # overlapping windows for the usual stride 2, as nnU-Net's strided convs.
    kernel = max(3, stride)
    return nn.Sequential(
        Conv[Conv.CONV, dims](channels, channels, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False),
        _norm(norm, dims, channels), _act(),
    )


class MAUNet(nn.Module):
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        norm: str | tuple = "instance",
        dropout: float = 0.0,
        aspp_dilations: Sequence[int] = (3, 5, 7),
    ) -> None:
        super().__init__()
        dims = spatial_dims
        channels, strides = tuple(channels), tuple(strides)
        levels = len(channels)
        conv = Conv[Conv.CONV, dims]
        convt = Conv[Conv.CONVTRANS, dims]

        # Encoder levels 0 .. levels-2 each give one skip connection.
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        width = in_channels
        for i in range(levels - 1):
            self.encoders.append(nn.Sequential(ResidualDoubleConv(dims, width, channels[i], norm),
                                               CBAM(dims, channels[i])))
            self.downs.append(_down(dims, channels[i], strides[i], norm))
            width = channels[i]

        # SimpleASPP's output width is branch width x number of branches; round the branch width up
        # so the bottleneck keeps at least channels[-1] features.
        n_branches = 1 + len(aspp_dilations)
        branch = math.ceil(channels[-1] / n_branches)
        self.bottleneck = nn.Sequential(
            ResidualDoubleConv(dims, width, channels[-1], norm),
            SimpleASPP(dims, channels[-1], branch, kernel_sizes=(1,) + (3,) * len(aspp_dilations),
                       dilations=(1, *aspp_dilations), norm_type=_norm_arg(norm), acti_type=("leakyrelu",
                       {"negative_slope": _SLOPE, "inplace": True})),
            Dropout[Dropout.DROPOUT, dims](dropout),
        )
        width = branch * n_branches

        # Decoder, indexed by the level it produces: ups[k] goes from level k+1 to level k.
        ups: list[nn.Module] = [nn.Identity()] * (levels - 1)
        decoders: list[nn.Module] = [nn.Identity()] * (levels - 1)
        for k in reversed(range(levels - 1)):
            ups[k] = convt(width, channels[k], strides[k], stride=strides[k])
            decoders[k] = ResidualDoubleConv(dims, 2 * channels[k], channels[k], norm)
            width = channels[k]
        self.ups = nn.ModuleList(ups)
        self.decoders = nn.ModuleList(decoders)

        # Multi-scale fusion: every decoder level projected to the full-resolution width.
        fused = channels[0]
        self.projections = nn.ModuleList(conv(channels[k], fused, 1, bias=False) for k in range(levels - 1))
        self.fuse = nn.Sequential(_norm(norm, dims, fused), _act())
        self.classifier = conv(fused, out_channels, 1)
        # Auxiliary heads on decoder levels 1 .. levels-2 (below full resolution).
        self.heads = nn.ModuleList(conv(channels[k], out_channels, 1) for k in range(1, levels - 1))
        self.interp_mode = "trilinear" if dims == 3 else "bilinear"
        _init_weights(self)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for encode, down in zip(self.encoders, self.downs):
            x = encode(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        decoded: list[torch.Tensor] = [x] * len(skips)
        for k in reversed(range(len(skips))):
            x = self.decoders[k](torch.cat([self.ups[k](x), skips[k]], dim=1))
            decoded[k] = x
        full = decoded[0].shape[2:]
        fused = self.projections[0](decoded[0])
        for k in range(1, len(decoded)):
            # Project before interpolating: the 1x1 conv commutes with linear interpolation, and at
            # low resolution it is far cheaper.
            fused = fused + F.interpolate(self.projections[k](decoded[k]), size=full, mode=self.interp_mode,
                                          align_corners=False)
        main = self.classifier(self.fuse(fused))
        aux = [head(decoded[k + 1]) for k, head in enumerate(self.heads)]
        return main, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def deep_supervision_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        main, aux = self._run(x)
        return [main, *aux]


def _init_weights(module: nn.Module) -> None:
    # He initialisation for LeakyReLU networks, as nnU-Net (InitWeights_He(1e-2)).
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=_SLOPE)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_ma_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    dilations = tuple(getattr(cfg, "aspp_dilations", (3, 5, 7)))
    if not dilations or any(int(d) != d or d < 1 for d in dilations):
        raise ConfigError(f"model.aspp_dilations={list(dilations)}: needs one or more positive integers, "
                          "e.g. [3, 5, 7]")
    if len(cfg.channels) < 2 or len(cfg.strides) != len(cfg.channels) - 1:
        raise ConfigError(f"model.channels={list(cfg.channels)}, model.strides={list(cfg.strides)}: ma_unet "
                          "needs at least two levels and one stride fewer than channels")
    return MAUNet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                  channels=cfg.channels, strides=cfg.strides, norm=cfg.norm, dropout=cfg.dropout,
                  aspp_dilations=tuple(int(d) for d in dilations))
