"""The KU Leuven multi-scale U-Net (Tang et al. 2020), written for liverseg in PyTorch.

The network of ``pyliverlesionseg`` (Apache-2.0), rebuilt from its description, not from its code:

* four pathways at sub-sampling factors ``1, s, s^2, s^3`` (``model.strides``, 3 for the liver model),
  connected by max pooling with kernel = stride = ``s``;
* per pathway on the way down two convolutions, the first in-plane (3x3x1) and the second 3x3x3, with
  ``c`` then ``2c`` filters (``model.channels[i] = c``; the bottom pathway has two 3x3x3 convolutions of
  ``model.channels[-1]`` filters); on the way up, after concatenating the skip (first) with the
  up-sampled features, a 3x3x3 then an in-plane convolution with ``2c`` then ``c`` filters;
* before every convolution but the very first: "instance normalisation" without learnt parameters,
  ``(x - mean) / (std + 1e-7)`` with the mean and the population std over the whole patch, then
  LeakyReLU(0.01); the statistics include whatever zero padding the patch holds, so the output depends on
  the patch size (``KulUNet.forward`` takes a fixed ``patch`` for that reason);
* 'same' zero padding in every convolution; "linear" up-sampling = repeat every voxel ``s`` times, then a
  stride-1 ``s``-wide average pool without padding (each up-sampling loses ``s - 1`` voxels per axis);
  skips are centre-cropped to the up-sampled size;
* a final norm, LeakyReLU and 1x1x1 convolution: one logit per voxel (a sigmoid in the original).

With ``s = 3`` an input of ``27k`` voxels per axis gives ``27k - 26`` outputs: the output sits 13 voxels
inside the input on every side. ``forward`` hides that: it zero-pads the input around its centre as
the original's sampler does, and returns logits on the input's own size.

For liverseg's two-class convention the single logit ``z`` becomes the pair ``(0, z)``: the softmax of
that pair is ``(1 - sigmoid(z), sigmoid(z))``, the original's probability unchanged. With more than two
output channels (fine-tuning to other labels) the last convolution has one logit per class instead.

2D: the same family with 3x3 kernels throughout (no in-plane/through-plane distinction).

Registered as ``kul_unet`` (``model.channels`` = ``c`` per pathway, ``model.strides`` = the factor,
odd): the built-in liver model is ``channels [20, 40, 80, 160]``, ``strides [3, 3, 3]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError

EPSILON = 1e-7  # Keras' K.epsilon(), added to the std (not to the variance) by the original's Lambda
NEGATIVE_SLOPE = 0.01


def patch_norm(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / (std + 1e-7)`` per sample and channel over every spatial voxel (population std)."""
    dims = tuple(range(2, x.ndim))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = centred.square().mean(dim=dims, keepdim=True).sqrt()
    return centred / (std + EPSILON)


class _NormActConv(nn.Module):
    """[norm, LeakyReLU,] convolution with 'same' zero padding."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, kernel: Sequence[int], pre: bool) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.pre = pre
        self.conv = conv(in_channels, out_channels, tuple(kernel), padding=tuple(k // 2 for k in kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = F.leaky_relu(patch_norm(x), NEGATIVE_SLOPE)
        return self.conv(x)


def upsample_linear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat every voxel ``factor`` times, then average ``factor``-wide windows (stride 1, no padding)."""
    dims = x.ndim - 2
    for axis in range(2, x.ndim):
        x = x.repeat_interleave(factor, dim=axis)
    pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
    return pool(x, kernel_size=factor, stride=1)


def centre_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    index = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


