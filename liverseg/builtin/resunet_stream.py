"""``KulResUNet.core`` on one large patch, in slabs: the same arithmetic, a fraction of the memory.

The lesion network's instance norm needs each map's mean and std over the whole patch before the next
convolution can run, and its full-resolution maps reach 1 GB each on a liver-sized patch. Here every
residual block runs in two passes over slabs along the first axis (contiguous in the channels-last
layout that also makes oneDNN's 3D convolutions 2x faster): pass A computes the block's first
convolution and its statistics, pass B normalises, runs the second convolution, adds the cropped,
projected shortcut and hands the slab on. What is kept whole:

* the image, and each pathway's pooled input (1/8 of the previous one's voxels);
* each skip, but only the centre region the up path crops it to;
* a block's first convolution output (not for the full-resolution down block, whose first
  convolution is a 1-channel 3x3x1 one, recomputed in pass B instead);
* each up block's output (the next one's input, and for the last one the head's).

The up blocks read their input (skip crop, then the up-sampled features) straight from those, a slab
at a time; the statistics of a concatenation are those of its parts, and an up-sampling by
repetition keeps a map's mean and std. Partial statistics are merged in float64 (Chan et al.).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..models.kul_resunet import KulResUNet
from ..models.kul_unet import EPSILON, NEGATIVE_SLOPE

CHANNELS_LAST = torch.channels_last_3d
SLAB_BYTES = 24 * 2 ** 20  # a slab of the widest map of a block: about this much


class Moments:
    """Per-channel mean and population variance of a map seen in slabs (merged in float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        n = x[0, 0].numel()
        var, mean = torch.var_mean(x, dim=(0, 2, 3, 4), correction=0)
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    @classmethod
    def of(cls, *parts: "Moments") -> "Moments":
        """The moments of the channel-wise concatenation of maps of the same size."""
        out = cls()
        out.count = parts[0].count
        out.mean = torch.cat([p.mean for p in parts])  # type: ignore[misc]
        out.m2 = torch.cat([p.m2 * (out.count / p.count) for p in parts])  # type: ignore[misc]
        return out

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / (std + eps)) shaped for broadcasting over (1, C, X, Y, Z), float32."""
        std = (self.m2 / self.count).sqrt()  # type: ignore[operator]
        shape = (1, -1, 1, 1, 1)
        return self.mean.float().view(shape), (1.0 / (std + EPSILON)).float().view(shape)  # type: ignore[union-attr]


def apply_norm(x: torch.Tensor, moments: Moments | None, reuse: bool) -> torch.Tensor:
    if moments is None:
        return x
    mean, scale = moments.affine()
    out = x.sub_(mean) if reuse else x - mean
    return F.leaky_relu_(out.mul_(scale), NEGATIVE_SLOPE)


def slabs(length: int, rows: int) -> list[tuple[int, int]]:
    rows = max(2, rows - rows % 2)  # even: pooled slabs stay whole
    return [(a, min(length, a + rows)) for a in range(0, length, rows)]


def rows_for(shape: tuple[int, ...], channels: int) -> int:
    per_row = channels * int(np.prod(shape[1:])) * 4
    return max(2, SLAB_BYTES // max(1, per_row))


def centre(have: int, want: int) -> slice:
    start = (have - want) // 2
    return slice(start, start + want)


Source = Callable[[int, int], torch.Tensor]  # rows [a, b) along axis 0 of a block's input


def run_block(block, source: Source, shape: tuple[int, int, int], channels: int, moments: Moments | None,
              consume: Callable[[int, int, torch.Tensor], None], keep_first: bool) -> None:
    """One residual block over an input of ``shape`` (``channels`` wide) read from ``source``.

    ``moments``: the input's, for the norm before the first convolution (None: no norm there).
    ``consume(a, b, out)``: output rows [a, b) along axis 0, in order."""
    conv_a, conv_b = block.convs
    ka, kb = conv_a.kernel_size, conv_b.kernel_size
    shape_a = tuple(n - k + 1 for n, k in zip(shape, ka))
    shape_b = tuple(n - k + 1 for n, k in zip(shape_a, kb))
    halo = kb[0] - 1
    first = Moments()
    kept = None
    if keep_first:
        kept = torch.empty((1, conv_a.out_channels, *shape_a)).to(memory_format=CHANNELS_LAST)
    widest = max(channels, conv_a.out_channels, conv_b.out_channels)
    for a, b in slabs(shape_a[0], rows_for(shape, widest)):
        u = conv_a(apply_norm(source(a, b + ka[0] - 1), moments, reuse=False))
        first.add(u)
        if kept is not None:
            kept[:, :, a:b] = u
    cut = [centre(n, m) for n, m in zip(shape, shape_b)]
    for a, b in slabs(shape_b[0], rows_for(shape, widest)):
        if kept is not None:
            u = kept[:, :, a:b + halo]
        else:
            u = conv_a(apply_norm(source(a, b + halo + ka[0] - 1), moments, reuse=False))
        v = conv_b(apply_norm(u, first, reuse=kept is None))
        shortcut = source(a + cut[0].start, b + cut[0].start)[:, :, :, cut[1], cut[2]]
        if block.project is not None:
            shortcut = block.project(shortcut)
        consume(a, b, v.add_(shortcut))
    del kept


class StreamedResUNet:
    """``logits(image)`` = ``KulResUNet.core`` on the image as one patch (float32, CPU)."""

    def __init__(self, module: KulResUNet) -> None:
        if module.dims != 3:
            raise ValueError("the streamed evaluation is for the 3D network")
        self.module = module.eval().to(memory_format=CHANNELS_LAST)

    @torch.inference_mode()
    def logits(self, image: np.ndarray) -> np.ndarray:
        m = self.module
        for axis, n in enumerate(image.shape):
            if m.output_size(n, axis) is None:
                raise ValueError(f"input {list(image.shape)} is not a size the lesion network takes")
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        x = x.contiguous(memory_format=CHANNELS_LAST)
        level_input, level_moments = x, None
        skips: list[tuple[torch.Tensor, Moments]] = []
        bottom = None
        # the sizes first: the up path's decide the skip crops (what the down path keeps of each level)
        down_shapes = []
        shape = tuple(image.shape)
        for level, block in enumerate(m.down):
            if level:
                shape = tuple(s // 2 for s in down_shapes[-1][1])
            out = tuple(s - sum(c.kernel_size[i] - 1 for c in block.convs) for i, s in enumerate(shape))
            down_shapes.append((shape, out))
        up_shapes = []
        prev = down_shapes[-1][1]
        for k, block in enumerate(m.up):
            level = len(m.down) - 2 - k
            concat = tuple(2 * s for s in prev)
            out = tuple(s - sum(c.kernel_size[i] - 1 for c in block.convs) for i, s in enumerate(concat))
            up_shapes.append((level, concat, out))
            prev = out
        skip_size = {level: concat for level, concat, _ in up_shapes}
        for level, block in enumerate(m.down):
            in_shape, out_shape = down_shapes[level]
            channels = block.convs[0].in_channels
            width = block.convs[1].out_channels
            last = level == len(m.down) - 1
            if last:
                bottom = torch.empty((1, width, *out_shape)).to(memory_format=CHANNELS_LAST)
                keep = {"full": bottom}
            else:
                crop = [centre(o, s) for o, s in zip(out_shape, skip_size[level])]
                skip = torch.empty((1, width, *skip_size[level])).to(memory_format=CHANNELS_LAST)
                pooled = torch.empty((1, width, *(s // 2 for s in out_shape))).to(memory_format=CHANNELS_LAST)
                keep = {"skip": skip, "crop": crop, "pooled": pooled}

            def consume(a: int, b: int, out: torch.Tensor, keep=keep) -> None:
                if "full" in keep:
                    keep["full"][:, :, a:b] = out
                    return
                crop = keep["crop"]
                lo, hi = max(a, crop[0].start), min(b, crop[0].stop)
                if lo < hi:
                    keep["skip"][:, :, lo - crop[0].start:hi - crop[0].start] = out[:, :, lo - a:hi - a, crop[1], crop[2]]
                keep["pooled"][:, :, a // 2:b // 2] = F.max_pool3d(out, 2)

            source = (lambda a, b, t=level_input: t[:, :, a:b])
            run_block(block, source, in_shape, channels, level_moments, consume, keep_first=level > 0)
            if not last:
                moments = Moments()
                moments.add(keep["skip"])
                skips.append((keep["skip"], moments))
                level_input = keep["pooled"]
                level_moments = Moments()
                level_moments.add(level_input)
            del keep
        prev_map = bottom
        prev_moments = Moments()
        prev_moments.add(prev_map)
        for (level, concat, out_shape), block in zip(up_shapes, m.up):
            skip, skip_moments = skips.pop()
            moments = Moments.of(skip_moments, prev_moments)
            result = torch.empty((1, block.convs[1].out_channels, *out_shape)).to(memory_format=CHANNELS_LAST)

            def source(a: int, b: int, skip=skip, prev=prev_map) -> torch.Tensor:
                lo, hi = a // 2, (b + 1) // 2
                up = prev[:, :, lo:hi]
                for axis in (2, 3, 4):
                    up = up.repeat_interleave(2, dim=axis)
                up = up[:, :, a - 2 * lo:b - 2 * lo]
                return torch.cat([skip[:, :, a:b], up], dim=1).contiguous(memory_format=CHANNELS_LAST)

            def consume(a: int, b: int, out: torch.Tensor, result=result) -> None:
                result[:, :, a:b] = out

            run_block(block, source, concat, block.convs[0].in_channels, moments, consume, keep_first=True)
            del skip, prev_map
            prev_map = result
            prev_moments = Moments()
            prev_moments.add(prev_map)
        head_in = apply_norm(prev_map, prev_moments, reuse=True)
        logit = m.head(head_in)
        return logit[0, 0].contiguous().numpy()


__all__ = ["StreamedResUNet", "Moments"]
