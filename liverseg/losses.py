"""Segmentation losses (Dice + cross-entropy by default) and their deep-supervision weighting."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from .config import LOSSES  # the train.loss values


def deep_supervision_weights(n_heads: int) -> list[float]:
    """1, 1/2, 1/4, ... for the heads from full resolution down, normalised to sum to 1."""
    raw = [0.5 ** i for i in range(n_heads)]
    total = sum(raw)
    return [w / total for w in raw]


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets[:, 0].long())


class SegmentationLoss(nn.Module):
    """``kind`` (Dice-CE, plain cross-entropy, or soft Dice) on one output, or its weighted sum over
    deep-supervision heads.

    ``targets`` are class indices (N, 1, *spatial); every output is full-resolution logits. Plain
    cross-entropy keeps probabilities calibrated, which threshold-free scores such as ROC AUC reward;
    Dice-CE copes better with small foreground.
    """

    def __init__(self, kind: str = "dice_ce") -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; use one of {', '.join(LOSSES)}")
        self.loss = {"dice_ce": lambda: DiceCELoss(to_onehot_y=True, softmax=True),
                     "dice": lambda: DiceLoss(to_onehot_y=True, softmax=True),
                     "ce": lambda: _cross_entropy}[kind]()

    def forward(self, outputs: torch.Tensor | list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, targets)
        weights = deep_supervision_weights(len(outputs))
        return sum(w * self.loss(o, targets) for w, o in zip(weights, outputs))  # type: ignore[return-value]
