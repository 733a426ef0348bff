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

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .patch_maps import ConvFunction, Moments, Stats, box_size, contains, grow, halo
from .staged_levels import Layout, UpInput, level0_down, lower_levels

COMPACT_ABOVE = 48  # sampled slices kept as float16 beyond this many (their float32 sums are exact still)


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
__all__ = ["StagedPatch", "COMPACT_ABOVE"]
