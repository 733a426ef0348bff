"""The staged computation up to the level-0 up block (see ``staged.py``): the network's layout, maps
that are constant away from a computed box, the level-0 down path, the lower levels, and the level-0 up
block's input."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .patch_maps import (Box, ConvFunction, Moments, Stats, box_size, centre_crop, contains, grow, halo, intersect,
                         is_empty, max_pool, paste, stats_of, sums_stats, upsample, upsampled_stats)


# ----------------------------------------------------------------------------- the network's layout

@dataclass(frozen=True)
class Layout:
    """What the stages need to know of a ``KulUNet``: conv names per block, factor, levels, kernels."""

    factor: int
    levels: int
    down: tuple[tuple[str, ...], ...]  # per level 0 .. L-1, its conv names in order
    up: tuple[tuple[str, ...], ...]  # per up level L-2 .. 0, its conv names
    head: str
    kernels: dict[str, tuple[int, ...]]

    @classmethod
    def from_weights(cls, weights: dict[str, np.ndarray], factor: int) -> "Layout":
        names = sorted({k[: -len(".conv.weight")] for k in weights if k.endswith(".conv.weight")})

        def block(prefix: str) -> tuple[tuple[str, ...], ...]:
            levels: dict[int, list[str]] = {}
            for name in names:
                parts = name.split(".")
                if parts[0] == prefix:
                    levels.setdefault(int(parts[1]), []).append(name)
            return tuple(tuple(sorted(v, key=lambda n: int(n.split(".")[2]))) for _, v in sorted(levels.items()))

        kernels = {n: tuple(int(k) for k in weights[f"{n}.conv.weight"].shape[2:]) for n in names}
        return cls(factor, len(block("down")), block("down"), block("up"), "head", kernels)

    # margin and size_unit mirror KulUNet's: this module runs on the ONNX Runtime path, which must not
    # import liverseg.models (PyTorch); tests/test_builtin_network.py compares the two computations.
    @property
    def margin(self) -> int:
        """Voxels per side that the output loses to the up-sampling (13 for the liver model)."""
        return sum((self.factor - 1) * self.factor ** level for level in range(self.levels - 1)) // 2

    @property
    def size_unit(self) -> int:
        return self.factor ** (self.levels - 1)


# ----------------------------------------------------------------------------- fields with a constant rest

@dataclass
class ClassField:
    """A (C, *shape) map that is constant away from its border and from a computed box.

    ``table[:, i, j, k]`` is its value at a voxel whose class along each axis is 0 (first index), 1
    (inner) or 2 (last index); ``values`` over ``box`` replace that pattern.
    """

    table: np.ndarray  # (C, 3, 3, 3)
    shape: tuple[int, int, int]
    box: Box
    values: np.ndarray  # (C, *box)
    box_sums: tuple[np.ndarray, np.ndarray] | None = None  # float64 sum and sum of squares of ``values``

    @property
    def constant(self) -> np.ndarray:
        return self.table[:, 1, 1, 1]

    def fill(self, box: Sequence[slice]) -> np.ndarray:
        out = np.empty((self.table.shape[0], *box_size(box)), dtype=np.float32)
        out[...] = self.constant.reshape(-1, 1, 1, 1)
        parts = []  # per axis: (class, slice of out) for the inner run, the first voxel, the last voxel
        for b, n in zip(box, self.shape):
            size = b.stop - b.start
            axis_parts = [(1, slice(1 if b.start == 0 else 0, size - (1 if b.stop == n else 0)))]
            if b.start == 0:
                axis_parts.append((0, slice(0, 1)))
            if b.stop == n:
                axis_parts.append((2, slice(size - 1, size)))
            parts.append(axis_parts)
        for c0, s0 in parts[0]:
            for c1, s1 in parts[1]:
                for c2, s2 in parts[2]:
                    if (c0, c1, c2) != (1, 1, 1):
                        out[:, s0, s1, s2] = self.table[:, c0, c1, c2].reshape(-1, 1, 1, 1)
        paste(out, box, self.values, self.box)
        return out

    def pooled_table(self) -> np.ndarray:
        """The class table of this field max-pooled (a first cell holds fine classes 0 and 1, ...)."""
        table = np.empty_like(self.table)
        classes = {0: (0, 1), 1: (1,), 2: (1, 2)}
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    sub = self.table[:, classes[i]][:, :, classes[j]][:, :, :, classes[k]]
                    table[:, i, j, k] = sub.reshape(sub.shape[0], -1).max(axis=1)
        return table

    def whole(self) -> np.ndarray:
        return self.fill(tuple(slice(0, n) for n in self.shape))


# ----------------------------------------------------------------------------- the stages

def level0_down(conv: ConvFunction, layout: Layout, x: np.ndarray, content: Box,
                patch: tuple[int, int, int], slab_voxels: int = 1 << 18) -> tuple[ClassField, ClassField]:
    """The level-0 skip (output of the second convolution) of a patch that is zero outside ``content``,
    and its max-pooled version (the level-1 input), both as ``ClassField``.

    The second convolution runs in slabs of whole pooling cells (about ``slab_voxels`` outputs each), so
    its input never exists whole: 0.3 GB less at the peak on a 512x512x119 CT."""
    first, second = layout.down[0]
    f = layout.factor
    h_first, h_second = halo(layout.kernels[first]), halo(layout.kernels[second])
    region1 = grow(content, h_first)
    padded = np.pad(x, [(0, 0)] + [(2 * h, 2 * h) for h in h_first])  # the patch's zeros around the content
    h1, sums = conv(first, padded[None], moments=True)
    h1 = h1[0]
    bias = conv(first, np.zeros((1, x.shape[0], *layout.kernels[first]), np.float32))[0, :, 0, 0, 0]
    moments = Moments(h1.shape[0])
    moments.add_sums(float(np.prod(box_size(region1))), sums["sum"], sums["sumsq"])
    moments.add_constant(bias, float(np.prod(patch)) - float(np.prod(box_size(region1))))
    norm = moments.stats()
    # the skip is computed on the pooling cells that the content can reach, so that pooling is exact there
    reach = grow(region1, h_second)
    cells = tuple(slice(b.start // f, -(-b.stop // f)) for b in reach)
    out_box = tuple(slice(c.start * f, c.stop * f) for c in cells)
    channels = int(layout_channels(conv, second, h1.shape[0]))
    values = np.empty((channels, *box_size(out_box)), dtype=np.float32)
    pooled_values = np.empty((channels, *box_size(cells)), dtype=np.float32)
    total, squares = np.zeros(channels), np.zeros(channels)
    rows = f * max(1, slab_voxels // (f * int(np.prod(box_size(out_box)[1:]))))  # whole pooling cells per slab
    for r0 in range(0, box_size(out_box)[0], rows):
        r1 = min(box_size(out_box)[0], r0 + rows)
        part = (slice(out_box[0].start + r0, out_box[0].start + r1), *out_box[1:])
        source = grow(part, h_second)
        field = np.empty((h1.shape[0], *box_size(source)), dtype=np.float32)
        field[...] = bias.reshape(-1, 1, 1, 1)  # the constant first-convolution output outside the content
        paste(field, source, h1, region1)
        out, extras = conv(second, field[None], norm=norm, pool=f, moments=True)
        values[:, r0:r1] = out[0]
        pooled_values[:, r0 // f: r1 // f] = extras["pooled"][0]
        total += extras["sum"]
        squares += extras["sumsq"]
    del h1
    block = np.empty((1, bias.shape[0], 3, 3, 3), dtype=np.float32)
    block[...] = bias.reshape(1, -1, 1, 1, 1)
    shell = conv(second, block, same=True, norm=norm)[0]
    skip = ClassField(shell, patch, out_box, values)  # type: ignore[arg-type]
    skip.box_sums = (total, squares)
    coarse_shape = tuple(n // f for n in patch)
    pooled = ClassField(skip.pooled_table(), coarse_shape, cells, pooled_values)  # type: ignore[arg-type]
    return skip, pooled


def layout_channels(conv: ConvFunction, name: str, in_channels: int) -> int:
    """Output channels of a convolution, from a one-voxel call (the layout records names and kernels)."""
    weights = getattr(conv, "weights", None)
    if weights is not None:
        return int(weights[f"{name}.conv.weight"].shape[0])
    return int(conv(name, np.zeros((1, in_channels, 3, 3, 3), np.float32), same=True).shape[1])


def lower_levels(conv: ConvFunction, layout: Layout, pooled: ClassField) -> np.ndarray:
    """Levels 1 .. L-1, down and back up to the output of level 1's up block: whole maps, exact."""
    skips = []
    x = pooled.whole()
    norm = stats_of(x)
    for level in range(1, layout.levels):
        if level > 1:
            x = max_pool(x, layout.factor)
            norm = stats_of(x)
        for name in layout.down[level]:
            y, sums = conv(name, x[None], same=True, norm=norm, moments=True)
            x = y[0]
            norm = sums_stats(sums, float(np.prod(x.shape[1:])), x.shape[0])
        skips.append(x)
    x = skips.pop()
    for names in layout.up[:-1]:  # up levels L-2 .. 1
        x = upsample(x, layout.factor)
        x = np.concatenate([centre_crop(skips.pop(), x.shape[1:]), x])
        norm = stats_of(x)
        for name in names:
            y, sums = conv(name, x[None], same=True, norm=norm, moments=True)
            x = y[0]
            norm = sums_stats(sums, float(np.prod(x.shape[1:])), x.shape[0])
    return x


