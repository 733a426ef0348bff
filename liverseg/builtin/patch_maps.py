"""The numpy pieces of the staged computation (``staged.py``): boxes in patch coordinates, the
original's max-pooling and "linear" up-sampling (and the exact statistics of an up-sampled map), and
per-channel moments merged part by part."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Box = tuple[slice, slice, slice]
Stats = tuple[np.ndarray, np.ndarray]  # per-channel (mean, std), float32
# conv(name, x, same=False, norm=None, mask=None, moments=False, pool=0) -> y, or (y, extras) when moments
# or pool are asked for (extras: "sum", "sumsq" float64 per channel, "pooled"); "NAME@2d" takes (N, C, K, X, Y)
ConvFunction = Callable[..., object]


# ----------------------------------------------------------------------------- boxes and small helpers

def grow(box: Sequence[slice], by: Sequence[int]) -> Box:
    return tuple(slice(b.start - g, b.stop + g) for b, g in zip(box, by))  # type: ignore[return-value]


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


__all__ = ["Box", "Stats", "ConvFunction", "grow", "intersect", "box_size", "is_empty", "contains",
           "paste", "halo", "max_pool", "upsample_matrix", "upsample", "upsampled_stats", "Moments", "stats_of",
           "sums_stats", "centre_crop"]
