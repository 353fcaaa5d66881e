"""Losses for multi-label classification (``bce``) and regression (``mse``), selected by a ``cls`` target's
``loss`` option (the ``classification`` task sets it from its ``kind``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modaloom.registry import register


@register("loss", "bce")
class BinaryCrossEntropy(nn.Module):
    """Mean sigmoid binary cross-entropy over every (example, class) cell; labels are 0/1 floats, (B, C)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


@register("loss", "mse")
class MeanSquaredError(nn.Module):
    """Mean squared error between a one-column output (B, 1) or (B,) and float labels (B,), in fp32."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().reshape(labels.shape), labels.float())
