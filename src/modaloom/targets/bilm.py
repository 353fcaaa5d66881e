"""``bilm``: ELMo's bidirectional language model over a bidirectional encoder's [forward; backward] states.

The first half of each hidden vector (the forward network, which has seen tokens 0..t) predicts
``lm_labels`` (the next token); the second half (the backward network, which has seen t..end) predicts
``bilm_labels_backward`` (the previous token). One vocabulary head of width hidden_size // 2 serves both
directions (TencentPretrain's layout; ELMo shares its softmax too). The loss is the mean of the two.
"""

from __future__ import annotations

import torch

from modaloom.errors import ConfigError
from modaloom.heads import VocabularyHead
from modaloom.losses import build_loss
from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import IGNORE, Target, TargetOutput, classification_metrics
from modaloom.targets.text import VocabularyOptions, _vocab_size

DIRECTIONS = (("forward", "lm_labels"), ("backward", "bilm_labels_backward"))


@register("target", "bilm")
class BidirectionalLanguageModel(Target):
    """Parameters: ``head.output`` (hidden_size // 2 -> vocab; tieable), ``head.dense`` / ``head.norm`` if
    ``transform``."""

    Options = VocabularyOptions

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        if hidden_size % 2:
            raise ConfigError(
                f"bilm splits the encoder output into forward and backward halves; its width {hidden_size} is "
                f"odd (use a bidirectional encoder: birnn, bilstm, bigru)"
            )
        self.half = hidden_size // 2
        self.head = VocabularyHead(cfg, self.half, self.half, _vocab_size(cfg, model_cfg))
        self.loss = build_loss(cfg)

    def tied_output(self):
        return self.head.output

    def forward(self, hidden, mask, batch, ctx) -> TargetOutput:
        halves = {"forward": hidden[..., : self.half], "backward": hidden[..., self.half:]}
        if DIRECTIONS[0][1] not in batch or DIRECTIONS[1][1] not in batch:
            return TargetOutput(logits=torch.stack([self.head(halves[d]) for d, _ in DIRECTIONS]))
        losses, metrics, correct, count = [], {}, 0, 0
        for direction, key in DIRECTIONS:
            labels = batch[key]
            selected = labels != IGNORE
            logits = self.head(halves[direction][selected])
            loss, m = classification_metrics(f"{self.cfg.label}_{direction}", logits, labels[selected], self.loss)
            losses.append(loss)
            metrics.update(m)
            n = m[f"{self.cfg.label}_{direction}_count"]
            correct = correct + m[f"{self.cfg.label}_{direction}_accuracy"] * n
            count = count + n
        loss = (losses[0] + losses[1]) / 2
        metrics[f"{self.cfg.label}_loss"] = loss.detach()
        metrics[f"{self.cfg.label}_accuracy"] = correct / count.clamp(min=1)
        metrics[f"{self.cfg.label}_count"] = count
        return TargetOutput(loss, metrics, None)
