"""The two ways a built-in KU Leuven network runs on a 3 mm image in its fixed patch.

Both give a ``run`` with the same three steps: ``sample(slices)`` (image S indices), ``sampled()``
(those slices' foreground probability, after which the statistics are fixed) and
``probabilities(box)`` (exact output in a box).

* ``StagedEngine``: ONNX Runtime convolutions and the staged computation (``staged.py``): the
  default on a CPU, a few seconds and a few hundred MB per patch, no PyTorch.
* ``TorchEngine``: the whole patch through ``models.kul_unet.KulUNet``: the faithful full
  computation (20-50 s and about 8 GB on two CPU threads), and the path on CUDA (float16 autocast).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .runtime import ConvBank, foreground_probability
from .staged import StagedPatch
from .staged_levels import Layout


def region_slices(patch_size: int, image_size: int, margin: int) -> range:
    """Image S indices of the patch's output region (it extends beyond the image into the padding)."""
    offset = patch_size // 2 - image_size // 2
    return range(margin - offset, patch_size - margin - offset)


class StagedRun:
    def __init__(self, patch: StagedPatch) -> None:
        self.patch = patch
        self.region = patch.region_slices()
        self.shape = patch.shape

    def sample(self, z_image: Iterable[int]) -> None:
        self.patch.sample([z for z in z_image if z in self.region])

    def sampled(self) -> tuple[np.ndarray, np.ndarray]:
        z, logits = self.patch.finalize()
        return z, foreground_probability(logits)

    def probabilities(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        return foreground_probability(self.patch.logits(box))


class StagedEngine:
    name = "onnxruntime (staged)"

    def __init__(self, weights: dict[str, np.ndarray], factor: int, threads: int | None = None) -> None:
        self.bank = ConvBank(weights, threads)
        self.layout = Layout.from_weights(weights, factor)

    def run(self, image: np.ndarray, patch: Sequence[int]) -> StagedRun:
        return StagedRun(StagedPatch(self.bank, self.layout, image, patch))


class FullRun:
    def __init__(self, probability: np.ndarray, region: range) -> None:
        self.probability = probability
        self.shape = probability.shape
        self.region = region
        self._z: set[int] = set()

    def sample(self, z_image: Iterable[int]) -> None:
        self._z |= {int(z) for z in z_image if 0 <= z < self.shape[2]}

    def sampled(self) -> tuple[np.ndarray, np.ndarray]:
        z = np.asarray(sorted(self._z), dtype=np.int64)
        return z, np.ascontiguousarray(self.probability[..., z])

    def probabilities(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        return self.probability[box]


class TorchEngine:
    """``KulUNet`` on the whole patch; float16 autocast on CUDA, float32 elsewhere."""

    def __init__(self, module, device) -> None:
        import torch

        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.name = f"torch ({self.device.type}{', float16' if self.device.type == 'cuda' else ''}, whole patch)"

    def run(self, image: np.ndarray, patch: Sequence[int]) -> FullRun:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                     enabled=self.device.type == "cuda"):
            logits = self.module(x, patch=patch)
        probability = torch.softmax(logits.float(), dim=1)[0, -1].cpu().numpy()
        return FullRun(probability, region_slices(patch[2], image.shape[2], self.module.margin))


__all__ = ["StagedEngine", "TorchEngine", "StagedRun", "FullRun", "region_slices"]
