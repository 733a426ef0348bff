"""The KU Leuven U-Net on a large zero-padded patch, computed only where it matters.

The original feeds one fixed 189 x 162 x 162 patch (3 mm) whose content is the body box and whose rest
is zeros; its "instance normalisation" takes the mean and std of every feature map over the whole
patch, padding included, so the padding changes every output. Computing the whole patch costs about
460 G multiply-adds (20-50 s on two CPU threads, 4 GB of feature maps). ``StagedPatch`` computes the
same function with a fraction of that, stage by stage (``models.kul_unet.KulUNet``'s layout; the
convolutions, each with the norm and LeakyReLU in front, by a ``conv`` callable such as
``runtime.ConvBank``, which also returns the per-channel sums the next norm needs; numpy in between):

* level-0 down path (full resolution): the input is zero outside the content, so the first
  convolution is its bias there, and after the norm (exact statistics: computed part + constant rest)
  and the second convolution, a constant again, except on the patch's outer shell, where the zero
  padding of a 'same' convolution leaves other constants (one per face, edge and corner class: read
  off the same convolution on a 3x3x3 constant block). Only the content box plus the two kernels'
  reach is convolved: exact (``ClassField``);
* levels 1 and below (1/27 of the voxels and fewer): computed whole, exactly;
* level-0 up path (most of the cost: an 80 -> 40 channel 3x3x3 convolution at full resolution): its
  first norm's statistics are exact (the skip part as above, the up-sampled part from the coarser
  map through the separable interpolation's Gram matrices). The statistics of the two later norms
  are estimated from sampled axial slices (the later convolutions are in-plane or need one slice on
  either side, so each sampled slice is computed exactly and on its own): the per-slice sums are
  integrated along S, each sampled slice standing for the slices nearer to it than to any other
  (the content's first and last slice are walls: the features change abruptly there). The output is
  then computed exactly, given those statistics, in a region of interest (``logits(box)``).

Sampling every slice gives the full computation: ``tests/test_builtin_network.py`` compares it with
``KulUNet`` to float precision, and ``scripts/check_kul_port.py`` measures the effect of sampling on
real CTs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]
COMPACT_ABOVE = 48  # sampled slices kept as float16 beyond this many (their float32 sums are exact still)
Stats = tuple[np.ndarray, np.ndarray]  # per-channel (mean, std), float32
# conv(name, x, same=False, norm=None, mask=None, moments=False, pool=0) -> y, or (y, extras) when moments
# or pool are asked for (extras: "sum", "sumsq" float64 per channel, "pooled"); "NAME@2d" takes (N, C, K, X, Y)
ConvFunction = Callable[..., object]


# ----------------------------------------------------------------------------- boxes and small helpers

def grow(box: Sequence[slice], by: Sequence[int]) -> Box:
    return tuple(slice(b.start - g, b.stop + g) for b, g in zip(box, by))  # type: ignore[return-value]


def clip_box(box: Sequence[slice], shape: Sequence[int]) -> Box:
    return tuple(slice(max(0, b.start), min(n, b.stop)) for b, n in zip(box, shape))  # type: ignore[return-value]


def intersect(a: Sequence[slice], b: Sequence[slice]) -> Box:
    return tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


def box_size(box: Sequence[slice]) -> tuple[int, ...]:
    return tuple(max(0, b.stop - b.start) for b in box)


def is_empty(box: Sequence[slice]) -> bool:
    return any(b.stop <= b.start for b in box)


def contains(outer: Sequence[slice], inner: Sequence[slice]) -> bool:
    return all(o.start <= i.start and i.stop <= o.stop for o, i in zip(outer, inner))


def paste(target: np.ndarray, target_box: Sequence[slice], source: np.ndarray, source_box: Sequence[slice]) -> None:
    """Copy the overlap of two boxes (one coordinate system) from ``source`` to ``target``, both (C, *box)."""
    overlap = intersect(target_box, source_box)
    if is_empty(overlap):
        return
    t_index = (slice(None), *(slice(o.start - t.start, o.stop - t.start) for o, t in zip(overlap, target_box)))
    s_index = (slice(None), *(slice(o.start - s.start, o.stop - s.start) for o, s in zip(overlap, source_box)))
    target[t_index] = source[s_index]


def halo(kernel: Sequence[int]) -> tuple[int, ...]:
    return tuple(k // 2 for k in kernel)


def max_pool(x: np.ndarray, f: int) -> np.ndarray:
    """Max over non-overlapping ``f``-wide blocks of a (C, *spatial) map (sizes are multiples of ``f``)."""
    for axis in range(1, x.ndim):
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, None, f)
        out = x[tuple(index)].copy()
        for k in range(1, f):
            index[axis] = slice(k, None, f)
            np.maximum(out, x[tuple(index)], out=out)
        x = out
    return x


def upsample_matrix(n: int, f: int) -> np.ndarray:
    """Repeat ``f`` times then a stride-1 ``f``-wide mean: the (f*n - f + 1, n) linear map of one axis."""
    size = f * n - (f - 1)
    matrix = np.zeros((size, n), dtype=np.float64)
    for o in range(size):
        for t in range(o, o + f):
            matrix[o, t // f] += 1.0 / f
    return matrix


def upsample(x: np.ndarray, f: int, rows: Sequence[slice] | None = None) -> np.ndarray:
    """The original's "linear" up-sampling of a (C, *spatial) map, optionally only output ``rows`` per axis.

    Output row ``o = f * i + r`` is ``((f - r) * x[i] + r * x[i + 1]) / f``; the most restricted axis is
    done first, so the intermediate arrays stay small.
    """
    sizes = [f * n - (f - 1) for n in x.shape[1:]]
    wanted = [slice(0, n) if rows is None else rows[a] for a, n in enumerate(sizes)]
    order = sorted(range(len(sizes)), key=lambda a: (wanted[a].stop - wanted[a].start) / x.shape[1 + a])
    out = x
    for a in order:
        o = np.arange(wanted[a].start, wanted[a].stop)
        low = o // f
        high = np.minimum(low + 1, x.shape[1 + a] - 1)
        shape = [1] * out.ndim
        shape[1 + a] = -1
        lo_part = np.take(out, low, axis=1 + a)
        hi_part = np.take(out, high, axis=1 + a)
        hi_part -= lo_part
        hi_part *= ((o % f) / f).astype(np.float32).reshape(shape)
        lo_part += hi_part
        out = lo_part
    return np.ascontiguousarray(out, dtype=np.float32)


class Moments:
    """Per-channel count, mean and sum of squared deviations, merged part by part (Chan et al.)."""

    def __init__(self, channels: int) -> None:
        self.count = 0.0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def merge(self, count: float, mean: np.ndarray, m2: np.ndarray) -> None:
        if count <= 0:
            return
        total = self.count + count
        delta = np.asarray(mean, dtype=np.float64) - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * count / total)
        self.count = total

    def add(self, values: np.ndarray, channel_axis: int = 0) -> None:
        axes = tuple(a for a in range(values.ndim) if a != channel_axis)
        count = float(values.size // values.shape[channel_axis])
        if count == 0:
            return
        mean = values.sum(axis=axes, dtype=np.float64) / count
        shape = [1] * values.ndim
        shape[channel_axis] = -1
        centred = values - mean.astype(np.float32).reshape(shape)
        np.square(centred, out=centred)
        self.merge(count, mean, centred.sum(axis=axes, dtype=np.float64))

    def add_sums(self, count: float, total: np.ndarray, squares: np.ndarray, weight: float = 1.0) -> None:
        """A part given by its float64 sum and sum of squares (``weight``: how many parts it stands for)."""
        if count <= 0:
            return
        mean = total / count
        self.merge(count * weight, mean, np.maximum(squares - count * mean * mean, 0.0) * weight)

    def add_constant(self, value: np.ndarray, count: float) -> None:
        self.merge(float(count), np.asarray(value, dtype=np.float64), np.zeros_like(self.mean))

    def stats(self) -> Stats:
        return self.mean.astype(np.float32), np.sqrt(np.maximum(self.m2 / self.count, 0.0)).astype(np.float32)


def stats_of(x: np.ndarray) -> Stats:
    """Mean and population std of every channel of a whole (C, *spatial) map."""
    moments = Moments(x.shape[0])
    moments.add(x, 0)
    return moments.stats()


def sums_stats(out: dict, count: float, channels: int) -> Stats:
    moments = Moments(channels)
    moments.add_sums(count, out["sum"], out["sumsq"])
    return moments.stats()


def centre_crop(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    offset = [(h - w) // 2 for h, w in zip(x.shape[1:], shape)]
    return x[(slice(None), *(slice(o, o + n) for o, n in zip(offset, shape)))]


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


def upsampled_stats(v: np.ndarray, factor: int) -> Stats:
    """Exact per-channel mean and std of ``upsample(v)`` without forming it (separable Gram matrices)."""
    mats = [upsample_matrix(n, factor) for n in v.shape[1:]]
    col = [m.sum(axis=0) for m in mats]
    count = float(np.prod([m.shape[0] for m in mats]))
    v64 = v.astype(np.float64)
    total = np.einsum("cxyz,x,y,z->c", v64, *col)
    g = v64
    for axis, m in enumerate(mats, start=1):
        g = np.moveaxis(np.tensordot(m.T @ m, g, axes=([1], [axis])), 0, axis)
    squares = np.einsum("cxyz,cxyz->c", v64, g)
    mean = total / count
    return mean.astype(np.float32), np.sqrt(np.maximum(squares / count - mean * mean, 0.0)).astype(np.float32)


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


class StagedPatch:
    """One patch, computed up to the level-0 up block at construction; then ``sample`` slices,
    ``finalize`` the sampled statistics and read the sampled slices' logits, and ``logits(box)``.

    ``image`` (X, Y, Z) sits centred in the zero-padded ``patch`` as the original's sampler places it
    (image voxel ``n // 2`` at patch voxel ``P // 2``). Slice indices and boxes given or returned are
    in image coordinates.
    """

    def __init__(self, conv: ConvFunction, layout: Layout, image: np.ndarray, patch: Sequence[int]) -> None:
        self.conv, self.layout = conv, layout
        self.patch = tuple(int(p) for p in patch)
        self.shape = tuple(int(n) for n in image.shape)
        margin = layout.margin
        before = [p // 2 - n // 2 for p, n in zip(self.patch, self.shape)]
        if any(b < margin or p - n - b < margin or p % layout.size_unit
               for b, p, n in zip(before, self.patch, self.shape)):
            raise ValueError(f"an image of {list(self.shape)} does not fit the patch {list(self.patch)}: sizes "
                             f"must be multiples of {layout.size_unit} leaving {margin} voxels on each side")
        self.offset = before
        self.content = tuple(slice(b, b + n) for b, n in zip(before, self.shape))
        skip, pooled = level0_down(conv, layout, image[None].astype(np.float32, copy=False), self.content, self.patch)
        v = lower_levels(conv, layout, pooled)
        self.up_input = UpInput.build(skip, v, layout.factor, margin)
        self.first, self.second = layout.up[-1]
        self.region = self.up_input.region
        self._u1: dict[int, np.ndarray] = {}  # patch z -> first up convolution on that slice (C, X, Y)
        self._u1_sums: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.stats_second: Stats | None = None
        self.stats_head: Stats | None = None

    # --- coordinates
    def output_slices(self) -> range:
        """Image S indices that the patch's output covers (all of the image)."""
        return range(0, self.shape[2])

    def region_slices(self) -> range:
        return range(self.region[2].start - self.offset[2], self.region[2].stop - self.offset[2])

    def _region_mask(self, box: Sequence[slice]) -> np.ndarray:
        inside = [(np.arange(b.start, b.stop) >= r.start) & (np.arange(b.start, b.stop) < r.stop)
                  for b, r in zip(box, self.region)]
        return (inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]).astype(np.float32)[None]

    # --- sampled slices
    def sample(self, z_image: Iterable[int], group: int = 3) -> None:
        """Compute the up block's first convolution on these slices (image S indices inside the region).

        Slices go to ONNX Runtime ``group`` at a time; the next group's input is assembled in a second
        thread meanwhile (numpy work that would otherwise leave a core idle)."""
        h1 = halo(self.layout.kernels[self.first])[2]
        todo = sorted({int(z) + self.offset[2] for z in z_image} - set(self._u1))
        chunks = [todo[i:i + group] for i in range(0, len(todo), group)]
        # many slices (every slice of a short image): keep them as float16, 3.5 -> 1.7 MB each; the sums
        # that set the statistics come from the float32 output all the same
        store = np.float16 if len(self._u1) + len(todo) > COMPACT_ABOVE else np.float32

        def assemble(chunk: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
            batch = np.zeros((len(chunk), self.up_input.channels, 2 * h1 + 1, *box_size(self.region[:2])),
                             dtype=np.float32)
            masks = np.ones((len(chunk), 1, 2 * h1 + 1, 1, 1), dtype=np.float32)
            for i, z in enumerate(chunk):
                for k in range(2 * h1 + 1):
                    row = z - h1 + k
                    if self.region[2].start <= row < self.region[2].stop:
                        self.up_input.write_row(batch[i, :, k], row)
                    else:  # beyond the region: the convolution's zero padding
                        masks[i, 0, k] = 0.0
            return batch, (masks if (masks == 0).any() else None)

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(assemble, chunks[0]) if chunks else None
            for n, chunk in enumerate(chunks):
                batch, masks = pending.result()
                pending = pool.submit(assemble, chunks[n + 1]) if n + 1 < len(chunks) else None
                y, sums = self.conv(self.first + "@2d", batch, same=True, norm=self.up_input.stats, mask=masks,
                                    moments=True, per_sample=True)
                del batch
                for i, z in enumerate(chunk):
                    self._u1[z] = y[i].astype(store, copy=False)
                    self._u1_sums[z] = (sums["sum"][i], sums["sumsq"][i])
        self.stats_second = self.stats_head = None

    def _weights(self, zs: Sequence[int]) -> dict[int, float]:
        """How many slices of the region each sampled slice stands for: those nearer to it than to any
        other sampled slice, with the image's first and last slice as walls (the features change
        abruptly there), i.e. a midpoint-rule integral of the per-slice sums along S."""
        region = self.region[2]
        walls = sorted({region.start, region.stop, self.content[2].start, self.content[2].stop})
        weights: dict[int, float] = {}
        for low, high in zip(walls, walls[1:]):
            inside = [z for z in zs if low <= z < high]
            if not inside:
                continue
            edges = [low] + [(a + b + 1) / 2.0 for a, b in zip(inside, inside[1:])] + [high]
            for z, a, b in zip(inside, edges, edges[1:]):
                weights[z] = b - a
        uncovered = (region.stop - region.start) - sum(weights.values())
        if uncovered > 0:  # an interval without samples: spread its slices over all samples
            for z in weights:
                weights[z] *= (region.stop - region.start) / (region.stop - region.start - uncovered)
        return weights

    def finalize(self, group: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Statistics from the sampled slices; returns (image S indices, logits (K, X, Y, n)) of those
        inside the image."""
        zs = sorted(self._u1)
        weights = self._weights(zs)
        plane = float(np.prod(box_size(self.region[:2])))
        moments = Moments(next(iter(self._u1.values())).shape[0])
        for z in zs:
            moments.add_sums(plane, *self._u1_sums[z], weight=weights[z])
        self.stats_second = moments.stats()
        u2_parts = []
        moments = None
        for first in range(0, len(zs), group):
            chunk = zs[first:first + group]
            batch = np.stack([self._u1[z] for z in chunk]).astype(np.float32, copy=False)[:, :, None]
            u2, sums = self.conv(self.second + "@2d", batch, same=True, norm=self.stats_second, moments=True,
                                 per_sample=True)
            moments = moments or Moments(u2.shape[1])
            for i, z in enumerate(chunk):
                moments.add_sums(plane, sums["sum"][i], sums["sumsq"][i], weight=weights[z])
            u2_parts.append(u2.astype(np.float16) if len(zs) > COMPACT_ABOVE else u2)
        self.stats_head = moments.stats()
        logits = np.concatenate([self.conv(self.layout.head + "@2d", u2.astype(np.float32, copy=False)[:, :, None],
                                           norm=self.stats_head)
                                 for u2 in u2_parts])  # (n, K, X, Y) over the region in-plane
        inplane = [slice(c.start - r.start, c.stop - r.start) for c, r in zip(self.content[:2], self.region[:2])]
        z_image = np.asarray(zs) - self.offset[2]
        keep = (z_image >= 0) & (z_image < self.shape[2])
        logits = logits[keep][:, :, inplane[0], inplane[1]]
        return z_image[keep], np.ascontiguousarray(np.moveaxis(logits, 0, -1))

    # --- the exact output in a box
    def logits(self, box: Sequence[slice], chunk: int = 16) -> np.ndarray:
        """Logits (K, *box) for a box of the image, ``chunk`` slices at a time (after ``finalize``)."""
        if self.stats_second is None or self.stats_head is None:
            raise RuntimeError("StagedPatch.logits needs finalize() first")
        h1, h2 = halo(self.layout.kernels[self.first]), halo(self.layout.kernels[self.second])
        box = tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, self.offset))
        out = []
        for z0 in range(box[2].start, box[2].stop, chunk):
            part = (box[0], box[1], slice(z0, min(box[2].stop, z0 + chunk)))
            grown = grow(part, h2)
            raw, mask = self.up_input.raw(grow(grown, h1))
            u1 = self.conv(self.first, raw[None], norm=self.up_input.stats, mask=None if mask is None else mask[None])
            del raw, mask
            ring = None if contains(self.region, grown) else self._region_mask(grown)[None]
            u2 = self.conv(self.second, u1, norm=self.stats_second, mask=ring)
            out.append(self.conv(self.layout.head, u2, norm=self.stats_head)[0])
        return np.concatenate(out, axis=3)


__all__ = ["Layout", "ClassField", "StagedPatch", "level0_down", "lower_levels", "UpInput", "upsample",
           "upsample_matrix", "upsampled_stats", "stats_of", "Moments", "max_pool"]