@dataclass
class UpInput:
    """The level-0 up block's input ``concat(skip, upsample(v))`` over the output region (raw: the
    convolution normalises it with ``stats``), zero outside the region (its 'same' padding)."""

    skip: ClassField
    v: np.ndarray
    factor: int
    region: Box  # patch coordinates
    stats: Stats

    @classmethod
    def build(cls, skip: ClassField, v: np.ndarray, factor: int, margin: int) -> "UpInput":
        region = tuple(slice(margin, n - margin) for n in skip.shape)
        inside = intersect(skip.box, region)
        moments = Moments(skip.values.shape[0])
        # the region holds no shell voxels: the computed part + the inner constant
        if skip.box_sums is not None and contains(region, skip.box):
            moments.add_sums(float(np.prod(box_size(skip.box))), *skip.box_sums)
        elif not is_empty(inside):
            moments.add(skip.fill(inside), 0)
        moments.add_constant(skip.constant, float(np.prod(box_size(region))) - float(np.prod(box_size(inside))))
        skip_mean, skip_std = moments.stats()
        up_mean, up_std = upsampled_stats(v, factor)
        return cls(skip, v, factor, region, (np.concatenate([skip_mean, up_mean]), np.concatenate([skip_std, up_std])))

    def __post_init__(self) -> None:
        self._planes: dict[int, np.ndarray] = {}  # coarse S index -> that coarse slice up-sampled in-plane

    @property
    def channels(self) -> int:
        return self.skip.values.shape[0] + self.v.shape[0]

    def _plane(self, index: int) -> np.ndarray:
        """Coarse slice ``index`` of ``v`` up-sampled in-plane (C, X, Y), the last few kept."""
        if index not in self._planes:
            if len(self._planes) >= 6:
                self._planes.pop(next(iter(self._planes)))
            self._planes[index] = upsample(self.v[..., index], self.factor)
        return self._planes[index]

    def write_row(self, out: np.ndarray, z: int) -> None:
        """The raw input of slice ``z`` (patch coordinates, inside the region) over the whole region in-plane
        into ``out`` (C, X, Y): up-sampling along S blends two in-plane up-sampled coarse slices."""
        c = self.skip.values.shape[0]
        out[:c] = self.skip.fill((*self.region[:2], slice(z, z + 1)))[..., 0]
        index, r = divmod(z - self.region[2].start, self.factor)
        if r == 0:
            out[c:] = self._plane(index)
        else:
            np.multiply(self._plane(index), (self.factor - r) / self.factor, out=out[c:])
            out[c:] += self._plane(index + 1) * np.float32(r / self.factor)

    def write(self, out: np.ndarray, box: Sequence[slice]) -> None:
        """The raw input over ``box`` (inside the region) into ``out`` (C, *box)."""
        c = self.skip.values.shape[0]
        out[:c] = self.skip.fill(box)
        rows = [slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, self.region)]
        out[c:] = upsample(self.v, self.factor, rows)

    def raw(self, box: Sequence[slice]) -> tuple[np.ndarray, np.ndarray | None]:
        """(C, *box) raw input and its (1, *box) mask (1 inside the region; None when all of it is)."""
        out = np.zeros((self.channels, *box_size(box)), dtype=np.float32)
        if contains(self.region, box):
            self.write(out, box)
            return out, None
        inner = intersect(box, self.region)
        mask = np.zeros((1, *box_size(box)), dtype=np.float32)
        if is_empty(inner):
            return out, mask
        where = tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inner, box))
        self.write(out[(slice(None), *where)], inner)
        mask[(slice(None), *where)] = 1.0
        return out, mask


__all__ = ["Layout", "ClassField", "level0_down", "layout_channels", "lower_levels", "UpInput"]
