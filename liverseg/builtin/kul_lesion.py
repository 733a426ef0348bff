"""The built-in lesion model's road: the KU Leuven lesion recipe, run inside a liver mask.

The lesion network (``models.kul_resunet.KulResUNet``) sees the CT only inside the liver. Its recipe,
read from ``pyliverlesionseg``'s description and reproduced on liverseg's geometry:

1. **Orientation**: the same canonical R, A, S array as the liver model (exact permutation/flips).
2. **The liver's box**: the canonical box of the liver mask plus ``BOX_MARGIN_MM`` (so that the
   resampler's edge fade and the mask's dilation stay inside it). The original resamples the whole
   image; resampling only this box changes nothing inside it but the grid's phase, which the
   ``Grid`` records, so the way back is exact.
3. **Scaling and resampling**: ``clip(HU / 1000, -0.2, 0.2) * 2.5``, then ``zoom3d`` to 1 x 1 x 3 mm;
   the liver mask resampled the same way and thresholded at 0.5.
4. **The gate**: the mask dilated once by the 3x3x3 18-neighbourhood iterated twice (about 2 mm
   in-plane, 6 mm along z); outside it the input is -0.5; the image is clipped to [-0.5, 0.5] and
   cropped to the gate's box.
5. **Tiles as the original cuts them**: outputs of 92 x 84 x 42 voxels from the crop's first voxel
   on, a last tile flush with the crop's end, each fed its 180 x 172 x 86 input with zeros beyond the
   crop, later tiles overwriting earlier ones. The network's instance norm makes the output depend
   on the tile, so the tiles are the original's; a tile whose output holds no gate voxel is skipped
   (its output would be gated away, step 6).
6. **Back to the input grid**: lesion probability outside the gate is 0; the probability is
   interpolated linearly onto the input's voxels and thresholded at 0.5 (the original thresholds the
   1 x 1 x 3 mm map and interpolates the binary map with "> 0", which dilates by up to a voxel).

``segment_lesions`` returns the lesion mask on the input grid; the two-stage built-in model
(``liver_lesions``) labels liver 1 and lesion 2.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..io.volume import Volume
from ..grid.record import canonical_ornt, to_canonical
from .liver_grid import Grid, interpolate_mask, probability_on_input, scale_hu
from .zoom import zoom3d

log = logging.getLogger(__name__)

NETWORK_SPACING_MM = (1.0, 1.0, 3.0)
TILE_OUTPUT = (92, 84, 42)  # the original's output segment (R, A, S voxels at 1 x 1 x 3 mm)
MARGIN = (44, 44, 22)  # voxels the network's 'valid' convolutions lose per side
TILE_INPUT = tuple(o + 2 * m for o, m in zip(TILE_OUTPUT, MARGIN))  # 180 x 172 x 86
OUTSIDE = -0.5  # the input's value outside the gate
PADDING = 0.0  # the original's sampler pads beyond the crop with zeros
BOX_MARGIN_MM = 12.0
LESION_LABEL = 2  # in the two-stage model's label map (liver 1)
MAX_LESION_FRACTION = 0.5  # lesions above this fraction of the liver region: a warning


def gate_structure() -> np.ndarray:
    """The original's dilation element: the 18-neighbourhood (3x3x3 minus corners) iterated twice."""
    from scipy import ndimage

    return ndimage.iterate_structure(ndimage.generate_binary_structure(3, 2), 2)


def tile_starts(size: int, output: int) -> list[int]:
    """Output starts along one axis as the original cuts them: every ``output`` voxels from 0, and a
    last tile flush with the end (negative when the crop is smaller than one tile). A regular tile that
    the flush tile overwrites wholly (it starts at or after the flush tile's start) is left out: the
    original computes it for nothing."""
    starts = list(range(0, size, output))
    if size % output:
        flush = size - output
        starts = [s for s in starts if s < flush] + [flush]
    return starts


@dataclass
class LesionInput:
    """The network's input crop on the 1 x 1 x 3 mm grid, its gate, and where the crop sits."""

    grid: Grid
    crop: tuple[slice, slice, slice]  # in grid voxels
    image: np.ndarray  # float32, the crop
    gate: np.ndarray  # bool, the crop


def prepare(canonical: np.ndarray, canonical_liver: np.ndarray, spacing: Sequence[float]) -> LesionInput | None:
    """Steps 2-4 of the recipe; None when the liver mask is empty."""
    from scipy import ndimage

    found = ndimage.find_objects(canonical_liver.astype(np.uint8, copy=False))
    if not found or found[0] is None:
        return None
    box = tuple(slice(max(0, b.start - math.ceil(BOX_MARGIN_MM / s)), min(n, b.stop + math.ceil(BOX_MARGIN_MM / s)))
                for b, s, n in zip(found[0], spacing, canonical.shape))
    grid = Grid.direct(box, spacing, NETWORK_SPACING_MM)
    image = zoom3d(scale_hu(np.asarray(canonical[box], dtype=np.float32)), grid.zoom)
    liver = zoom3d(np.asarray(canonical_liver[box], dtype=np.float32), grid.zoom) > 0.5
    gate = ndimage.binary_dilation(liver, structure=gate_structure())
    found = ndimage.find_objects(gate.astype(np.uint8))
    if not found or found[0] is None:
        return None
    crop = found[0]
    image, gate = image[crop], gate[crop]
    image[~gate] = OUTSIDE
    np.clip(image, -0.5, 0.5, out=image)
    return LesionInput(grid, crop, np.ascontiguousarray(image), np.ascontiguousarray(gate))


