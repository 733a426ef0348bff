"""Segmentation losses (Dice + cross-entropy by default) and their deep-supervision weighting."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from monai.losses.cldice import soft_skel
from torch import nn

from ..config import LOSSES  # the train.loss values


def deep_supervision_weights(n_heads: int) -> list[float]:
    """1, 1/2, 1/4, ... for the heads from full resolution down, normalised to sum to 1."""
    raw = [0.5 ** i for i in range(n_heads)]
    total = sum(raw)
    return [w / total for w in raw]


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets[:, 0].long())


class CrossEntropyClDice(nn.Module):
    """Cross-entropy + ``weight`` x soft clDice over the foreground classes: clDice is 1 minus the harmonic
    mean of topology precision (how much of the predicted skeleton lies in the truth) and topology
    sensitivity (how much of the true skeleton lies in the prediction), so it rewards connected, complete
    centre lines rather than pixel overlap; cross-entropy keeps the probabilities calibrated."""

    def __init__(self, weight: float = 0.5, iterations: int = 5, smooth: float = 1.0) -> None:
        super().__init__()
        self.weight, self.iterations, self.smooth = weight, iterations, smooth

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ce = _cross_entropy(logits, targets)
        probabilities = torch.softmax(logits, dim=1)[:, 1:]
        truth = F.one_hot(targets[:, 0].long(), logits.shape[1]).movedim(-1, 1)[:, 1:].to(probabilities.dtype)
        dims = tuple(range(2, logits.dim()))
        # MONAI's soft skeleton (iterated soft erosion and opening, as in the clDice paper)
        skeleton_pred = soft_skel(probabilities, self.iterations)
        skeleton_true = soft_skel(truth, self.iterations)
        precision = ((skeleton_pred * truth).sum(dims) + self.smooth) / (skeleton_pred.sum(dims) + self.smooth)
        sensitivity = ((skeleton_true * probabilities).sum(dims) + self.smooth) / (skeleton_true.sum(dims) + self.smooth)
        cldice = 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)
        return ce + self.weight * cldice.mean()


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
                     "ce": lambda: _cross_entropy,
                     "ce_cldice": lambda: CrossEntropyClDice()}[kind]()

    def forward(self, outputs: torch.Tensor | list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, targets)
        weights = deep_supervision_weights(len(outputs))
        return sum(w * self.loss(o, targets) for w, o in zip(weights, outputs))  # type: ignore[return-value]
