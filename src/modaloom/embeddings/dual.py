"""``dual`` embedding: two independent embeddings (two towers, e.g. CLIP's text and image streams).

Returns ``((x0, x1), (mask0, mask1))`` so that ``Model.encode``'s ``x, mask = embedding(...)`` hands the
pair of sequences and the pair of masks to the ``dual`` encoder, and the targets receive pairs too.
Each stream reads its own batch keys (``input_ids`` for text, ``pixel_values`` for images); a stream with
``input_key`` / ``mask_key`` set reads those instead (``input_ids_b`` for the second sentence of a siamese
text model). Each stream gets its own ForwardContext; they are kept in ``ctx.streams``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modaloom.batch import Batch
from modaloom.context import ForwardContext
from modaloom.embeddings.base import Embedding
from modaloom.errors import ConfigError
from modaloom.model_config import EmbeddingConfig
from modaloom.registry import register


@dataclass
class DualOptions:
    """The two streams, each a whole embedding section of its own."""

    # two embedding sections (parts, sizes ...), one per tower
    streams: list[EmbeddingConfig] = field(default_factory=list)

    def check(self) -> None:
        if len(self.streams) != 2:
            raise ConfigError(f"a dual embedding needs exactly 2 streams, got {len(self.streams)}")


@register("embedding", "dual")
class DualEmbedding(nn.Module):
    """Two ``Embedding``s built from ``embedding.streams``; parameters under ``streams.{0,1}``."""

    Options = DualOptions
    composite = True  # build_embedding returns this module itself for parts == ["dual"]
    creates_sequence = True

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__()
        if cfg.parts != ["dual"]:
            raise ConfigError(f"'dual' must be the only embedding part (its streams hold the parts), got {cfg.parts}")
        if len(cfg.streams) != 2:
            raise ConfigError(f"a dual embedding needs exactly 2 streams, got {len(cfg.streams)}")
        for i, stream in enumerate(cfg.streams):
            if "dual" in stream.parts:
                raise ConfigError(f"embedding.streams.{i}.parts cannot contain 'dual' (streams do not nest)")
        self.cfg = cfg
        self.streams = nn.ModuleList(Embedding(stream) for stream in cfg.streams)

    @property
    def output_size(self) -> tuple[int, int]:
        return tuple(stream.output_size for stream in self.streams)  # type: ignore[return-value]

    def word_embedding(self) -> nn.Module | None:
        """The first stream's word table (tied heads on dual models read the first stream)."""
        for stream in self.streams:
            table = stream.word_embedding()
            if table is not None:
                return table
        return None

    def forward(self, batch: Batch, ctx: ForwardContext) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[Any, Any]]:
        contexts = [ctx.for_stream(cfg.input_key, cfg.mask_key) for cfg in self.cfg.streams]
        outputs = [stream(batch, sctx) for stream, sctx in zip(self.streams, contexts, strict=True)]
        ctx.streams = contexts
        return (outputs[0][0], outputs[1][0]), (outputs[0][1], outputs[1][1])
