"""Deterministic sampling shared by every modality's training loader.

Training samples are a pure function of ``(seed, sample index)``: sample ``i`` picks its case and
seeds its augmentation from ``(seed, i)`` alone. The global step therefore fixes everything a
batch holds, whatever the number of loader workers or processes, so a run killed mid-epoch and
resumed from its step draws exactly the batches it would have drawn (bitwise-equal weights on CPU).
Under ``torchrun`` the sample indices of a step are split across ranks (``StepSampler``), which is
``DistributedSampler``'s job done on the step grid.
"""
from __future__ import annotations

import numpy as np
import torch


def sample_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed that depends only on the run seed and ``keys`` (a sample index; a step, rank, ...)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)]).generate_state(1)[0])


class StepSampler(torch.utils.data.Sampler):
    """Sample indices of global steps ``[first_step, stop_step)`` for one rank: step ``s`` of rank
    ``r`` among ``world`` takes indices ``(s * world + r) * batch + b``. ``set_steps`` moves it (the
    training loop sets each epoch's range, or the remainder of one after a resume)."""

    def __init__(self, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.first_step = self.stop_step = 0

    def set_steps(self, first_step: int, stop_step: int) -> None:
        self.first_step, self.stop_step = int(first_step), int(stop_step)

    def __len__(self) -> int:
        return max(0, self.stop_step - self.first_step) * self.batch_size

    def __iter__(self):
        for step in range(self.first_step, self.stop_step):
            base = (step * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)


__all__ = ["sample_seed", "StepSampler"]
