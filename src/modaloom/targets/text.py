"""Text targets: masked LM, sentence prediction (NSP/SOP), language modelling, classification."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modaloom.config_schema import choice
from modaloom.context import ForwardContext
from modaloom.heads import TanhPooler, VocabularyHead, pool
from modaloom.losses import build_loss
from modaloom.losses.cross_entropy import CrossEntropy
from modaloom.model_config import ACTIVATIONS, NORMS, POOLINGS, ModelConfig, TargetConfig, vocab_size_of
from modaloom.registry import register
from modaloom.targets.base import IGNORE, Target, TargetOutput, classification_metrics
from modaloom.targets.vocab_loss import vocab_cross_entropy

ROW_BUCKET = 64  # selected rows are padded to a multiple of this on CPU under autocast (see bucket_rows)


def bucket_rows(rows: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` and ``labels`` padded with ignored rows to a multiple of ``ROW_BUCKET`` on CPU under autocast.

    There oneDNN builds and caches a matmul primitive, with its own buffers, for every new shape; the number of
    masked rows changes with each batch, so an unpadded bf16 run keeps one primitive per step (measured: peak
    RSS 1.48 GB instead of 0.80 GB for 100 steps of the tiny BERT). Padded, a run meets a handful of shapes.
    """
    if rows.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or rows.shape[0] % ROW_BUCKET == 0:
        return rows, labels
    extra = ROW_BUCKET - rows.shape[0] % ROW_BUCKET
    rows = torch.cat([rows, rows.new_zeros(extra, *rows.shape[1:])])
    return rows, torch.cat([labels, labels.new_full((extra,), IGNORE)])


@dataclass
class VocabularyOptions:
    """Options of the targets that predict tokens through a vocabulary head (mlm, lm, bilm)."""

    vocab_size: int = 0  # 0: the embedding's vocabulary
    act: str = choice("gelu", *ACTIVATIONS)  # activation of the transform
    norm: str = choice("layernorm", *NORMS)  # norm of the transform
    norm_eps: float = 1e-12  # epsilon of that norm
    transform: bool = True  # dense + act + norm before the output layer (BERT); false for none
    tie_weights: bool = False  # output layer shares the word embedding's weight
    output_bias: bool = True  # bias on the vocabulary logits
    scale_before_output: bool = False  # multiply by hidden_size**-0.5 before the output layer (tied T5)
    loss: str = "cross_entropy"  # registered loss over the vocabulary logits


@dataclass
class SentencePredictionOptions:
    """Options of the pooled binary heads (sp / nsp / sop, itm)."""

    pooling: str = choice("first", *POOLINGS)  # how the sequence becomes one vector
    pooler: bool = True  # dense + tanh on the pooled vector (BERT NSP / classification)
    loss: str = "cross_entropy"  # registered loss over the logits


@dataclass
class ClassificationOptions(SentencePredictionOptions):
    labels_num: int = 2  # number of classes


def _vocab_size(cfg: TargetConfig, model_cfg: ModelConfig) -> int:
    if cfg.vocab_size:
        return cfg.vocab_size
    source = model_cfg.tgt_embedding if model_cfg.decoder is not None and cfg.source != "encoder" else None
    return vocab_size_of(source) or vocab_size_of(model_cfg.embedding)


class VocabularyTarget(Target):
    """A target that predicts tokens through ``self.head`` (a ``VocabularyHead``) with ``self.loss``.

    While training (training mode, gradients on, no autocast) with the plain ``cross_entropy`` loss, the loss is computed a
    chunk of rows at a time (``targets/vocab_loss.py``): the (rows x vocabulary) logits are never kept, so
    the output has no logits; the loss, the gradients and the metrics are those of the full logits.
    ``chunked_loss = False`` on an instance (or the class) keeps the full logits.
    """

    chunked_loss = True

    def chunkable(self) -> bool:
        """Whether this target's loss can be chunked at all (switched on, the plain cross-entropy); training
        then chunks it in fp32 (``_uses_chunked_loss``), and the memory planner counts it the same way."""
        return self.chunked_loss and type(self.loss) is CrossEntropy

    def _uses_chunked_loss(self, rows: torch.Tensor) -> bool:
        return (self.chunkable() and self.training and torch.is_grad_enabled()
                and not torch.is_autocast_enabled(rows.device.type)
                and (rows.requires_grad or any(p.requires_grad for p in self.head.output.parameters())))

    def vocabulary_loss(self, rows: torch.Tensor, labels: torch.Tensor) -> TargetOutput:
        """Loss, metrics (and logits unless chunked) of the selected ``rows`` (N, H) against ``labels`` (N,)."""
        if not self._uses_chunked_loss(rows):
            padded_rows, padded_labels = bucket_rows(rows, labels)
            logits = self.head(padded_rows)
            loss, metrics = classification_metrics(self.cfg.label, logits, padded_labels, self.loss)
            return TargetOutput(loss, metrics, logits[:rows.shape[0]])
        output = self.head.output
        loss, correct, count = vocab_cross_entropy(self.head.features(rows), output.weight, output.bias, labels,
                                                   self.loss.label_smoothing)
        accuracy = correct.float() / count.clamp(min=1)
        prefix = self.cfg.label
        return TargetOutput(loss, {f"{prefix}_loss": loss.detach(), f"{prefix}_accuracy": accuracy,
                                   f"{prefix}_count": count})


