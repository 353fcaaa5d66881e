"""The ``span`` target: extractive QA's per-token start/end scores (one linear layer to 2 outputs).

Logits have shape (B, L, 2): ``[..., 0]`` scores each position as the answer's start, ``[..., 1]`` as its end.
With ``start_positions`` and ``end_positions`` (B,) in the batch, the loss is the mean of the start and end
cross-entropies over the positions of each row (padding excluded); position 0 ([CLS]) is the usual label of
a window that does not hold the answer. The parameter is named ``output`` (TencentPretrain's CMRC
``output_layer`` and HF's ``qa_outputs`` map onto it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modaloom.context import ForwardContext
from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import Target, TargetOutput

START_KEY, END_KEY = "start_positions", "end_positions"


@dataclass
class SpanOptions:
    """Options of the span target."""

    dropout: float = 0.0  # on the hidden states before the output layer (TencentPretrain's CMRC head has none)


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L) logits with padding positions set to the dtype's minimum (never chosen, no softmax weight)."""
    if mask is None:
        return logits
    return logits.masked_fill(~mask.bool(), torch.finfo(logits.dtype).min)


def span_loss(logits: torch.Tensor, mask: torch.Tensor | None, starts: torch.Tensor,
              ends: torch.Tensor) -> torch.Tensor:
    """Mean of the start and end cross-entropies of (B, L, 2) logits against (B,) positions."""
    start = masked_logits(logits[..., 0].float(), mask)
    end = masked_logits(logits[..., 1].float(), mask)
    ce = nn.functional.cross_entropy
    return (ce(start, starts) + ce(end, ends)) / 2


@register("target", "span")
class SpanExtraction(Target):
    """Start/end scores per token from one linear layer; loss as described in the module docstring."""

    Options = SpanOptions

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self.output = nn.Linear(hidden_size, 2)

    def forward(self, hidden, mask, batch, ctx: ForwardContext) -> TargetOutput:
        if self.dropout is not None:
            hidden = self.dropout(hidden)
        logits = self.output(hidden)
        starts, ends = batch.get(START_KEY), batch.get(END_KEY)
        if starts is None or ends is None:
            return TargetOutput(logits=logits)
        loss = span_loss(logits, mask, starts, ends)
        with torch.no_grad():
            hit = (masked_logits(logits[..., 0], mask).argmax(-1) == starts) & \
                  (masked_logits(logits[..., 1], mask).argmax(-1) == ends)
        label = self.cfg.label
        return TargetOutput(loss, {f"{label}_loss": loss.detach(), f"{label}_accuracy": hit.float().mean(),
                                   f"{label}_count": torch.tensor(hit.numel(), device=hit.device)}, logits)
