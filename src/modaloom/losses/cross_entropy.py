"""``cross_entropy``: softmax cross-entropy over classes, ignoring label -100, with optional label smoothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modaloom.batch import IGNORE_INDEX
from modaloom.errors import ConfigError
from modaloom.registry import register


@dataclass
class CrossEntropyOptions:
    label_smoothing: float = 0.0  # mass spread uniformly over the classes (Szegedy et al. 2016)

    def check(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@register("loss", "cross_entropy")
class CrossEntropy(nn.Module):
    """Mean cross-entropy over the rows whose label is not -100, computed in fp32."""

    Options = CrossEntropyOptions

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.label_smoothing = float(getattr(cfg, "label_smoothing", 0.0))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX,
                               label_smoothing=self.label_smoothing)
