"""The KU Leuven residual U-Net with 'valid' convolutions (the liver-lesion network of ``pyliverlesionseg``).

The second network of ``pyliverlesionseg`` (Apache-2.0), rebuilt from its description, not from its code.
It shares the family of ``kul_unet`` (``KulUNet``) with three differences that change every size:

* 'valid' convolutions (no padding): every 3x3x3 convolution loses one voxel per side, every in-plane
  3x3x1 one voxel per side in-plane only;
* residual blocks: the block's input, centre-cropped to the block's output and projected by a 1x1x1
  convolution where the width changes, is added after the block's last convolution;
* pathways sub-sampled by 2 (max pooling 2, floor) and "copy" up-sampling (every voxel repeated twice).

Per pathway on the way down: [norm, LeakyReLU,] 3x3x1 conv to ``c`` then norm, LeakyReLU, 3x3x3 conv to
``2c`` (the bottom pathway: ``c`` and ``c``), plus the residual. On the way up, after concatenating the
centre-cropped skip (first) with the up-sampled features: norm, LeakyReLU, 3x3x3 conv to ``2c``, norm,
LeakyReLU, 3x3x1 conv to ``c``, plus the residual of the concatenation. A final norm, LeakyReLU and 1x1x1
convolution give one logit per voxel (a sigmoid in the original), which becomes the pair ``(0, z)`` for
liverseg's two-class convention. The norm is the weightless "instance normalisation" of ``kul_unet``
(mean and population std over the whole patch, ``std + 1e-7``), so the output depends on the patch.

For the lesion model (``channels [20, 40, 80, 160]``, 4 pathways) an input of ``92 + 8k`` voxels
in-plane and ``46 + 8k`` along z gives ``88`` and ``44`` fewer outputs: 44 voxels in-plane and 22
slices are lost per side (``KulResUNet.margin``). In 2D the same family has 3x3 kernels throughout.

Registered as ``kul_resunet`` (``model.channels`` = ``c`` per pathway; ``model.strides`` must be 2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .kul_unet import EPSILON, NEGATIVE_SLOPE, centre_crop, patch_norm


def norm_act(x: torch.Tensor, reuse: bool) -> torch.Tensor:
    """``LeakyReLU(patch_norm(x))``. Without autograd it takes two passes over the map instead of six,
    overwriting ``x`` where ``reuse`` says nothing else needs it (the maps here reach 0.4 GB)."""
    if torch.is_grad_enabled():
        return F.leaky_relu(patch_norm(x), NEGATIVE_SLOPE)
    dims = tuple(range(2, x.ndim))
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    scale = 1.0 / (var.sqrt() + EPSILON)
    out = x.sub_(mean) if reuse else x - mean
    return F.leaky_relu_(out.mul_(scale), NEGATIVE_SLOPE)


class _ResidualBlock(nn.Module):
    """Two [norm, LeakyReLU,] 'valid' convolutions and the cropped (projected) input added to their output."""

    def __init__(self, dims: int, in_channels: int, widths: Sequence[int], kernels: Sequence[Sequence[int]],
                 first_pre: bool) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.first_pre = first_pre
        self.convs = nn.ModuleList()
        width = in_channels
        for out, kernel in zip(widths, kernels):
            self.convs.append(conv(width, out, tuple(kernel)))
            width = out
        # The original creates the projection after the block's convolutions; the order of the
        # attributes here follows it so that the parameter order equals the hdf5's layer order.
        self.project = conv(in_channels, width, (1,) * dims) if in_channels != width else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        for j, conv in enumerate(self.convs):
            if j or self.first_pre:
                x = norm_act(x, reuse=j > 0)  # the block's input is also its shortcut
            x = conv(x)
        shortcut = centre_crop(shortcut, x.shape[2:])
        if self.project is not None:
            shortcut = self.project(shortcut)
        return x + shortcut


class KulResUNet(nn.Module):
    """The residual 'valid' U-Net; ``channels[i]`` = ``c`` of pathway ``i`` (see the module docstring)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (20, 40, 80, 160)) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"kul_resunet: model.spatial_dims={spatial_dims}, must be 2 or 3")
        if len(channels) < 2:
            raise ConfigError(f"kul_resunet: needs at least 2 pathways, model.channels={list(channels)}")
        if out_channels < 2:
            raise ConfigError(f"kul_resunet: out_channels={out_channels}, needs background and at least one class")
        self.dims, self.levels, self.out_channels = spatial_dims, len(channels), out_channels
        flat, full = ((3, 3, 1), (3, 3, 3)) if spatial_dims == 3 else ((3, 3), (3, 3))
        self.down = nn.ModuleList()
        width = in_channels
        for level, c in enumerate(channels):
            bottom = level == len(channels) - 1
            widths = (c, c) if bottom else (c, 2 * c)
            self.down.append(_ResidualBlock(spatial_dims, width, widths, (flat, full), first_pre=level > 0))
            width = widths[-1]
        self.up = nn.ModuleList()
        for level in range(len(channels) - 2, -1, -1):
            c = channels[level]
            self.up.append(_ResidualBlock(spatial_dims, 2 * c + width, (2 * c, c), (full, flat), first_pre=True))
            width = c
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.head = conv(width, 1 if out_channels == 2 else out_channels, (1,) * spatial_dims)

    def _flat_axes(self) -> tuple[bool, ...]:
        return (False, False, True) if self.dims == 3 else (False, False)

    @property
    def margin(self) -> tuple[int, ...]:
        """Voxels lost per side along each axis (44, 44, 22 for the lesion model): every block loses one
        voxel per side per kernel that is 3 wide along that axis, at its pathway's sub-sampling."""
        per_block = [1 if flat else 2 for flat in self._flat_axes()]
        scale = sum(2 ** level for level in range(self.levels)) + sum(2 ** level for level in range(self.levels - 1))
        return tuple(loss * scale for loss in per_block)

    def valid_size(self, size: int, axis: int) -> int:
        """The smallest input along ``axis`` that the graph accepts and whose output is at least ``size``."""
        n = max(1, size) + 2 * self.margin[axis]
        while self.output_size(n, axis) is None or self.output_size(n, axis) < size:
            n += 1
        return n

    def output_size(self, n: int, axis: int) -> int | None:
        """The output length of an input of ``n`` along ``axis``, None where the graph cannot take it."""
        flat = self._flat_axes()[axis]
        shrink = 2 if flat else 4  # per block, both sides: the full kernel, and the in-plane one off z
        sizes = []
        for level in range(self.levels):
            if level:
                if n % 2:
                    return None  # pooling would drop a voxel the original's sizes never drop
                n //= 2
            n -= shrink
            if n < 1:
                return None
            sizes.append(n)
        for level in range(self.levels - 2, -1, -1):
            n *= 2
            if (sizes[level] - n) % 2 or n > sizes[level]:
                return None  # the skip cannot be centre-cropped to it
            n -= shrink
            if n < 1:
                return None
        return n

    def core(self, x: torch.Tensor) -> torch.Tensor:
        """The original graph: logits ``2 * margin`` smaller than the input along each axis."""
        for axis, n in enumerate(x.shape[2:]):
            if self.output_size(n, axis) is None:
                raise ValueError(f"kul_resunet cannot take an input of {list(x.shape[2:])} voxels: along axis "
                                 f"{axis} use e.g. {self.valid_size(max(1, n - 2 * self.margin[axis]), axis)}")
        pool = F.max_pool3d if self.dims == 3 else F.max_pool2d
        skips = []
        for level, block in enumerate(self.down):
            x = block(pool(x, 2) if level else x)
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            for axis in range(2, x.ndim):
                x = x.repeat_interleave(2, dim=axis)
            x = block(torch.cat([centre_crop(skips.pop(), x.shape[2:]), x], dim=1))
        logits = self.head(norm_act(x, reuse=True))
        if self.out_channels == 2:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits on the input's own size: ``x`` zero-padded around its centre to the smallest input the
        graph takes whose output covers it (as the registry's other models, for training and
        sliding-window inference). ``core`` is the original graph without padding."""
        shape = tuple(x.shape[2:])
        before, crop = [], []
        flat: list[int] = []
        for axis, n in enumerate(shape):
            size = self.valid_size(n, axis)
            extra = self.output_size(size, axis) - n  # type: ignore[operator]
            lead = self.margin[axis] + extra // 2
            before.append(lead)
            crop.append(slice(extra // 2, extra // 2 + n))
            flat = [lead, size - n - lead] + flat  # F.pad lists the last axis first
        logits = self.core(F.pad(x, flat))
        return logits[(slice(None), slice(None), *crop)]


def build_kul_resunet(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """``model.channels``: ``c`` per pathway; ``model.strides``: 2 per level (the original's only factor)."""
    if any(int(s) != 2 for s in cfg.strides):
        raise ConfigError(f"model.strides={list(cfg.strides)}: kul_resunet sub-samples every pathway by 2")
    return KulResUNet(cfg.spatial_dims, in_channels, out_channels, cfg.channels)


__all__ = ["KulResUNet", "build_kul_resunet"]
