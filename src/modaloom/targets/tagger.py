"""Sequence tagging: a label per token from a linear layer on every hidden state, optionally through a CRF.

Batch keys: ``tag_labels`` (B, L) long, -100 where a position carries no label (special tokens, the second and
later pieces of a word, padding); ``word_mask`` (B, L), 1 at the positions that are tagged (the first piece of
every word). Without ``word_mask`` every real token (``attention_mask``) is tagged.

Without a CRF the loss is cross-entropy over the labelled positions. With ``crf: true`` the tagged positions
of each row are gathered into one sequence (``layers.crf.compact``) and the loss is the CRF's negative
log-likelihood, averaged over the rows; ``decode`` gives the Viterbi path over the same positions.
Parameters: ``output`` (the per-token classifier, BERT's ``classifier``), ``crf`` when enabled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modaloom.context import ForwardContext
from modaloom.layers.crf import CRF, compact
from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import IGNORE, Target, TargetOutput, classification_metrics

TAG_LABELS = "tag_labels"
WORD_MASK = "word_mask"


@dataclass
class TaggerOptions:
    """Options of the ``tagger`` target."""

    labels_num: int = 2  # number of tags
    crf: bool = False  # a linear-chain CRF over the tagged positions (loss and Viterbi decoding)
    loss: str = "cross_entropy"  # without a CRF


def tagged_positions(batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the positions that receive a tag (``word_mask``, else ``attention_mask``, else all)."""
    for key in (WORD_MASK, "attention_mask"):
        if key in batch:
            return batch[key].bool()
    return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)


@register("target", "tagger")
class Tagger(Target):
    """Per-token classification: dropout, linear to ``labels_num`` tags, cross-entropy or CRF."""

    Options = TaggerOptions

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        dropout = model_cfg.encoder.dropout
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.output = nn.Linear(hidden_size, cfg.labels_num)
        self.crf = CRF(cfg.labels_num) if cfg.crf else None
        if self.crf is None:
            from modaloom.losses import build_loss

            self.loss = build_loss(cfg)

    def forward(self, hidden, mask, batch, ctx: ForwardContext) -> TargetOutput:
        h = self.dropout(hidden) if self.dropout is not None else hidden
        logits = self.output(h)
        labels = batch.get(TAG_LABELS)
        if labels is None:
            return TargetOutput(logits=logits)
        if self.crf is None:
            loss, metrics = classification_metrics(self.cfg.label, logits.reshape(-1, logits.shape[-1]),
                                                   labels.reshape(-1), self.loss)
            return TargetOutput(loss, metrics, logits)
        positions = tagged_positions(batch, hidden) & (labels != IGNORE)
        emissions, kept = compact(logits, positions)
        tags, _ = compact(labels, positions)
        per_row = self.crf.nll(emissions, tags, kept)
        rows = kept[:, 0] if kept.shape[1] else torch.zeros(kept.shape[0], dtype=torch.bool, device=kept.device)
        loss = per_row.sum() / rows.sum().clamp(min=1)
        with torch.no_grad():
            best = self.crf.decode(emissions, kept)
            count = kept.sum()
            accuracy = ((best == tags) & kept).sum().float() / count.clamp(min=1)
        name = self.cfg.label
        return TargetOutput(loss, {f"{name}_loss": loss.detach(), f"{name}_accuracy": accuracy,
                                   f"{name}_count": count}, logits)

    @torch.no_grad()
    def decode(self, logits: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tags (B, W), mask (B, W)): the predicted tag of every tagged position, in order, per row;
        Viterbi with a CRF, else the argmax."""
        emissions, kept = compact(logits, positions)
        if self.crf is not None:
            return self.crf.decode(emissions, kept), kept
        return emissions.argmax(-1).masked_fill(~kept, 0), kept
