"""Token, learned position, segment and sinusoidal position embedding parts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from modaloom.batch import Batch
from modaloom.context import ForwardContext
from modaloom.embeddings.base import EmbeddingPart, require
from modaloom.errors import ConfigError
from modaloom.layers.positions import sinusoidal_table
from modaloom.model_config import EmbeddingConfig
from modaloom.registry import register


@dataclass
class WordOptions:
    """Options of the ``word`` part (and of ``word_patch``, which embeds text too)."""

    vocab_size: int = 0  # 0: taken from the dataset's tokenizer at pretrain time
    pad_id: int = 0  # id of the padding token (padding when ids are filled in, e.g. word_patch)
    scale_embedding: bool = False  # multiply token embeddings by sqrt(emb_size) (BART, S2T)


@dataclass
class PositionOptions:
    """Options of the ``pos`` and ``sinusoidal`` parts."""

    position_offset: int = 0  # positions start at this row (2 for RoBERTa/BART)


@dataclass
class SegmentOptions:
    type_vocab_size: int = 2  # rows of the segment table (segments 0 = A, 1 = B ...)


@register("embedding", "word")
class WordEmbedding(EmbeddingPart):
    """Token ids -> vectors; optional sqrt(emb_size) scaling (BART, S2T)."""

    Options = WordOptions
    creates_sequence = True

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        if cfg.vocab_size <= 0:
            raise ConfigError("embedding.vocab_size must be set (> 0) for the 'word' part")
        self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.emb_size))
        self.scale = math.sqrt(cfg.emb_size) if cfg.scale_embedding else 1.0

    def word_embedding(self) -> nn.Module:
        return self

    def forward(self, x, mask, batch: Batch, ctx: ForwardContext):
        ids = require(batch, ctx.key("input_ids"), "word")
        emb = nn.functional.embedding(ids, self.weight)
        if self.scale != 1.0:
            emb = emb * self.scale
        key_mask = batch.get(ctx.mask("attention_mask"))
        return (emb if x is None else x + emb), (key_mask.bool() if key_mask is not None else None)


@register("embedding", "pos")
class PositionEmbedding(EmbeddingPart):
    """Learned absolute positions; rows start at ``position_offset`` (2 in RoBERTa/BART checkpoints)."""

    Options = PositionOptions

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        self.weight = nn.Parameter(torch.empty(cfg.max_seq_length + cfg.position_offset, cfg.emb_size))

    def forward(self, x, mask, batch: Batch, ctx: ForwardContext):
        if ctx.position_ids is not None:  # per-row positions (left-padded generation)
            rows = ctx.position_ids + self.cfg.position_offset
            if int(rows.max()) >= self.weight.shape[0]:
                raise ConfigError(
                    f"position {int(ctx.position_ids.max())} exceeds embedding.max_seq_length "
                    f"{self.cfg.max_seq_length}"
                )
            return x + nn.functional.embedding(rows, self.weight), mask
        start = self.cfg.position_offset + ctx.past_length
        length = x.shape[1]
        if start + length > self.weight.shape[0]:
            raise ConfigError(
                f"sequence of {ctx.past_length + length} positions exceeds "
                f"embedding.max_seq_length {self.cfg.max_seq_length}"
            )
        return x + self.weight[start:start + length], mask


@register("embedding", "seg")
class SegmentEmbedding(EmbeddingPart):
    """Segment (token type) embedding from ``segment_ids``; zeros are used when the batch has none."""

    Options = SegmentOptions

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        self.weight = nn.Parameter(torch.empty(cfg.type_vocab_size, cfg.emb_size))

    def forward(self, x, mask, batch: Batch, ctx: ForwardContext):
        seg = ctx.segment_ids
        if seg is None:
            seg = batch.get("segment_ids")
        if seg is None:
            return x + self.weight[0], mask
        return x + nn.functional.embedding(seg, self.weight), mask


@register("embedding", "sinusoidal", "sinusoidalpos")
class SinusoidalPositionEmbedding(EmbeddingPart):
    """Fixed sine/cosine positions (Vaswani et al. 2017, fairseq layout) starting at ``position_offset``."""

    Options = PositionOptions

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__(cfg)
        length = cfg.max_seq_length + cfg.position_offset
        self.register_buffer("table", sinusoidal_table(length, cfg.emb_size), persistent=False)

    def forward(self, x, mask, batch: Batch, ctx: ForwardContext):
        if ctx.position_ids is not None:  # per-row positions (left-padded generation)
            rows = ctx.position_ids + self.cfg.position_offset
            self._grow(int(rows.max()) + 1)
            return x + self.table[rows].to(x.dtype), mask
        start = self.cfg.position_offset + ctx.past_length
        length = x.shape[1]
        self._grow(start + length)
        return x + self.table[start:start + length].to(x.dtype), mask

    def _grow(self, rows: int) -> None:
        """Extend the fixed table when a sequence runs past it (the table is a function, not a weight)."""
        if rows > self.table.shape[0]:
            self.table = sinusoidal_table(rows, self.cfg.emb_size).to(self.table.device)
