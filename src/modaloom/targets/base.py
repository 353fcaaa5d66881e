"""Target interface: a head paired with a loss. Returns its loss (None without labels), metrics and logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modaloom.batch import IGNORE_INDEX as IGNORE
from modaloom.context import ForwardContext
from modaloom.heads import pool  # noqa: F401 (targets and tasks pool through here)
from modaloom.model_config import ModelConfig, TargetConfig


@dataclass
class TargetOutput:
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class Target(nn.Module):
    """Base class of registered targets. ``hidden_size`` is the width of the states the target reads.

    A target declares its options as a dataclass ``Options`` beside its class; its config section
    (``cfg``) carries those fields, plus the options of its loss when it has a ``loss`` option.
    ``encoder_mode`` names the view of a multi-mode encoder the target reads (``modality_experts``: ``dual``
    for a contrastive head, ``fusion`` for matching); None: the caller's, else the encoder's default.
    """

    encoder_mode: str | None = None

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden_size = hidden_size

    def tied_output(self) -> nn.Linear | None:
        """The output layer whose weight is tied to the word embedding when ``tie_weights`` is set."""
        return None

    def forward(self, hidden: Any, mask: Any, batch: dict[str, torch.Tensor], ctx: ForwardContext) -> TargetOutput:
        raise NotImplementedError


def classification_metrics(prefix: str, logits: torch.Tensor, labels: torch.Tensor,
                           loss_fn: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``loss_fn(logits, labels)`` plus accuracy over rows whose label is not IGNORE and the count behind it."""
    loss = loss_fn(logits, labels)
    with torch.no_grad():
        valid = labels != IGNORE
        count = valid.sum()
        correct = ((logits.argmax(-1) == labels) & valid).sum()
        accuracy = correct.float() / count.clamp(min=1)
    return loss, {f"{prefix}_loss": loss.detach(), f"{prefix}_accuracy": accuracy, f"{prefix}_count": count}