@register("target", "mlm")
class MaskedLanguageModel(VocabularyTarget):
    """BERT's masked LM: predicts ``mlm_labels`` only at masked positions (the head runs on those rows)."""

    Options = VocabularyOptions

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        out_size = model_cfg.embedding.emb_size if cfg.tie_weights else hidden_size
        self.head = VocabularyHead(cfg, hidden_size, out_size, _vocab_size(cfg, model_cfg))
        self.loss = build_loss(cfg)

    def tied_output(self) -> nn.Linear:
        return self.head.output

    def forward(self, hidden, mask, batch, ctx: ForwardContext) -> TargetOutput:
        labels = batch.get("mlm_labels")
        if labels is None:
            return TargetOutput(logits=self.head(hidden))
        if labels.shape[1] < hidden.shape[1]:
            hidden = hidden[:, :labels.shape[1]]  # labels cover the text part of a text+image sequence
        selected = labels != IGNORE
        return self.vocabulary_loss(hidden[selected], labels[selected])


class PooledClassifier(Target):
    """Pooling, optional tanh pooler, linear output; cross-entropy against ``batch[label_key]``.

    Parameters: ``pooler`` (when ``pooler``) and ``output``.
    """

    label_key = "labels"

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int, classes: int,
                 dropout: float = 0.0) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        self.pooler = TanhPooler(hidden_size, hidden_size) if cfg.pooler else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.output = nn.Linear(hidden_size, classes)
        self.loss = build_loss(cfg)

    def forward(self, hidden, mask, batch, ctx: ForwardContext) -> TargetOutput:
        h = pool(hidden, mask, self.cfg.pooling)
        if self.pooler is not None:
            h = self.pooler(h)
        if self.dropout is not None:
            h = self.dropout(h)
        logits = self.output(h)
        labels = batch.get(self.label_key)
        if labels is None:
            return TargetOutput(logits=logits)
        loss, metrics = classification_metrics(self.cfg.label, logits, labels, self.loss)
        return TargetOutput(loss, metrics, logits)


@register("target", "sp", "nsp", "sop")
class SentencePrediction(PooledClassifier):
    """Next-sentence / sentence-order prediction from the first token through a tanh pooler (2 classes).

    Binary heads on other labels (image-text matching) subclass it with another ``label_key``.
    """

    Options = SentencePredictionOptions
    label_key = "sp_labels"

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size, classes=2)


@register("target", "lm")
class LanguageModel(VocabularyTarget):
    """Next-token prediction of ``lm_labels`` (already aligned with the positions that predict them)."""

    Options = VocabularyOptions
    label_key = "lm_labels"

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        super().__init__(cfg, model_cfg, hidden_size)
        vocab = _vocab_size(cfg, model_cfg)
        self.head = VocabularyHead(cfg, hidden_size, hidden_size, vocab)
        self.loss = build_loss(cfg)

    def tied_output(self) -> nn.Linear:
        return self.head.output

    def forward(self, hidden, mask, batch, ctx: ForwardContext) -> TargetOutput:
        labels = batch.get(self.label_key)
        if labels is None:
            return TargetOutput(logits=self.head(hidden))
        selected = labels != IGNORE
        return self.vocabulary_loss(hidden[selected], labels[selected])


@register("target", "cls")
class Classification(PooledClassifier):
    """Sequence classification: pooling, optional dense+tanh pooler, dropout, linear to ``labels_num`` classes."""

    Options = ClassificationOptions

    def __init__(self, cfg: TargetConfig, model_cfg: ModelConfig, hidden_size: int) -> None:
        dropout = model_cfg.encoder.dropout if model_cfg.encoder.type != "dual" else 0.0
        super().__init__(cfg, model_cfg, hidden_size, classes=cfg.labels_num, dropout=dropout)