class KulUNet(nn.Module):
    """The multi-scale U-Net; ``channels[i]`` = ``c`` of pathway ``i`` (see the module docstring)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (20, 40, 80, 160), factor: int = 3) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"kul_unet: model.spatial_dims={spatial_dims}, must be 2 or 3")
        if len(channels) < 2 or factor < 3 or factor % 2 == 0:
            raise ConfigError(f"kul_unet: needs at least 2 pathways (model.channels={list(channels)}) and an odd "
                              f"sub-sampling factor of at least 3 (model.strides), got {factor}: its 'linear' "
                              "up-sampling shifts an even factor's output by half a voxel against the skip")
        if out_channels < 2:
            raise ConfigError(f"kul_unet: out_channels={out_channels}, needs background and at least one class")
        self.dims, self.factor, self.levels = spatial_dims, factor, len(channels)
        self.out_channels = out_channels
        flat, full = ((3, 3, 1), (3, 3, 3)) if spatial_dims == 3 else ((3, 3), (3, 3))
        self.down = nn.ModuleList()
        width = in_channels
        for level, c in enumerate(channels):
            bottom = level == len(channels) - 1
            first = (full if bottom else flat, c)
            second = (full, c if bottom else 2 * c)
            blocks = []
            for j, (kernel, out) in enumerate((first, second)):
                blocks.append(_NormActConv(spatial_dims, width, out, kernel, pre=level > 0 or j > 0))
                width = out
            self.down.append(nn.Sequential(*blocks))
        self.up = nn.ModuleList()
        for level in range(len(channels) - 2, -1, -1):
            c = channels[level]
            skip = 2 * c
            self.up.append(nn.Sequential(_NormActConv(spatial_dims, skip + width, 2 * c, full, pre=True),
                                         _NormActConv(spatial_dims, 2 * c, c, flat, pre=True)))
            width = c
        # Binary (the original): one logit, turned into the pair (0, z). More classes: one logit each.
        self.head = _NormActConv(spatial_dims, width, 1 if out_channels == 2 else out_channels,
                                 (1,) * spatial_dims, pre=True)

    @property
    def margin(self) -> int:
        """Voxels per side that the core network's output loses to its up-sampling (13 for 4 levels, s=3)."""
        return sum((self.factor - 1) * self.factor ** level for level in range(self.levels - 1)) // 2

    @property
    def size_unit(self) -> int:
        """Core inputs must be multiples of this along every axis (the deepest sub-sampling factor)."""
        return self.factor ** (self.levels - 1)

    def core_size(self, size: int) -> int:
        """The smallest valid core input whose output covers ``size`` voxels."""
        unit = self.size_unit
        return -(-(size + 2 * self.margin) // unit) * unit

    def core(self, x: torch.Tensor) -> torch.Tensor:
        """The original graph: an input of multiples of ``size_unit`` -> logits ``2 * margin`` smaller."""
        pool = F.max_pool3d if self.dims == 3 else F.max_pool2d
        skips = []
        for level, blocks in enumerate(self.down):
            x = blocks(pool(x, self.factor) if level else x)
            skips.append(x)
        x = skips.pop()
        for blocks in self.up:
            x = upsample_linear(x, self.factor)
            x = blocks(torch.cat([centre_crop(skips.pop(), x.shape[2:]), x], dim=1))
        logits = self.head(x)
        if self.out_channels == 2:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits

    def patch_padding(self, shape: Sequence[int], patch: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """(before, after) zero padding per axis that centres ``shape`` in ``patch`` as the original's
        sampler does (image voxel ``n // 2`` at patch voxel ``P // 2``); default: the smallest valid patch."""
        patch = [self.core_size(n) for n in shape] if patch is None else list(patch)
        if len(patch) != len(shape):
            raise ValueError(f"patch {list(patch)} needs {len(shape)} sizes")
        padding = []
        for n, size in zip(shape, patch):
            before = size // 2 - n // 2
            after = size - n - before
            if size % self.size_unit or min(before, after) < self.margin:
                raise ValueError(f"patch {list(patch)} cannot hold an input of {list(shape)}: each size must be a "
                                 f"multiple of {self.size_unit} and leave {self.margin} voxels on both sides")
            padding.append((before, after))
        return padding

    def forward(self, x: torch.Tensor, patch: Sequence[int] | None = None) -> torch.Tensor:
        """Logits (N, out_channels, *x.shape[2:]): ``x`` centred in a zero-padded ``patch`` (default: the
        smallest valid one), as the original's sampler feeds it."""
        shape = tuple(x.shape[2:])
        padding = self.patch_padding(shape, patch)
        flat = [p for before, after in reversed(padding) for p in (before, after)]  # F.pad: last axis first
        logits = self.core(F.pad(x, flat))
        m = self.margin
        return logits[(slice(None), slice(None), *(slice(b - m, b - m + n) for (b, _), n in zip(padding, shape)))]


def build_kul_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """``model.channels``: ``c`` per pathway; ``model.strides``: one sub-sampling factor, repeated."""
    factors = set(int(s) for s in cfg.strides)
    if len(factors) != 1:
        raise ConfigError(f"model.strides={list(cfg.strides)}: kul_unet sub-samples every pathway by the same "
                          "factor; give it once per level, e.g. [3, 3, 3]")
    return KulUNet(cfg.spatial_dims, in_channels, out_channels, cfg.channels, factors.pop())


__all__ = ["KulUNet", "build_kul_unet", "patch_norm", "upsample_linear"]
