"""``itm``: image-text matching (ViLT, ALBEF): does this caption belong to this image? Binary head on the
first token of a single-stream encoder, labels ``itm_labels`` (1 = matching pair)."""

from __future__ import annotations

import torch
from torch import nn

from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import Target, TargetOutput, classification_metrics, pool


@register("target", "itm")
class ImageTextMatching(Target):
    """Parameters: ``pooler`` (dense + tanh, when ``pooler``) and ``output`` (hidden -> 2)."""

    label_key = "itm_labels"

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        self.pooler = nn.Linear(hidden_size, hidden_size) if cfg.pooler else None
        self.output = nn.Linear(hidden_size, 2)

    def forward(self, hidden, mask, batch, ctx) -> TargetOutput:
        h = pool(hidden, mask, self.cfg.pooling)
        if self.pooler is not None:
            h = torch.tanh(self.pooler(h))
        logits = self.output(h)
        labels = batch.get(self.label_key)
        if labels is None:
            return TargetOutput(logits=logits)
        loss, metrics = classification_metrics(self.cfg.label, logits, labels, self.cfg.label_smoothing)
        return TargetOutput(loss, metrics, logits)
