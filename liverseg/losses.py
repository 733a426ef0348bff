"""Dice + cross-entropy, and its deep-supervision weighting."""
from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn


def deep_supervision_weights(n_heads: int) -> list[float]:
    """1, 1/2, 1/4, ... for the heads from full resolution down, normalised to sum to 1."""
    raw = [0.5 ** i for i in range(n_heads)]
    total = sum(raw)
    return [w / total for w in raw]


class SegmentationLoss(nn.Module):
    """Dice-CE on one output, or the weighted sum of Dice-CE over deep-supervision heads.

    ``targets`` are class indices (N, 1, *spatial); every output is full-resolution logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, outputs: torch.Tensor | list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.dice_ce(outputs, targets)
        weights = deep_supervision_weights(len(outputs))
        return sum(w * self.dice_ce(o, targets) for w, o in zip(weights, outputs))  # type: ignore[return-value]
