"""Target interface: an objective and its head. Returns its loss (None without labels), metrics and logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modaloom.model_config import ModelConfig, TargetConfig

IGNORE = -100


@dataclass
class TargetOutput:
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class Target(nn.Module):
    """Base class of registered targets. ``hidden_size`` is the width of the states the target reads."""

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden_size = hidden_size

    def tied_output(self) -> nn.Linear | None:
        """The output layer whose weight is tied to the word embedding when ``tie_weights`` is set."""
        return None

    def forward(self, hidden: Any, mask: Any, batch: dict[str, torch.Tensor], ctx: dict[str, Any]) -> TargetOutput:
        raise NotImplementedError


def classification_metrics(prefix: str, logits: torch.Tensor, labels: torch.Tensor,
                           label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy over rows whose label is not IGNORE, plus accuracy and the count behind it."""
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, label_smoothing=label_smoothing)
    with torch.no_grad():
        valid = labels != IGNORE
        count = valid.sum()
        correct = ((logits.argmax(-1) == labels) & valid).sum()
        accuracy = correct.float() / count.clamp(min=1)
    return loss, {f"{prefix}_loss": loss.detach(), f"{prefix}_accuracy": accuracy, f"{prefix}_count": count}


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str,
         input_ids: torch.Tensor | None = None, eos_id: int | None = None) -> torch.Tensor:
    """Reduce (B, L, H) to (B, H): first token, last real token, mean or max over real tokens, or EOS."""
    if how == "first":
        return hidden[:, 0]
    if how == "none":
        return hidden
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    mask = mask.bool()
    if how == "last":
        last = mask.long().sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp(min=0)]
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).max(1).values
    if how == "eos":
        if input_ids is None:
            raise ValueError("eos pooling needs input_ids")
        if eos_id is None:
            index = input_ids.argmax(-1)  # CLIP's convention: EOS has the largest id
        else:
            index = (input_ids == eos_id).int().argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    raise ValueError(f"unknown pooling {how!r}")