def tiles(shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """Every tile's output start (x, y, z), in the original's order (x outer, z inner)."""
    return list(itertools.product(*(tile_starts(n, o) for n, o in zip(shape, TILE_OUTPUT))))


def tile_input(image: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """The 180 x 172 x 86 input of the tile whose output starts at ``start``, zeros beyond the crop."""
    out = np.full(TILE_INPUT, PADDING, dtype=np.float32)
    src, dst = [], []
    for s, m, size, n in zip(start, MARGIN, TILE_INPUT, image.shape):
        lo = s - m
        a, b = max(0, lo), min(n, lo + size)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[tuple(dst)] = image[tuple(src)]
    return out


def lesion_probability(prepared: LesionInput, run_tile) -> tuple[np.ndarray, int]:
    """The lesion probability on the crop (0 outside the gate) and the number of tiles run.

    ``run_tile(input (180, 172, 86) float32) -> probability (92, 84, 42)``."""
    shape = prepared.image.shape
    probability = np.zeros(shape, dtype=np.float32)
    count = 0
    for start in tiles(shape):
        out = tuple(slice(max(0, s), min(n, s + o)) for s, o, n in zip(start, TILE_OUTPUT, shape))
        if not prepared.gate[out].any():
            continue
        p = run_tile(tile_input(prepared.image, start))
        probability[out] = p[tuple(slice(o.start - s, o.stop - s) for o, s in zip(out, start))]
        count += 1
    probability[~prepared.gate] = 0.0
    return probability, count


@dataclass
class LesionResult:
    mask: np.ndarray  # bool on the input grid
    details: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    probability: np.ndarray | None = None  # with keep_probability: uint8 round(255 p_lesion) on the input grid


def segment_lesions(volume: Volume, liver: np.ndarray, engine, keep_probability: bool = False) -> LesionResult:
    """Lesions of ``volume`` inside the liver mask ``liver`` (same grid), as a boolean mask on that grid (and
    with ``keep_probability`` the lesion probability there, 0 outside the gate)."""
    ornt = canonical_ornt(volume.affine_ras)
    canonical = to_canonical(volume.array, ornt)
    spacing = tuple(float(s) for s in volume.spacing_mm[np.argsort(ornt[:, 0])])
    mask = np.zeros(volume.shape, dtype=bool)
    prepared = prepare(canonical, to_canonical(liver, ornt) > 0, spacing)
    if prepared is None:
        return LesionResult(mask, {"lesion_tiles": 0},
                            probability=np.zeros(volume.shape, np.uint8) if keep_probability else None)
    crop_probability, count = lesion_probability(prepared, engine.run_tile)
    probability = np.zeros(prepared.grid.shape, dtype=np.float32)
    probability[prepared.crop] = crop_probability
    found = interpolate_mask(probability, prepared.grid)
    if found is not None:
        to_canonical(mask, ornt)[found[0]] = found[1]
    kept = probability_on_input(probability, prepared.grid, ornt, volume.shape) if keep_probability else None
    details = {"lesion_engine": engine.name, "lesion_tiles": count,
               "lesion_grid_voxels": list(prepared.grid.shape),
               "lesion_crop_voxels": [[c.start, c.stop] for c in prepared.crop]}
    return LesionResult(mask, details, lesion_warnings(mask, liver), kept)


def lesion_warnings(mask: np.ndarray, liver: np.ndarray) -> list[str]:
    """What makes the lesion result doubtful: lesions taking most of the liver region."""
    liver_voxels = int(np.count_nonzero(liver | mask))
    lesion_voxels = int(np.count_nonzero(mask))
    if liver_voxels and lesion_voxels / liver_voxels > MAX_LESION_FRACTION:
        return [f"lesions take {100 * lesion_voxels / liver_voxels:.0f}% of the liver: check the segmentation "
                "(a phase without contrast between tumour and liver, or a liver mask that is not a liver, "
                "can do this)"]
    return []


class StreamedTileEngine:
    """``KulResUNet`` on one original-size tile at a time, in slabs (``resunet_stream``): the CPU path,
    about 4 s and 1 GB per tile on two threads."""

    name = "torch (cpu, original tiles, streamed)"

    def __init__(self, module) -> None:
        from .resunet_stream import StreamedResUNet  # heavy (torch): only the streamed CPU engine needs it

        self.stream = StreamedResUNet(module)

    def run_tile(self, tile: np.ndarray) -> np.ndarray:
        z = self.stream.logits(tile)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class TorchTileEngine:
    """``KulResUNet`` on one original-size tile at a time (float16 autocast on CUDA)."""

    def __init__(self, module, device) -> None:
        import torch

        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.name = f"torch ({self.device.type}{', float16' if self.device.type == 'cuda' else ''}, original tiles)"

    def run_tile(self, tile: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(tile)[None, None].to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                     enabled=self.device.type == "cuda"):
            logits = self.module.core(x)
        return torch.softmax(logits.float(), dim=1)[0, -1].cpu().numpy()


__all__ = ["segment_lesions", "LesionResult", "LesionInput", "prepare", "tiles", "tile_starts", "tile_input",
           "lesion_probability", "gate_structure", "TorchTileEngine", "StreamedTileEngine", "LESION_LABEL", "TILE_OUTPUT", "TILE_INPUT", "MARGIN",
           "NETWORK_SPACING_MM"]
