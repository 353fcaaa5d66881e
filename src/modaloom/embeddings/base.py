"""Embedding composition: a named sequence of parts whose outputs add up, then norm and dropout.

A part receives the running sum ``x`` (None for the first part) and the real-token mask, and returns the
new sum and mask. Parts that create a sequence (word, patch, speech, word_patch) come first; parts that add
to it (pos, seg, sinusoidal) follow. Parts may read and write the ForwardContext ``ctx`` (e.g. ``past_length`` during cached
generation, the kept-patch index of masked-image models).
"""

from __future__ import annotations

import torch
from torch import nn

from modaloom import registry
from modaloom.batch import Batch
from modaloom.context import ForwardContext
from modaloom.errors import ConfigError
from modaloom.layers.norms import make_norm
from modaloom.model_config import EmbeddingConfig


class EmbeddingPart(nn.Module):
    """Base class of registered embedding parts."""

    creates_sequence = False

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, x: torch.Tensor | None, mask: torch.Tensor | None, batch: Batch,
                ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def word_embedding(self) -> nn.Module | None:
        """The module whose ``weight`` (vocab, emb) a tied output layer may share, if this part has one."""
        return None


def require(batch: Batch, key: str, part: str) -> torch.Tensor:
    if key not in batch:
        raise ConfigError(f"embedding part {part!r} needs batch key {key!r}; the batch has {sorted(batch)}")
    return batch[key]


class Embedding(nn.Module):
    """Sum of parts (``embedding.parts`` in the config), then an optional norm and dropout."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.parts = nn.ModuleDict()
        for i, name in enumerate(cfg.parts):
            cls = registry.get("embedding", name, where=f"embedding.parts.{i}")
            if i == 0 and not cls.creates_sequence:
                raise ConfigError(
                    f"embedding.parts starts with {name!r}, which only adds to a sequence; start with a part "
                    f"that creates one (word, patch, masked_patch, word_patch, speech)"
                )
            self.parts[name] = cls(cfg)
        self.norm = make_norm(cfg.norm, cfg.emb_size, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    @property
    def output_size(self) -> int:
        return self.cfg.emb_size

    def word_embedding(self) -> nn.Module | None:
        for part in self.parts.values():
            table = part.word_embedding()
            if table is not None:
                return table
        return None

    def forward(self, batch: Batch, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, mask = None, None
        for part in self.parts.values():
            x, mask = part(x, mask, batch, ctx)
        return self.dropout(self.norm(x)), mask


def build_embedding(cfg: EmbeddingConfig) -> nn.Module:
    """An Embedding, or the registered composite named by a single part such as ``dual``."""
    if len(cfg.parts) == 1:
        cls = registry.get("embedding", cfg.parts[0], where="embedding.parts.0")
        if getattr(cls, "composite", False):
            return cls(cfg)
    return Embedding(cfg)
