"""Text targets: masked LM, sentence prediction (NSP/SOP), language modelling, classification."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modaloom.layers.activations import activation
from modaloom.layers.norms import make_norm
from modaloom.model_config import ModelConfig, TargetConfig
from modaloom.registry import register
from modaloom.targets.base import IGNORE, Target, TargetOutput, classification_metrics, pool


class VocabularyHead(nn.Module):
    """Optional transform (dense, act, norm) then the vocabulary projection (tieable to word embeddings)."""

    def __init__(self, cfg: TargetConfig, hidden_size: int, out_size: int, vocab_size: int) -> None:
        super().__init__()
        if cfg.transform:
            self.dense = nn.Linear(hidden_size, out_size)
            self.act = activation(cfg.act)
            self.norm = make_norm(cfg.norm, out_size, cfg.norm_eps)
        else:
            self.dense = None
            out_size = hidden_size
        self.output = nn.Linear(out_size, vocab_size, bias=cfg.output_bias)
        self.scale = hidden_size ** -0.5 if cfg.scale_before_output else 1.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            h = self.norm(self.act(self.dense(h)))
        if self.scale != 1.0:
            h = h * self.scale
        return self.output(h)


def _vocab_size(cfg: TargetConfig, model_cfg: ModelConfig) -> int:
    if cfg.vocab_size:
        return cfg.vocab_size
    source = model_cfg.tgt_embedding if model_cfg.decoder is not None and cfg.source != "encoder" else None
    return (source or model_cfg.embedding).vocab_size or model_cfg.embedding.vocab_size


@register("target", "mlm")
class MaskedLanguageModel(Target):
    """BERT's masked LM: predicts ``mlm_labels`` only at masked positions (the head runs on those rows)."""

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        out_size = model_cfg.embedding.emb_size if cfg.tie_weights else hidden_size
        self.head = VocabularyHead(cfg, hidden_size, out_size, _vocab_size(cfg, model_cfg))

    def tied_output(self) -> nn.Linear:
        return self.head.output

    def forward(self, hidden, mask, batch, ctx) -> TargetOutput:
        labels = batch.get("mlm_labels")
        if labels is None:
            return TargetOutput(logits=self.head(hidden))
        if labels.shape[1] < hidden.shape[1]:
            hidden = hidden[:, :labels.shape[1]]  # labels cover the text part of a text+image sequence
        selected = labels != IGNORE
        logits = self.head(hidden[selected])
        loss, metrics = classification_metrics(self.cfg.label, logits, labels[selected], self.cfg.label_smoothing)
        return TargetOutput(loss, metrics, logits)


@register("target", "sp", "nsp", "sop")
class SentencePrediction(Target):
    """Next-sentence / sentence-order prediction from the first token through a tanh pooler.

    Parameters: ``pooler`` (dense + tanh, when ``pooler``) and ``output`` (hidden -> 2). Binary heads on
    other labels (image-text matching) subclass it with another ``label_key``.
    """

    label_key = "sp_labels"

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


@register("target", "lm")
class LanguageModel(Target):
    """Next-token prediction of ``lm_labels`` (already aligned with the positions that predict them)."""

    label_key = "lm_labels"

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        vocab = _vocab_size(cfg, model_cfg)
        self.head = VocabularyHead(cfg, hidden_size, hidden_size, vocab)

    def tied_output(self) -> nn.Linear:
        return self.head.output

    def forward(self, hidden, mask, batch, ctx) -> TargetOutput:
        labels = batch.get(self.label_key)
        if labels is None:
            return TargetOutput(logits=self.head(hidden))
        selected = labels != IGNORE
        logits = self.head(hidden[selected])
        loss, metrics = classification_metrics(self.cfg.label, logits, labels[selected], self.cfg.label_smoothing)
        return TargetOutput(loss, metrics, logits)


@register("target", "cls")
class Classification(Target):
    """Sequence classification: pooling, optional dense+tanh pooler, linear to ``labels_num`` classes."""

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        self.pooler = nn.Linear(hidden_size, hidden_size) if cfg.pooler else None
        self.dropout = nn.Dropout(model_cfg.encoder.dropout if model_cfg.encoder.type != "dual" else 0.0)
        self.output = nn.Linear(hidden_size, cfg.labels_num)

    def forward(self, hidden, mask, batch: dict[str, torch.Tensor], ctx: dict[str, Any]) -> TargetOutput:
        h = pool(hidden, mask, self.cfg.pooling)
        if self.pooler is not None:
            h = torch.tanh(self.pooler(h))
        logits = self.output(self.dropout(h))
        labels = batch.get("labels")
        if labels is None:
            return TargetOutput(logits=logits)
        loss, metrics = classification_metrics(self.cfg.label, logits, labels, self.cfg.label_smoothing)
        return TargetOutput(loss, metrics, logits)
